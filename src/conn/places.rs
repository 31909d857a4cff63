//! The open-connection places every listener shares, and their number: `server.max_connections`
//! clamped to the open-file limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// The open-connection places every listener of the server shares.
#[derive(Debug)]
pub struct Places {
    free: Arc<Semaphore>,
    /// Accept loops waiting for a place now.
    waiting: AtomicUsize,
    /// Bumped when an accept loop starts to wait: idle connections look at `waiting` then.
    pub(super) pressure: watch::Sender<u64>,
}

/// How long a connection must have been without a request before it is closed to make room: a
/// client that has just connected gets this long to send its request.
pub(super) const RECLAIM_GRACE: Duration = Duration::from_millis(200);

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
    pub(super) async fn take(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.free.clone().try_acquire_owned() {
            return Some(p);
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        self.pressure.send_modify(|n| *n = n.wrapping_add(1));
        self.free.clone().acquire_owned().await.ok()
    }

    /// Whether a client waits for a place.
    pub(super) fn wanted(&self) -> bool {
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
pub(super) fn clamp_to_nofile(configured: usize, nofile: u64) -> usize {
    let reserve = (nofile / 8).max(64);
    let room = nofile.saturating_sub(reserve).max(1);
    configured
        .min(usize::try_from(room).unwrap_or(usize::MAX))
        .max(1)
}
