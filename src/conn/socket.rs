//! The socket wrapper: notes arrivals for the watchdog and rewrites hyper's bare HTTP/1.1 error
//! answers into our JSON envelope.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::state::ConnState;

/// The socket, noting arrivals for the watchdog and rewriting hyper's bare error answers.
pub(super) struct Tracked {
    pub(super) inner: TcpStream,
    pub(super) state: Arc<ConnState>,
    /// A rewritten answer being written: its bytes, how many are out, and how many bytes of
    /// hyper's original to report as written once it is all out.
    pub(super) rewrite: Option<(Vec<u8>, usize, usize)>,
    /// Look for hyper's bare HTTP/1.1 error answers (not on HTTP/2).
    pub(super) rewrite_errors: bool,
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
pub(super) fn rewrite_bare_error(buf: &[u8]) -> Option<Vec<u8>> {
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
