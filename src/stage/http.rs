//! Guarded HTTP serving, shared by the admin server (`ops::admin`) and the callback stage
//! (`worker::callback`): a connection cap, read and write idle timeouts outside handlers, and
//! a connection lifetime, so slow or half-open peers cannot hold descriptors.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A connection is closed at its next read after this long, however active: a slow client
/// trickling one byte per `read_timeout` cannot hold a slot for ever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
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

/// What the admin and callback servers allow one peer (hyper and axum default to
/// no header timeout, no read timeout and no connection cap, and 150 half-sent requests held
/// 150 descriptors for over a minute).
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// No byte in or out for this long closes the connection (`admin.read_timeout`).
    pub read_timeout: Duration,
    /// Connections held at once (`admin.max_connections`, or fewer when the descriptor
    /// limit is low).
    pub max_connections: usize,
}

impl ServerLimits {
    /// The limits from `[admin]`, the connection cap lowered to what the process's
    /// descriptors allow ([`super::fds::Budget`]).
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            read_timeout: cfg.admin.read_timeout.max(Duration::from_millis(10)),
            max_connections: super::fds::Budget::now(cfg).per_server,
        }
    }
}

/// The connections a server holds, oldest first, and the cap on them.
struct Slots {
    cap: usize,
    live: Mutex<SlotMap>,
    /// Poked when a connection ends, so an accept waiting for room looks again.
    freed: Notify,
}

#[derive(Default)]
struct SlotMap {
    next: u64,
    /// By accept order: the first entry is the oldest connection.
    conns: BTreeMap<u64, Slot>,
}

struct Slot {
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
}

impl Slots {
    /// Takes a slot for a new connection, making room when the server is full: the oldest
    /// connection with no request in a handler (a half-sent request, or a keep-alive
    /// connection between requests) is told to close, and this waits until it has. Only when
    /// every connection is in a handler does the new one wait for one to end.
    async fn take(self: &Arc<Self>) -> SlotGuard {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut map = self.live.lock().unwrap_or_else(PoisonError::into_inner);
                if map.conns.len() < self.cap {
                    let id = map.next;
                    map.next += 1;
                    let slot = Slot {
                        busy: Arc::new(AtomicUsize::new(0)),
                        evict: CancellationToken::new(),
                    };
                    let (busy, evict) = (Arc::clone(&slot.busy), slot.evict.clone());
                    map.conns.insert(id, slot);
                    return SlotGuard {
                        slots: Arc::clone(self),
                        id,
                        busy,
                        evict,
                    };
                }
                // One eviction at a time: an evicted connection still counts until hyper has
                // dropped it, and evicting a second for the same newcomer would be a waste.
                let pending = map.conns.values().any(|s| s.evict.is_cancelled());
                if !pending
                    && let Some(victim) = map
                        .conns
                        .values()
                        .find(|s| s.busy.load(Ordering::SeqCst) == 0)
                {
                    victim.evict.cancel();
                    crate::metrics::slow_client_evicted();
                }
            }
            freed.await;
        }
    }
}

/// A connection's place in [`Slots`], given back when the connection is dropped.
struct SlotGuard {
    slots: Arc<Slots>,
    id: u64,
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .conns
            .remove(&self.id);
        self.slots.freed.notify_one();
    }
}

/// A listener that holds at most `max_connections` connections and hands out [`GuardedIo`]
/// streams. At the cap, a new connection takes the place of the oldest one that has not sent
/// a complete request (see [`Slots::take`]): a few hundred idle or half-sent connections
/// cannot keep `/healthz` or a callback out, they only push each other out.
pub struct GuardedListener {
    inner: TcpListener,
    slots: Arc<Slots>,
    limits: ServerLimits,
}

impl GuardedListener {
    /// Wraps a bound listener.
    pub fn new(inner: TcpListener, limits: ServerLimits) -> Self {
        Self {
            inner,
            slots: Arc::new(Slots {
                cap: limits.max_connections.max(1),
                live: Mutex::default(),
                freed: Notify::new(),
            }),
            limits,
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    // The newcomer holds one descriptor beyond the cap while room is made;
                    // the reserve the cap was derived with covers it.
                    let slot = self.slots.take().await;
                    return (GuardedIo::new(stream, slot, self.limits), addr);
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the connection stays
                    // in the backlog until a descriptor frees.
                    tracing::warn!(error = %e, "accepting a connection failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
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
        ConnBusy(Arc::clone(&stream.io().slot.busy))
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
/// lifetime, and the connection slot it gives back when dropped. Told to make room (evicted),
/// it fails its next read outside a handler.
pub struct GuardedIo {
    stream: TcpStream,
    slot: SlotGuard,
    evicted: Pin<Box<WaitForCancellationFutureOwned>>,
    idle: Duration,
    closes_at: Instant,
    read_timer: Pin<Box<Sleep>>,
    read_armed: bool,
    write_timer: Pin<Box<Sleep>>,
    write_armed: bool,
}

impl GuardedIo {
    fn new(stream: TcpStream, slot: SlotGuard, limits: ServerLimits) -> Self {
        let now = Instant::now();
        Self {
            stream,
            evicted: Box::pin(slot.evict.clone().cancelled_owned()),
            slot,
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
            Poll::Pending if this.slot.busy.load(Ordering::SeqCst) > 0 => {
                // A handler is running: hyper only watches for a hang-up. The clock starts
                // again at the next read after the response.
                this.read_armed = false;
                Poll::Pending
            }
            Poll::Pending => {
                // Waiting for a request: the moment to give the slot to a newcomer.
                if this.evicted.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "closed to make room for a new connection (the server is at its cap)",
                    )));
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server(cap: usize) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    "slow"
                }),
            );
        let limits = ServerLimits {
            read_timeout: Duration::from_secs(30),
            max_connections: cap,
        };
        let stop = CancellationToken::new();
        tokio::spawn(serve_guarded(listener, app, limits, stop.clone()));
        (addr, stop)
    }

    async fn half_sent(addr: std::net::SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        // Let the server accept it before the next one comes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        s
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        out
    }

    /// Closed by the server: a read ends (EOF or reset) within `within`.
    async fn closed(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_half_sent_connection_makes_room() {
        let (addr, stop) = server(2).await;
        let mut oldest = half_sent(addr).await;
        let mut newer = half_sent(addr).await;
        assert!(get(addr, "/").await.contains("200 OK"));
        assert!(
            closed(&mut oldest, Duration::from_secs(2)).await,
            "the oldest half-sent connection was kept"
        );
        assert!(
            !closed(&mut newer, Duration::from_millis(200)).await,
            "a newer connection was closed although one eviction made room"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_connection_in_a_handler_is_not_evicted() {
        let (addr, stop) = server(1).await;
        let slow = tokio::spawn(get(addr, "/slow"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The only slot is in a handler: the newcomer waits for it instead of cutting it off.
        let started = Instant::now();
        assert!(get(addr, "/").await.contains("200 OK"));
        assert!(started.elapsed() >= Duration::from_millis(300));
        let slow = slow.await.expect("join");
        assert!(slow.contains("slow"), "{slow}");
        stop.cancel();
    }
}
