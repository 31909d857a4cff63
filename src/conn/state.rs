//! What a connection's watchdog reads: when bytes last arrived, whether a head is being read,
//! the requests in progress.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use super::ConnLimits;

/// "No time": the field is unset.
pub(super) const NONE: u64 = u64::MAX;

/// What the watchdog of one connection reads.
pub(super) struct ConnState {
    born: Instant,
    /// HTTP/2: reads do not count as activity (PINGs and window updates keep coming); only
    /// requests do.
    pub(super) h2: bool,
    /// Milliseconds since `born` of the last byte read (HTTP/1.1) or the last response
    /// finished.
    pub(super) last_activity: AtomicU64,
    /// Milliseconds since `born` of the first byte of a request head not yet handed to the
    /// service (`NONE` when no head is being read). A new connection starts at 0: its first
    /// request must come within the header timeout.
    pub(super) head_since: AtomicU64,
    /// Requests handed to the service whose response body has not been dropped yet.
    active: AtomicUsize,
    /// Milliseconds since `born` of the last response finished (0: none yet).
    pub(super) last_done: AtomicU64,
    /// Wakes the watchdog when a head starts (its deadline moves earlier).
    pub(super) wake: Notify,
}

impl ConnState {
    pub(super) fn new(h2: bool) -> Self {
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

    pub(super) fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    pub(super) fn on_read(&self) {
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

    pub(super) fn begin_request(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Release);
        ActiveGuard(self.clone())
    }

    pub(super) fn idle(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }

    /// When the connection should be closed if nothing changes; `None` while a request is in
    /// progress (its own timeouts bound it).
    pub(super) fn deadline(&self, limits: &ConnLimits) -> Option<u64> {
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
    pub(super) fn served(&self) -> bool {
        self.head_since.load(Ordering::Acquire) != 0 || !self.idle()
    }
}

/// Held by a response body: the request stays "in progress" until the body is dropped.
pub(super) struct ActiveGuard(Arc<ConnState>);

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
