//! The HTTP edge: the router, the middleware every request passes, and a listener whose
//! connections the create handler can sever (the `drop_after_create` fault).
//!
//! The middleware owns what is common to all routes: the request id (`X-Request-Id`, and the
//! ` Request id: …` suffix of error messages), echoing `X-Client-Request-Id`, injected latency,
//! Bearer auth and injected 500s on the Ark routes, corrupted JSON bodies, and the per-route
//! call stats. Handlers stay about the API itself.
//!
//! Dropping a connection without an answer: each accepted socket is wrapped in [`KillIo`], whose
//! switch the handler reaches through `ConnectInfo<ConnTag>`. Once thrown, every read and write
//! on that socket fails, so hyper abandons the connection and closes it before a byte of the
//! response is written; the client sees the connection close with no response.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::{IncomingStream, Listener};
use futures::task::AtomicWaker;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::config::Route;
use super::error::ApiError;
use super::state::{Sim, now_ms};
use super::{admin, api, files};

/// Largest request body (docs/ark-api.md §8: "whole request body ≤ 64 MB"); seedq checks the same
/// limit at submit with its own constant.
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// The Ark API prefix.
pub const API_PREFIX: &str = "/api/v3";
/// Marks a response whose connection was severed, for the stats.
#[derive(Clone, Copy, Debug)]
pub struct Dropped;

/// A server-side request id: `"02"` + 13-digit unix ms + 38 lowercase hex (docs/ark-api.md §1).
pub fn request_id() -> String {
    let mut rng = rand::rng();
    let hex: String = (0..38)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect();
    format!("02{:013}{hex}", now_ms())
}

/// All routes.
pub fn router(sim: Arc<Sim>) -> Router {
    let tasks = format!("{API_PREFIX}{}", seedq_ark::wire::TASKS_PATH);
    Router::new()
        .route(&tasks, get(api::list).post(api::create))
        .route(
            &format!("{tasks}/{{id}}"),
            get(api::get).delete(api::delete),
        )
        .route("/_sim/files/{id}/{file}", get(files::download))
        .route("/_sim/stats", get(admin::stats))
        .route("/_sim/reset", axum::routing::post(admin::reset))
        .route(
            "/_sim/faults",
            get(admin::get_faults).post(admin::set_faults),
        )
        .route("/_sim/tasks", get(admin::tasks))
        .fallback(|req: Request| async move { ApiError::no_route(req.uri().path()) })
        .layer(axum::middleware::from_fn_with_state(sim.clone(), edge))
        .with_state(sim)
}

/// Which stats/fault route a request belongs to.
fn classify(method: &Method, path: &str) -> Option<Route> {
    let tasks = path.strip_prefix(API_PREFIX)?;
    if let Some(rest) = tasks.strip_prefix(seedq_ark::wire::TASKS_PATH) {
        return match (method, rest) {
            (&Method::POST, "" | "/") => Some(Route::Create),
            (&Method::GET, "" | "/") => Some(Route::List),
            (&Method::GET, r) if r.len() > 1 => Some(Route::Get),
            (&Method::DELETE, r) if r.len() > 1 => Some(Route::Delete),
            _ => None,
        };
    }
    None
}

async fn edge(State(sim): State<Arc<Sim>>, req: Request, next: Next) -> Response {
    let rid = request_id();
    let client_rid = req.headers().get("x-client-request-id").cloned();
    let path = req.uri().path().to_string();
    let api_route = classify(req.method(), &path);
    let route = api_route.or_else(|| path.starts_with("/_sim/files/").then_some(Route::Download));
    let is_api = path.starts_with(API_PREFIX);

    if let Some(r) = route {
        sim.record_received(r.name());
        let ms = sim.latency_ms(r);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
    // Read every body in full before answering, even where the handler ignores it (the Python
    // SDK sends `{}` with DELETE): hyper closes a keep-alive connection whose request body was
    // left unread, and the client's next request on it would fail.
    let (parts, body) = req.into_parts();
    let (body, too_large) = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => (b, false),
        Err(_) => (Bytes::new(), true),
    };
    let req = Request::from_parts(parts, Body::from(body));
    let mut resp = if too_large {
        ApiError::invalid(None, "the request body is larger than 64 MB").into_response()
    } else if is_api && !authorized(&sim, &req) {
        ApiError::unauthorized().into_response()
    } else if let Some(Err(e)) = api_route.map(|r| sim.admit_read(r)) {
        e.into_response()
    } else if let Some(r) = api_route
        && sim.roll(|f| f.error_rate.of(r))
    {
        ApiError::internal().into_response()
    } else {
        next.run(req).await
    };

    if let Some(e) = resp.extensions().get::<ApiError>().cloned() {
        resp = e.render(&rid);
    } else if api_route.is_some()
        && resp.status() == StatusCode::OK
        && sim.roll(|f| f.malformed_json_rate)
    {
        resp = corrupt(resp).await;
    }
    if let Some(r) = route {
        let status = if resp.extensions().get::<Dropped>().is_some() {
            "dropped".to_string()
        } else {
            resp.status().as_u16().to_string()
        };
        sim.record_call(r.name(), &status);
    }
    let h = resp.headers_mut();
    if sim.cfg.clock_offset_s != 0 {
        let at = chrono::Utc::now() + chrono::Duration::seconds(sim.cfg.clock_offset_s);
        if let Ok(v) = HeaderValue::from_str(&at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()) {
            h.insert(header::DATE, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&rid) {
        h.insert("x-request-id", v);
    }
    if let Some(v) = client_rid {
        h.insert("x-client-request-id", v);
    }
    resp
}

fn authorized(sim: &Sim, req: &Request) -> bool {
    let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(key) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return false;
    };
    sim.cfg.api_keys.iter().any(|k| k == key.trim())
}

/// Cuts a JSON body in half: valid-looking headers, unparseable body.
async fn corrupt(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let cut = bytes.slice(..bytes.len() / 2);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(cut))
}

/// The kill switch of one connection.
#[derive(Debug, Default)]
pub struct KillSwitch {
    killed: AtomicBool,
    waker: AtomicWaker,
}

impl KillSwitch {
    /// Fails every later read and write on the connection.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

/// Per-connection info handed to handlers (`ConnectInfo<ConnTag>`).
#[derive(Clone, Debug)]
pub struct ConnTag {
    pub remote: SocketAddr,
    pub kill: Arc<KillSwitch>,
}

impl Connected<IncomingStream<'_, KillListener>> for ConnTag {
    fn connect_info(stream: IncomingStream<'_, KillListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TCP listener whose connections carry a [`KillSwitch`].
pub struct KillListener(pub TcpListener);

impl Listener for KillListener {
    type Io = KillIo;
    type Addr = ConnTag;

    async fn accept(&mut self) -> (KillIo, ConnTag) {
        loop {
            match self.0.accept().await {
                Ok((stream, remote)) => {
                    // Small JSON answers must not wait for Nagle + delayed ACK (~40 ms).
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "sim: set_nodelay failed");
                    }
                    let kill = Arc::new(KillSwitch::default());
                    return (
                        KillIo {
                            inner: stream,
                            kill: kill.clone(),
                        },
                        ConnTag { remote, kill },
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "sim: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<ConnTag> {
        Ok(ConnTag {
            remote: self.0.local_addr()?,
            kill: Arc::new(KillSwitch::default()),
        })
    }
}

/// A socket that fails once its switch is thrown.
pub struct KillIo {
    inner: TcpStream,
    kill: Arc<KillSwitch>,
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "sim: connection dropped")
}

impl AsyncRead for KillIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Register first, so a kill between the check and the read still wakes us.
        self.kill.waker.register(cx.waker());
        if self.kill.is_killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.kill.is_killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.kill.is_killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.kill.is_killed() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.kill.is_killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
