//! Serving connections with hyper directly (axum's `serve` and tonic's server hide the knobs),
//! so that every connection, HTTP/1.1 or HTTP/2 (gRPC), is bounded:
//!
//! - at most `server.max_connections` open at once over every port (`Places`, shared by the
//!   HTTP, gRPC and metrics listeners; the accept loop waits for a free place, so the kernel's
//!   backlog holds the rest). When every place is taken, the connections with no request in
//!   progress are closed to make room: idle sockets cannot lock out a new client.
//! - a new connection must deliver its first request head (HTTP/1.1) or its first request
//!   (HTTP/2) within `server.header_read_timeout_ms`, and a later head within that of its first
//!   byte (slowloris); a connection with no request in progress is closed after
//!   `server.keep_alive_timeout_ms` of silence (HTTP/2: without a request; its PINGs do not
//!   count; it gets a GOAWAY first);
//! - HTTP/2 connections also PING an unresponsive client and cap their concurrent streams;
//! - hyper's own answers to HTTP/1.1 requests it cannot parse (400, 414, 431 with an empty body)
//!   are rewritten on their way out into our JSON error envelope, so no layer sends a bare error.
//!
//! A per-connection watchdog does the timing: the socket wrapper notes when bytes arrive (and
//! wakes the watchdog when a head starts), the service wrapper notes when a request is in
//! progress (until its response body is dropped). Shutdown asks each connection to finish its
//! current response and close, then waits for them.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (gRPC).
    Http2 {
        keepalive_interval: Duration,
        keepalive_timeout: Duration,
        max_concurrent_streams: u32,
    },
}

/// The limits every connection is served under.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    /// hyper's own cap on the request head (start line + headers); the finer
    /// `server.max_header_bytes` check runs in the middleware.
    pub max_head_bytes: usize,
    pub protocol: Protocol,
}

/// The open-connection places every listener of the server shares.
#[derive(Debug)]
pub struct Places {
    free: Arc<Semaphore>,
    /// Accept loops waiting for a place now.
    waiting: AtomicUsize,
    /// Bumped when an accept loop starts to wait: idle connections look at `waiting` then.
    pressure: watch::Sender<u64>,
}

/// How long a connection must have been without a request before it is closed to make room: a
/// client that has just connected gets this long to send its request.
const RECLAIM_GRACE: Duration = Duration::from_millis(200);

/// Counts an accept loop as waiting while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Places {
    pub fn new(total: usize) -> Arc<Places> {
        let total = total.max(1);
        Arc::new(Places {
            free: Arc::new(Semaphore::new(total)),
            waiting: AtomicUsize::new(0),
            pressure: watch::Sender::new(0),
        })
    }

    /// A place for one more connection: at once when one is free; otherwise ask the idle
    /// connections to close and wait for one.
    async fn take(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.free.clone().try_acquire_owned() {
            return Some(p);
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        self.pressure.send_modify(|n| *n = n.wrapping_add(1));
        self.free.clone().acquire_owned().await.ok()
    }

    /// Whether a client waits for a place.
    fn wanted(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }
}

/// The connection limits of the process: `server.max_connections`, clamped to what the
/// open-file limit leaves once the server's own files and sockets are set aside. The soft limit
/// is first raised to the hard one where the system allows. Returns (places, open-file limit).
pub fn effective_max_connections(configured: usize) -> (usize, u64) {
    let nofile = raise_nofile_limit();
    (clamp_to_nofile(configured, nofile), nofile)
}

/// Raise the soft `RLIMIT_NOFILE` to the hard one; the soft limit in force afterwards.
fn raise_nofile_limit() -> u64 {
    #[cfg(unix)]
    {
        match rlimit::getrlimit(rlimit::Resource::NOFILE) {
            Ok((soft, hard)) => {
                if hard > soft && rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard).is_ok() {
                    return hard;
                }
                soft
            }
            Err(_) => u64::MAX,
        }
    }
    #[cfg(not(unix))]
    {
        u64::MAX
    }
}

/// File descriptors kept for the server itself (model files, stores, Redis, providers,
/// webhooks, logs): an eighth of the limit, at least 64.
fn clamp_to_nofile(configured: usize, nofile: u64) -> usize {
    let reserve = (nofile / 8).max(64);
    let room = nofile.saturating_sub(reserve).max(1);
    configured
        .min(usize::try_from(room).unwrap_or(usize::MAX))
        .max(1)
}

/// "No time": the field is unset.
const NONE: u64 = u64::MAX;

/// What the watchdog of one connection reads.
struct ConnState {
    born: Instant,
    /// HTTP/2: reads do not count as activity (PINGs and window updates keep coming); only
    /// requests do.
    h2: bool,
    /// Milliseconds since `born` of the last byte read (HTTP/1.1) or the last response
    /// finished.
    last_activity: AtomicU64,
    /// Milliseconds since `born` of the first byte of a request head not yet handed to the
    /// service (`NONE` when no head is being read). A new connection starts at 0: its first
    /// request must come within the header timeout.
    head_since: AtomicU64,
    /// Requests handed to the service whose response body has not been dropped yet.
    active: AtomicUsize,
    /// Milliseconds since `born` of the last response finished (0: none yet).
    last_done: AtomicU64,
    /// Wakes the watchdog when a head starts (its deadline moves earlier).
    wake: Notify,
}

impl ConnState {
    fn new(h2: bool) -> Self {
        Self {
            born: Instant::now(),
            h2,
            last_activity: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            last_done: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn on_read(&self) {
        if self.h2 {
            return;
        }
        let now = self.now_ms();
        self.last_activity.store(now, Ordering::Relaxed);
        if self.active.load(Ordering::Acquire) == 0
            && self
                .head_since
                .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    fn begin_request(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Release);
        ActiveGuard(self.clone())
    }

    fn idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }

    /// When the connection should be closed if nothing changes; `None` while a request is in
    /// progress (its own timeouts bound it).
    fn deadline(&self, limits: &ConnLimits) -> Option<u64> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_since.load(Ordering::Acquire);
        Some(if head != NONE {
            head + limits.header_read_timeout.as_millis() as u64
        } else {
            self.last_activity.load(Ordering::Relaxed)
                + limits.keep_alive_timeout.as_millis() as u64
        })
    }

    /// Whether a request was ever handed to the service on this connection.
    fn served(&self) -> bool {
        self.head_since.load(Ordering::Acquire) != 0 || !self.idle()
    }
}

/// Held by a response body: the request stays "in progress" until the body is dropped.
struct ActiveGuard(Arc<ConnState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.last_activity.store(now, Ordering::Relaxed);
        self.0.last_done.store(now, Ordering::Relaxed);
        // The watchdog looks again: the connection may be idle now.
        self.0.wake.notify_one();
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds something (a guard, a permit) until the body is dropped: a
/// streamed response keeps its connection's request, its concurrency permit and its in-flight
/// count for as long as it streams.
pub struct GuardedBody<G> {
    inner: Body,
    _guard: G,
}

impl<G: Send + Unpin + 'static> GuardedBody<G> {
    pub fn wrap(inner: Body, guard: G) -> Body {
        Body::new(GuardedBody {
            inner,
            _guard: guard,
        })
    }
}

impl<G: Unpin> http_body::Body for GuardedBody<G> {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Accept connections on `listener` and serve `router` on each until `shutdown` turns true;
/// then ask every connection to close after its current response and wait for them all.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    places: Arc<Places>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let permit = tokio::select! {
            p = places.take() => match p {
                Some(p) => p,
                None => break,
            },
            _ = shutdown.changed() => continue,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let stop = shutdown.clone();
        let places = places.clone();
        tasks.spawn(async move {
            serve_connection(stream, peer, router, limits, stop, &places).await;
            drop(permit);
        });
        // Reap finished connections so the set does not grow with the server's age.
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// What the watchdog decided.
enum Verdict {
    /// Drop the socket now.
    Close,
    /// HTTP/2 after requests: send GOAWAY and give the peer a moment.
    GoAway,
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnLimits,
    shutdown: watch::Receiver<bool>,
    places: &Places,
) {
    let h2 = matches!(limits.protocol, Protocol::Http2 { .. });
    let state = Arc::new(ConnState::new(h2));
    let io = TokioIo::new(Tracked {
        inner: stream,
        state: state.clone(),
        rewrite: None,
        rewrite_errors: !h2,
    });
    let svc_state = state.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let guard = svc_state.begin_request();
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let response = match router.oneshot(req.map(Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(response.map(|inner| GuardedBody::wrap(inner, guard)))
        }
    });
    let watch = Watch {
        state: &state,
        limits: &limits,
        peer,
        shutdown,
        places,
        pressure: places.pressure.subscribe(),
    };
    match limits.protocol {
        Protocol::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .keep_alive(true)
                .header_read_timeout(None)
                .max_buf_size(limits.max_head_bytes.max(8192) + 8192)
                .max_header_size(limits.max_head_bytes.max(8192));
            let conn = builder.serve_connection(io, service).with_upgrades();
            tokio::pin!(conn);
            let close = |c: Pin<&mut _>| {
                hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(c)
            };
            drive(conn, close, watch).await;
        }
        Protocol::Http2 {
            keepalive_interval,
            keepalive_timeout,
            max_concurrent_streams,
        } => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(keepalive_interval))
                .keep_alive_timeout(keepalive_timeout)
                .max_concurrent_streams(max_concurrent_streams)
                .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX));
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            let close =
                |c: Pin<&mut _>| hyper::server::conn::http2::Connection::graceful_shutdown(c);
            drive(conn, close, watch).await;
        }
    }
}

/// Run a connection until it ends, its watchdog expires, the server asks idle connections to
/// make room, or shutdown (then it finishes its current response first).
/// What `drive` watches besides the connection itself.
struct Watch<'a> {
    state: &'a ConnState,
    limits: &'a ConnLimits,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    places: &'a Places,
    pressure: watch::Receiver<u64>,
}

async fn drive<C, E>(mut conn: Pin<&mut C>, graceful: impl Fn(Pin<&mut C>), w: Watch<'_>)
where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let Watch {
        state,
        limits,
        peer,
        mut shutdown,
        places,
        mut pressure,
    } = w;
    let mut closing = *shutdown.borrow();
    if closing {
        graceful(conn.as_mut());
    }
    // After a GOAWAY: when the socket is dropped whatever the peer does.
    let mut hard_stop: Option<tokio::time::Instant> = None;
    let far = Duration::from_secs(3600 * 24);
    loop {
        let wait = watchdog_sleep(state, limits);
        let stop_at = hard_stop.unwrap_or_else(|| tokio::time::Instant::now() + far);
        // While a client waits for a place, an idle connection gives its place up once it has
        // been without a request for the grace period.
        let reclaim = (places.wanted() && state.idle()).then(|| {
            let quiet = Duration::from_millis(
                state
                    .now_ms()
                    .saturating_sub(state.last_done.load(Ordering::Relaxed)),
            );
            tokio::time::Instant::now() + RECLAIM_GRACE.saturating_sub(quiet)
        });
        let reclaim_at = reclaim.unwrap_or_else(|| tokio::time::Instant::now() + far);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            verdict = wait => match verdict {
                Some(Verdict::Close) => {
                    tracing::debug!(peer = %peer, "closing a stalled or idle connection");
                    return; // dropping the connection closes the socket
                }
                Some(Verdict::GoAway) if hard_stop.is_none() => {
                    tracing::debug!(peer = %peer, "idle HTTP/2 connection: GOAWAY");
                    graceful(conn.as_mut());
                    hard_stop = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
                _ => {}
            },
            _ = tokio::time::sleep_until(stop_at), if hard_stop.is_some() => return,
            _ = tokio::time::sleep_until(reclaim_at), if reclaim.is_some() => {
                if places.wanted() && state.idle() {
                    tracing::debug!(peer = %peer, "closing an idle connection to make room");
                    return;
                }
            }
            _ = pressure.changed() => {}
            _ = shutdown.changed(), if !closing => {
                closing = true;
                graceful(conn.as_mut());
            }
        }
    }
}

/// Sleep until the connection's deadline (or until a head starts, which moves it earlier);
/// what to do when it has passed with nothing in progress, `None` to look again.
async fn watchdog_sleep(state: &ConnState, limits: &ConnLimits) -> Option<Verdict> {
    let recheck = limits.header_read_timeout.min(limits.keep_alive_timeout);
    let expired = match state.deadline(limits) {
        None => {
            tokio::select! {
                _ = tokio::time::sleep(recheck) => {}
                _ = state.wake.notified() => {}
            }
            false
        }
        Some(due) => {
            let now = state.now_ms();
            if now >= due {
                true
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(due - now)) => {
                        state.deadline(limits).is_some_and(|d| state.now_ms() >= d)
                    }
                    _ = state.wake.notified() => false,
                }
            }
        }
    };
    if !expired {
        return None;
    }
    Some(if state.h2 && state.served() {
        Verdict::GoAway
    } else {
        Verdict::Close
    })
}

/// The socket, noting arrivals for the watchdog and rewriting hyper's bare error answers.
struct Tracked {
    inner: TcpStream,
    state: Arc<ConnState>,
    /// A rewritten answer being written: its bytes, how many are out, and how many bytes of
    /// hyper's original to report as written once it is all out.
    rewrite: Option<(Vec<u8>, usize, usize)>,
    /// Look for hyper's bare HTTP/1.1 error answers (not on HTTP/2).
    rewrite_errors: bool,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        r
    }
}

impl Tracked {
    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            let Some((bytes, done, report)) = self.rewrite.as_mut() else {
                return Poll::Ready(Ok(0));
            };
            if *done >= bytes.len() {
                let report = *report;
                self.rewrite = None;
                return Poll::Ready(Ok(report));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.rewrite.is_none() && self.rewrite_errors {
            if let Some(answer) = rewrite_bare_error(buf) {
                self.rewrite = Some((answer, 0, buf.len()));
            }
        }
        if self.rewrite.is_some() {
            return self.poll_rewrite(cx);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.rewrite.is_none() && self.rewrite_errors {
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                if let Some(answer) = rewrite_bare_error(first) {
                    let total = bufs.iter().map(|b| b.len()).sum();
                    self.rewrite = Some((answer, 0, total));
                }
            }
        }
        if self.rewrite.is_some() {
            return self.poll_rewrite(cx);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// hyper answers a request it cannot parse by itself, before any of our layers runs: a 400,
/// 414 or 431 head with `content-length: 0` and nothing else of ours (every response of our
/// router carries `x-request-id`). Such a head is replaced by the same status with our envelope.
fn rewrite_bare_error(buf: &[u8]) -> Option<Vec<u8>> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = &buf[..head_end];
    let status = [
        (&b"HTTP/1.1 400 "[..], 400u16),
        (b"HTTP/1.1 414 ", 414),
        (b"HTTP/1.1 431 ", 431),
        (b"HTTP/1.0 400 ", 400),
        (b"HTTP/1.0 414 ", 414),
        (b"HTTP/1.0 431 ", 431),
    ]
    .iter()
    .find(|(prefix, _)| head.starts_with(prefix))
    .map(|(_, s)| *s)?;
    let lower = head.to_ascii_lowercase();
    let has = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    if has(b"x-request-id:") || !has(b"content-length: 0") || buf.len() != head_end + 4 {
        return None;
    }
    let (kind, message) = match status {
        414 => (
            crate::error::ErrorKind::UriTooLong,
            "the request URI is too long",
        ),
        431 => (
            crate::error::ErrorKind::HeadersTooLarge,
            "the request headers are too large or too many (at most 100 headers)",
        ),
        _ => (
            crate::error::ErrorKind::InvalidRequest,
            "malformed HTTP request: the request line or a header could not be parsed \
             (invalid bytes, or a bad or conflicting Content-Length)",
        ),
    };
    let body = crate::error::envelope_json(kind, message);
    let reason = match status {
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bare_errors_become_envelopes() {
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite_bare_error(bare).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(out.contains("content-type: application/json"));
        assert!(out.contains("\"code\":\"invalid_request\""));
        let len: usize = out
            .split("content-length: ")
            .nth(1)
            .and_then(|s| s.split("\r\n").next())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, out.split("\r\n\r\n").nth(1).unwrap().len());
        let big = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert!(String::from_utf8(rewrite_bare_error(big).unwrap())
            .unwrap()
            .contains("headers_too_large"));
        let uri = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n";
        assert!(String::from_utf8(rewrite_bare_error(uri).unwrap())
            .unwrap()
            .contains("uri_too_long"));
    }

    #[test]
    fn our_own_responses_pass_untouched() {
        for ours in [
            &b"HTTP/1.1 400 Bad Request\r\nx-request-id: 1\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"{\"outputs\":[]}",
        ] {
            assert!(rewrite_bare_error(ours).is_none());
        }
    }

    #[test]
    fn deadlines_follow_the_connection_state() {
        let limits = ConnLimits {
            header_read_timeout: Duration::from_millis(100),
            keep_alive_timeout: Duration::from_millis(1000),
            max_head_bytes: 8192,
            protocol: Protocol::Http1,
        };
        let s = Arc::new(ConnState::new(false));
        // a new connection must send its first head within the header timeout
        assert_eq!(s.deadline(&limits), Some(100));
        assert!(!s.served());
        let g = s.begin_request();
        assert_eq!(s.deadline(&limits), None, "a request in progress");
        assert_eq!(s.head_since.load(Ordering::Relaxed), NONE);
        drop(g);
        assert!(s.served());
        let after = s.last_activity.load(Ordering::Relaxed);
        assert_eq!(
            s.deadline(&limits),
            Some(after + 1000),
            "idle between requests"
        );
        s.head_since.store(after + 50, Ordering::Relaxed);
        assert_eq!(
            s.deadline(&limits),
            Some(after + 150),
            "a head is being read"
        );
    }

    #[tokio::test]
    async fn a_head_starting_wakes_the_watchdog() {
        let limits = ConnLimits {
            header_read_timeout: Duration::from_millis(50),
            keep_alive_timeout: Duration::from_secs(60),
            max_head_bytes: 8192,
            protocol: Protocol::Http1,
        };
        let s = Arc::new(ConnState::new(false));
        drop(s.begin_request()); // idle between requests: the keep-alive deadline, 60 s away
        let started = Instant::now();
        let watcher = {
            let s = s.clone();
            tokio::spawn(async move {
                loop {
                    if watchdog_sleep(&s, &limits).await.is_some() {
                        return;
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.on_read(); // the first byte of the next head
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("the watchdog slept to the keep-alive deadline")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn http2_reads_are_not_activity() {
        let s = ConnState::new(true);
        s.on_read();
        assert_eq!(s.head_since.load(Ordering::Relaxed), 0);
        assert_eq!(s.last_activity.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn connections_are_clamped_to_the_open_file_limit() {
        assert_eq!(clamp_to_nofile(4096, 1024), 896);
        assert_eq!(clamp_to_nofile(100, 1024), 100);
        assert_eq!(clamp_to_nofile(4096, 65_536), 4096);
        assert_eq!(clamp_to_nofile(4096, 100), 36);
        assert_eq!(clamp_to_nofile(4096, 10), 1);
    }
}
