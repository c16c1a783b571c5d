//! The admin HTTP server (`admin.listen`, loopback by default): `/healthz`, `/readyz`,
//! `/metrics` and the dashboard under `/ui` (see `crate::ui`).
//!
//! It exposes no job data beyond counts and never any secret, but it is not authenticated:
//! keep it on loopback or behind a proxy. `/metrics` is the recorder's counters and
//! histograms followed by the levels read from the database at scrape time (one store round
//! trip), so the job counts are exactly what `seedq stats` would print.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::{health, metrics};
use crate::job::JobState;
use crate::stage::Ctx;
use crate::store::now_ms;

/// The Prometheus text format version we write.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A connection is closed at its next read after this long, however active: a slow client
/// trickling one byte per `read_timeout` cannot hold a slot for ever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Largest request body the admin server reads (it takes none).
const MAX_ADMIN_BODY: usize = 16 * 1024;

/// Binds `admin.listen`; `None` when it is empty (the server is off).
///
/// # Errors
/// The address does not parse or cannot be bound (in use, not local).
pub async fn bind(listen: &str) -> anyhow::Result<Option<TcpListener>> {
    if listen.trim().is_empty() {
        return Ok(None);
    }
    let l = TcpListener::bind(listen.trim()).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for the admin server on {listen}: {e} \
             (set admin.listen to a free address, or \"\" to turn it off)"
        )
    })?;
    Ok(Some(l))
}

/// Serves until shutdown.
///
/// # Errors
/// The server fails.
pub async fn run(
    ctx: Ctx,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let limits = ServerLimits::from_config(&ctx.cfg);
    let app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
        .merge(crate::ui::router(&ctx))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ADMIN_BODY))
        .with_state(ctx);
    serve_guarded(listener, app, limits, shutdown).await
}

/// Serves `app` on `listener` with [`ServerLimits`] (the admin and the callback server).
///
/// # Errors
/// The server fails.
pub async fn serve_guarded(
    listener: TcpListener,
    app: axum::Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = app.layer(axum::middleware::from_fn(mark_busy));
    axum::serve(
        GuardedListener::new(listener, limits),
        app.into_make_service_with_connect_info::<ConnBusy>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await?;
    Ok(())
}

/// What the admin and callback servers allow one peer (issue 12 §2: hyper and axum default to
/// no header timeout, no read timeout and no connection cap, and 150 half-sent requests held
/// 150 descriptors for over a minute).
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// No byte in or out for this long closes the connection (`admin.read_timeout`).
    pub read_timeout: Duration,
    /// Connections held at once (`admin.max_connections`).
    pub max_connections: usize,
}

impl ServerLimits {
    /// The limits from `[admin]`.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            read_timeout: cfg.admin.read_timeout.max(Duration::from_millis(10)),
            max_connections: usize::try_from(cfg.admin.max_connections.max(1)).unwrap_or(1),
        }
    }
}

/// A listener that holds at most `max_connections` connections (the rest wait in the kernel
/// backlog, costing us no descriptor), and hands out [`GuardedIo`] streams.
pub struct GuardedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    limits: ServerLimits,
}

impl GuardedListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener, limits: ServerLimits) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // The semaphore is never closed; if it were, stop accepting rather than spin.
            let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
                return std::future::pending().await;
            };
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (GuardedIo::new(stream, permit, self.limits), addr);
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the connection stays
                    // in the backlog until a descriptor frees.
                    drop(permit);
                    tracing::warn!(error = %e, "accepting a connection failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// How many requests of a connection are in a handler. hyper keeps polling the socket for
/// reads while a handler runs (to notice a hang-up), so the read timeout must not count that
/// time: a callback's GET to Ark may take longer than `read_timeout`.
#[derive(Clone, Debug)]
pub struct ConnBusy(Arc<AtomicUsize>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, GuardedListener>>
    for ConnBusy
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, GuardedListener>) -> Self {
        ConnBusy(Arc::clone(&stream.io().busy))
    }
}

/// Decrements a connection's busy count when the handler ends (or is dropped).
struct BusyGuard(Arc<AtomicUsize>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn mark_busy(
    axum::extract::ConnectInfo(busy): axum::extract::ConnectInfo<ConnBusy>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    busy.0.fetch_add(1, Ordering::SeqCst);
    let _guard = BusyGuard(busy.0);
    next.run(req).await
}

/// A server-side TCP stream with an idle timeout on reads (outside handlers) and on writes, a
/// lifetime, and the connection permit it releases when dropped.
pub struct GuardedIo {
    stream: TcpStream,
    busy: Arc<AtomicUsize>,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    closes_at: Instant,
    read_timer: Pin<Box<Sleep>>,
    read_armed: bool,
    write_timer: Pin<Box<Sleep>>,
    write_armed: bool,
}

impl GuardedIo {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, limits: ServerLimits) -> Self {
        let now = Instant::now();
        Self {
            stream,
            busy: Arc::new(AtomicUsize::new(0)),
            _permit: permit,
            idle: limits.read_timeout,
            closes_at: now + CONNECTION_LIFETIME,
            read_timer: Box::pin(tokio::time::sleep_until(now)),
            read_armed: false,
            write_timer: Box::pin(tokio::time::sleep_until(now)),
            write_armed: false,
        }
    }
}

impl GuardedIo {
    /// A write's answer, shared by the plain and the vectored write: progress disarms the
    /// stall timer; `Pending` arms it, so a peer that stops reading is cut off after `idle`.
    fn after_write(
        &mut self,
        polled: Poll<std::io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        match polled {
            Poll::Ready(r) => {
                self.write_armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = Instant::now() + self.idle;
                stalled(
                    &mut self.write_timer,
                    &mut self.write_armed,
                    limit,
                    cx,
                    "response not read",
                )
                .map(Err)
            }
        }
    }
}

/// Polls `timer` (armed on the first `Pending`, up to `limit`), turning its expiry into an
/// error so hyper closes the connection.
fn stalled(
    timer: &mut Pin<Box<Sleep>>,
    armed: &mut bool,
    limit: Instant,
    cx: &mut Context<'_>,
    what: &str,
) -> Poll<std::io::Error> {
    if !*armed {
        timer.as_mut().reset(limit);
        *armed = true;
    }
    match timer.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("peer too slow: {what}"),
        )),
        Poll::Pending => Poll::Pending,
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if Instant::now() >= this.closes_at {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection lifetime reached",
            )));
        }
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read_armed = false;
                Poll::Ready(r)
            }
            Poll::Pending if this.busy.load(Ordering::SeqCst) > 0 => {
                // A handler is running: hyper only watches for a hang-up. The clock starts
                // again at the next read after the response.
                this.read_armed = false;
                Poll::Pending
            }
            Poll::Pending => {
                let limit = (Instant::now() + this.idle).min(this.closes_at);
                stalled(
                    &mut this.read_timer,
                    &mut this.read_armed,
                    limit,
                    cx,
                    "no bytes received",
                )
                .map(Err)
            }
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.after_write(polled, cx)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.after_write(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

fn report(checks: &[health::Check]) -> Response {
    let (ok, text) = health::render(checks);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, text).into_response()
}

async fn healthz(State(ctx): State<Ctx>) -> Response {
    report(&health::live(&ctx).await)
}

async fn readyz(State(ctx): State<Ctx>) -> Response {
    report(&health::ready(&ctx).await)
}

async fn scrape(State(ctx): State<Ctx>) -> Response {
    match render(&ctx).await {
        Ok(text) => ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response(),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "metrics scrape failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the job store: {e:#}\n"),
            )
                .into_response()
        }
    }
}

/// One metric family in the text format.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.out, "{name}");
        if !labels.is_empty() {
            let body = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", metrics::label(v)))
                .collect::<Vec<_>>()
                .join(",");
            let _ = write!(self.out, "{{{body}}}");
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// The whole `/metrics` body.
///
/// # Errors
/// The store cannot be read.
pub async fn render(ctx: &Ctx) -> anyhow::Result<String> {
    let now = now_ms();
    let day = crate::stage::day_start_ms(now, ctx.cfg.dispatch.tpd_utc_offset_hours);
    let snap = ctx.store.ops_snapshot(day).await?;
    let mut out = match metrics::install() {
        Ok(h) => {
            // Upkeep drains histogram buckets; doing it per scrape spares a timer task.
            h.run_upkeep();
            h.render()
        }
        Err(_) => String::new(),
    };
    let mut f = Family { out: &mut out };
    let catalogue = ctx.ops.live.catalogue();

    f.head(
        "seedq_jobs",
        "gauge",
        "Jobs in the database by state, model and tier.",
    );
    let pairs: BTreeSet<(&str, &str)> = snap
        .rows
        .iter()
        .map(|r| (r.model.as_str(), r.tier.as_str()))
        .collect();
    for (model, tier) in &pairs {
        for state in JobState::ALL {
            let n: i64 = snap
                .rows
                .iter()
                .filter(|r| r.state == state && r.model == *model && r.tier == *tier)
                .map(|r| r.jobs)
                .sum();
            f.sample(
                "seedq_jobs",
                &[("state", state.as_str()), ("model", model), ("tier", tier)],
                n as f64,
            );
        }
    }

    let models: BTreeSet<&str> = pairs.iter().map(|(m, _)| *m).collect();
    // Per tier: each tier's in-flight count is held against its own limits (issue 10).
    let mut in_flight: BTreeMap<(&str, &str), i64> = pairs.iter().map(|p| (*p, 0)).collect();
    for r in snap.rows.iter().filter(|r| r.state.is_remote()) {
        *in_flight
            .entry((r.model.as_str(), r.tier.as_str()))
            .or_insert(0) += r.jobs;
    }
    f.head(
        "seedq_in_flight",
        "gauge",
        "Tasks holding a remote slot (submitting, submit_unknown, submitted) per model and tier.",
    );
    for ((m, tier), n) in &in_flight {
        f.sample(
            "seedq_in_flight",
            &[("model", m), ("tier", tier)],
            *n as f64,
        );
    }
    f.head(
        "seedq_flex_in_flight_limit",
        "gauge",
        "The flex in-flight ceiling in force per model (flex_max_in_flight or learned from Ark's 429s); absent: none.",
    );
    for m in &models {
        let l = ctx.ops.live.limits(m);
        if let Some(c) = [l.flex_max_in_flight, ctx.limiter.flex_ceiling(m)]
            .into_iter()
            .flatten()
            .min()
        {
            f.sample("seedq_flex_in_flight_limit", &[("model", m)], f64::from(c));
        }
    }
    f.head(
        "seedq_flex_rpm_limit",
        "gauge",
        "The flex creates-per-minute ceiling per model (flex_rpm); absent: none.",
    );
    for m in &models {
        if let Some(r) = ctx.ops.live.limits(m).flex_rpm {
            f.sample("seedq_flex_rpm_limit", &[("model", m)], f64::from(r));
        }
    }
    f.head(
        "seedq_concurrency_limit",
        "gauge",
        "The default tier's concurrency limit in force per model.",
    );
    for m in &models {
        let l = ctx.ops.live.limits(m);
        f.sample(
            "seedq_concurrency_limit",
            &[("model", m)],
            f64::from(l.concurrency),
        );
    }
    f.head(
        "seedq_rpm_limit",
        "gauge",
        "The default tier's creates-per-minute limit in force per model.",
    );
    for m in &models {
        let l = ctx.ops.live.limits(m);
        f.sample("seedq_rpm_limit", &[("model", m)], f64::from(l.rpm));
    }

    f.head(
        "seedq_oldest_queued_age_seconds",
        "gauge",
        "Age of the oldest queued job (0 when none is queued).",
    );
    let age = snap
        .oldest_queued_ms
        .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
    f.sample("seedq_oldest_queued_age_seconds", &[], age);

    let mut tokens: BTreeMap<(&str, &str), (i64, i64)> = BTreeMap::new();
    for r in &snap.rows {
        let e = tokens
            .entry((r.model.as_str(), r.tier.as_str()))
            .or_default();
        e.0 += r.usage_tokens;
        e.1 += r.est_tokens;
    }
    f.head(
        "seedq_tokens_used",
        "gauge",
        "Tokens Ark reported as used, over the jobs in the database, by model and tier.",
    );
    for ((m, t), (used, _)) in &tokens {
        f.sample(
            "seedq_tokens_used",
            &[("model", m), ("tier", t)],
            *used as f64,
        );
    }
    f.head(
        "seedq_tokens_estimated",
        "gauge",
        "Tokens estimated at enqueue, over the jobs in the database, by model and tier.",
    );
    for ((m, t), (_, est)) in &tokens {
        f.sample(
            "seedq_tokens_estimated",
            &[("model", m), ("tier", t)],
            *est as f64,
        );
    }
    f.head(
        "seedq_cost_estimated_cny",
        "gauge",
        "Used tokens priced with the catalogue (CNY; flex at half price), by model and tier.",
    );
    for ((m, t), (used, _)) in &tokens {
        if let Some(spec) = catalogue.get(m) {
            let cny = crate::catalogue::cost(spec, *used, *t == "flex");
            f.sample(
                "seedq_cost_estimated_cny",
                &[("model", m), ("tier", t)],
                cny,
            );
        }
    }

    f.head(
        "seedq_flex_tpd_used_tokens",
        "gauge",
        "Flex tokens submitted since today's TPD day began: used where Ark reported them, else estimated.",
    );
    let mut tpd_limits = Vec::new();
    for (name, spec) in catalogue.iter() {
        if let Some(limit) = ctx.ops.live.limits(name).flex_tpd.filter(|_| spec.flex) {
            let used = snap.flex_today.get(name).copied().unwrap_or(0);
            f.sample(
                "seedq_flex_tpd_used_tokens",
                &[("model", name)],
                used as f64,
            );
            tpd_limits.push((name.clone(), limit));
        }
    }
    f.head(
        "seedq_flex_tpd_limit_tokens",
        "gauge",
        "The flex TPD budget per model.",
    );
    for (name, limit) in &tpd_limits {
        f.sample(
            "seedq_flex_tpd_limit_tokens",
            &[("model", name)],
            *limit as f64,
        );
    }
    f.head(
        "seedq_flex_window_open",
        "gauge",
        "1 when flex jobs may be submitted now (maintenance.flex_window).",
    );
    let open = ctx.ops.live.flex_window_open(now);
    f.sample("seedq_flex_window_open", &[], if open { 1.0 } else { 0.0 });

    f.head(
        "seedq_ark_last_success_timestamp_seconds",
        "gauge",
        "When Ark last answered with a 2xx (0: not since start).",
    );
    let last = ctx.ark.last_success_ms().map_or(0.0, |t| t as f64 / 1000.0);
    f.sample("seedq_ark_last_success_timestamp_seconds", &[], last);
    f.head(
        "seedq_stage_heartbeat_age_seconds",
        "gauge",
        "Time since each stage last finished a loop iteration.",
    );
    for (stage, a) in ctx.ops.health.ages() {
        f.sample(
            "seedq_stage_heartbeat_age_seconds",
            &[("stage", stage)],
            a.as_secs_f64(),
        );
    }
    f.head("seedq_build_info", "gauge", "The running seedq version.");
    f.sample(
        "seedq_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    crate::worker::budget::metrics_text(ctx, &mut out, now).await?;
    Ok(out)
}
