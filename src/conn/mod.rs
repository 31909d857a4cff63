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

mod places;
mod socket;
mod state;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use places::RECLAIM_GRACE;
pub use places::{effective_max_connections, Places};
use socket::Tracked;
use state::ConnState;

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
