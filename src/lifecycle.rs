//! The process's life as the load balancer sees it: serving, then draining after SIGTERM.
//!
//! While draining, `/ready` answers 503 at once (so the endpoints controller takes the pod out),
//! new work is refused with 503, and requests already in flight finish; `drained()` resolves
//! when none are left.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    changed: Notify,
}

/// Counts one request in flight for as long as it lives.
pub struct InFlight<'a>(&'a Lifecycle);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// `InFlight` that owns its handle on the lifecycle, for a response body that outlives the
/// handler (a stream).
pub struct InFlightOwned(std::sync::Arc<Lifecycle>);

impl Drop for InFlightOwned {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

impl Lifecycle {
    /// Count a request in flight until the returned value is dropped.
    pub fn enter_owned(self: &std::sync::Arc<Self>) -> InFlightOwned {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlightOwned(self.clone())
    }

    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }

    /// Resolves once draining has started.
    pub async fn until_draining(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_draining() {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once no request is in flight.
    pub async fn drained(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn drained_waits_for_the_last_request() {
        let l = Arc::new(Lifecycle::new());
        l.drained().await; // nothing in flight: at once
        let l2 = l.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let held = tokio::spawn(async move {
            let _g = l2.enter();
            let _ = rx.await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(l.in_flight(), 1);
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.drained().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        tx.send(()).unwrap();
        held.await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(l.in_flight(), 0);
    }
}
