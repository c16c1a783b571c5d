//! Callback delivery: POST the task JSON to the task's `callback_url` on status changes.
//!
//! One worker per task delivers its events in order (queued before running before the final
//! status), so a receiver never sees a task go backwards. `succeeded` and `failed` are retried
//! `callback_retries` times after a non-2xx answer or a timeout (docs/ark-api.md §9: "resent 3
//! times"); the other statuses get one attempt. No auth header is sent: the docs mention none.
//! A worker ends when its task's final event is delivered (the sender is dropped) or on shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::SimConfig;
use super::state::{Counters, scale};
use seedq_ark::wire::{Task, TaskStatus};

/// What the workers share.
pub struct CallbackCtx {
    client: reqwest::Client,
    retries: u32,
    /// Before the first retry (already scaled); doubles after each.
    retry_delay: Duration,
    counters: Arc<Counters>,
    cancel: CancellationToken,
}

impl CallbackCtx {
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(
        cfg: &SimConfig,
        counters: Arc<Counters>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(cfg.callback_timeout)
            .no_proxy()
            .build()
            .context("building the callback HTTP client")?;
        Ok(Self {
            client,
            retries: cfg.callback_retries,
            retry_delay: scale(cfg.callback_retry_delay, cfg.time_scale),
            counters,
            cancel,
        })
    }

    /// Starts the worker for one task; send it the task JSON at each status change.
    pub fn spawn_worker(self: &Arc<Self>, url: String) -> mpsc::UnboundedSender<Task> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Task>();
        let ctx = self.clone();
        tokio::spawn(async move {
            loop {
                let task = tokio::select! {
                    biased;
                    () = ctx.cancel.cancelled() => return,
                    t = rx.recv() => match t {
                        Some(t) => t,
                        None => return,
                    },
                };
                tokio::select! {
                    biased;
                    () = ctx.cancel.cancelled() => return,
                    () = ctx.deliver(&url, &task) => {}
                }
            }
        });
        tx
    }

    async fn deliver(&self, url: &str, task: &Task) {
        let retried = matches!(task.status, TaskStatus::Succeeded | TaskStatus::Failed);
        let attempts = if retried { 1 + self.retries } else { 1 };
        let mut delay = self.retry_delay;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
            bump(&self.counters.callback_attempts);
            match self.client.post(url).json(task).send().await {
                Ok(r) if r.status().is_success() => {
                    bump(&self.counters.callbacks_delivered);
                    return;
                }
                Ok(r) => {
                    tracing::debug!(task = %task.id, status = %r.status(), "sim: callback refused")
                }
                Err(e) => tracing::debug!(task = %task.id, error = %e, "sim: callback failed"),
            }
        }
        bump(&self.counters.callbacks_failed);
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
