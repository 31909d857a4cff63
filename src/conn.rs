//! Serving HTTP/1.1 connections with hyper directly (axum's `serve` hides the knobs), so that
//! every connection is bounded:
//!
//! - at most `server.max_connections` open at once (the accept loop waits for a free place, so
//!   the kernel's backlog holds the rest);
//! - a request's headers must arrive within `server.header_read_timeout_ms` of their first byte
//!   (slowloris), and a keep-alive connection with no request in progress is closed after
//!   `server.keep_alive_timeout_ms` of silence;
//! - hyper's own answers to requests it cannot parse (400, 414, 431 with an empty body) are
//!   rewritten on their way out into our JSON error envelope, so no layer sends a bare error.
//!
//! A per-connection watchdog does the timing: the socket wrapper notes when bytes arrive, the
//! service wrapper notes when a request is in progress (until its response body is dropped).
//! Shutdown asks each connection to finish its current response and close, then waits for them.

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
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// The limits every connection is served under.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    /// hyper's own cap on the request head (start line + headers); the finer
    /// `server.max_header_bytes` check runs in the middleware.
    pub max_head_bytes: usize,
}

/// "No time": the field is unset.
const NONE: u64 = u64::MAX;

/// What the watchdog of one connection reads.
struct ConnState {
    born: Instant,
    /// Milliseconds since `born` of the last byte read or the last response finished.
    last_activity: AtomicU64,
    /// Milliseconds since `born` of the first byte of a request head not yet handed to the
    /// service (`NONE` when no head is being read).
    head_since: AtomicU64,
    /// Requests handed to the service whose response body has not been dropped yet.
    active: AtomicUsize,
}

impl ConnState {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            last_activity: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            active: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last_activity.store(now, Ordering::Relaxed);
        if self.active.load(Ordering::Acquire) == 0 {
            let _ =
                self.head_since
                    .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn begin_request(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Release);
        ActiveGuard(self.clone())
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
}

/// Held by a response body: the request stays "in progress" until the body is dropped.
struct ActiveGuard(Arc<ConnState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0
            .last_activity
            .store(self.0.now_ms(), Ordering::Relaxed);
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
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let places = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let permit = tokio::select! {
            p = places.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
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
        tasks.spawn(async move {
            serve_connection(stream, peer, router, limits, stop).await;
            drop(permit);
        });
        // Reap finished connections so the set does not grow with the server's age.
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        state: state.clone(),
        rewrite: None,
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
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size(limits.max_head_bytes.max(8192) + 8192)
        .max_header_size(limits.max_head_bytes.max(8192));
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let wait = watchdog_sleep(&state, &limits);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            expired = wait => {
                if expired {
                    tracing::debug!(peer = %peer, "closing a stalled or idle connection");
                    return; // dropping the connection closes the socket
                }
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Sleep until the connection's deadline; true when it has passed with nothing in progress.
async fn watchdog_sleep(state: &ConnState, limits: &ConnLimits) -> bool {
    let recheck = limits.header_read_timeout.min(limits.keep_alive_timeout);
    match state.deadline(limits) {
        None => {
            tokio::time::sleep(recheck).await;
            false
        }
        Some(due) => {
            let now = state.now_ms();
            if now >= due {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(due - now)).await;
            state.deadline(limits).is_some_and(|d| state.now_ms() >= d)
        }
    }
}

/// The socket, noting arrivals for the watchdog and rewriting hyper's bare error answers.
struct Tracked {
    inner: TcpStream,
    state: Arc<ConnState>,
    /// A rewritten answer being written: its bytes, how many are out, and how many bytes of
    /// hyper's original to report as written once it is all out.
    rewrite: Option<(Vec<u8>, usize, usize)>,
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
        if self.rewrite.is_none() {
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
        if self.rewrite.is_none() {
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
            max_connections: 1,
            header_read_timeout: Duration::from_millis(100),
            keep_alive_timeout: Duration::from_millis(1000),
            max_head_bytes: 8192,
        };
        let s = Arc::new(ConnState::new());
        // idle from birth: the keep-alive timeout
        assert_eq!(s.deadline(&limits), Some(1000));
        s.head_since.store(50, Ordering::Relaxed);
        assert_eq!(s.deadline(&limits), Some(150), "a head is being read");
        let g = s.begin_request();
        assert_eq!(s.deadline(&limits), None, "a request in progress");
        assert_eq!(s.head_since.load(Ordering::Relaxed), NONE);
        drop(g);
        let after = s.last_activity.load(Ordering::Relaxed);
        assert_eq!(s.deadline(&limits), Some(after + 1000));
    }
}
