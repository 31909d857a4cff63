//! The dynamic batching policy, as plain state: no runtime, no clock of its own.
//!
//! Entries wait in FIFO order. A batch is due when the waiting entries fill it (by count of
//! inputs or by tokens) or when the oldest has waited `max_delay`; until then the caller sleeps
//! until the instant `poll` names. Entries whose client has gone are removed before a batch is
//! formed, so no compute is spent on them. Time is always passed in, so the tests need no clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most inputs in one batch.
    pub max_batch_size: usize,
    /// Most tokens in one batch.
    pub max_batch_tokens: usize,
    /// Longest the oldest entry waits for company.
    pub max_delay: Duration,
}

/// What the batcher queues.
pub trait Pending {
    /// Inputs this entry adds to a batch.
    fn items(&self) -> usize;
    fn tokens(&self) -> usize;
    fn enqueued(&self) -> Instant;
    /// True once nobody waits for the answer.
    fn is_cancelled(&self) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing waits.
    Idle,
    /// Form a batch now.
    Ready,
    /// Nothing is due before this instant (unless more entries arrive).
    WaitUntil(Instant),
}

#[derive(Debug)]
pub struct BatchQueue<T> {
    policy: BatchPolicy,
    entries: VecDeque<T>,
    items: usize,
    tokens: usize,
}

impl<T: Pending> BatchQueue<T> {
    pub fn new(policy: BatchPolicy) -> Self {
        Self {
            policy,
            entries: VecDeque::new(),
            items: 0,
            tokens: 0,
        }
    }

    pub fn push(&mut self, entry: T) {
        self.items += entry.items();
        self.tokens += entry.tokens();
        self.entries.push_back(entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Take out the entries whose client has gone; returns them (to be counted and dropped).
    pub fn remove_cancelled(&mut self) -> Vec<T> {
        let mut gone = Vec::new();
        let mut kept = VecDeque::with_capacity(self.entries.len());
        for e in self.entries.drain(..) {
            if e.is_cancelled() {
                self.items -= e.items();
                self.tokens -= e.tokens();
                gone.push(e);
            } else {
                kept.push_back(e);
            }
        }
        self.entries = kept;
        gone
    }

    pub fn poll(&self, now: Instant) -> Next {
        let Some(oldest) = self.entries.front() else {
            return Next::Idle;
        };
        if self.items >= self.policy.max_batch_size || self.tokens >= self.policy.max_batch_tokens {
            return Next::Ready;
        }
        let due = oldest.enqueued() + self.policy.max_delay;
        if now >= due {
            Next::Ready
        } else {
            Next::WaitUntil(due)
        }
    }

    /// The next batch: entries in arrival order while they fit both limits; always at least
    /// one (an entry larger than a batch runs alone, and the worker splits it).
    pub fn take_batch(&mut self) -> Vec<T> {
        let mut batch = Vec::new();
        let (mut items, mut tokens) = (0usize, 0usize);
        while let Some(next) = self.entries.front() {
            let fits = items + next.items() <= self.policy.max_batch_size
                && tokens + next.tokens() <= self.policy.max_batch_tokens;
            if !batch.is_empty() && !fits {
                break;
            }
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            items += e.items();
            tokens += e.tokens();
            batch.push(e);
        }
        self.items -= items;
        self.tokens -= tokens;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct E {
        items: usize,
        tokens: usize,
        at: Instant,
        gone: Cell<bool>,
    }

    impl Pending for E {
        fn items(&self) -> usize {
            self.items
        }
        fn tokens(&self) -> usize {
            self.tokens
        }
        fn enqueued(&self) -> Instant {
            self.at
        }
        fn is_cancelled(&self) -> bool {
            self.gone.get()
        }
    }

    fn e(items: usize, tokens: usize, at: Instant) -> E {
        E {
            items,
            tokens,
            at,
            gone: Cell::new(false),
        }
    }

    fn policy(size: usize, tokens: usize, delay_ms: u64) -> BatchPolicy {
        BatchPolicy {
            max_batch_size: size,
            max_batch_tokens: tokens,
            max_delay: Duration::from_millis(delay_ms),
        }
    }

    #[test]
    fn empty_is_idle() {
        let q: BatchQueue<E> = BatchQueue::new(policy(4, 100, 5));
        assert_eq!(q.poll(Instant::now()), Next::Idle);
    }

    #[test]
    fn waits_for_the_oldest_deadline_then_fires() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(4, 100, 5));
        q.push(e(1, 10, t0));
        q.push(e(1, 10, t0 + Duration::from_millis(3)));
        assert_eq!(
            q.poll(t0 + Duration::from_millis(1)),
            Next::WaitUntil(t0 + Duration::from_millis(5))
        );
        assert_eq!(q.poll(t0 + Duration::from_millis(5)), Next::Ready);
        assert_eq!(q.take_batch().len(), 2);
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_batch_fires_at_once_and_takes_only_what_fits() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(3, 1000, 1000));
        for _ in 0..5 {
            q.push(e(1, 10, t0));
        }
        assert_eq!(q.poll(t0), Next::Ready);
        assert_eq!(q.take_batch().len(), 3);
        // two left: not full, not yet due
        assert!(matches!(q.poll(t0), Next::WaitUntil(_)));
        assert_eq!(q.take_batch().len(), 2);
    }

    #[test]
    fn token_budget_limits_a_batch() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(32, 100, 1000));
        q.push(e(1, 60, t0));
        assert!(matches!(q.poll(t0), Next::WaitUntil(_)));
        q.push(e(1, 60, t0));
        assert_eq!(q.poll(t0), Next::Ready, "120 tokens reach the budget");
        assert_eq!(q.take_batch().len(), 1, "the second would pass the budget");
        assert_eq!(q.take_batch().len(), 1);
    }

    #[test]
    fn an_oversized_entry_still_runs_alone() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(4, 100, 1000));
        q.push(e(10, 500, t0));
        q.push(e(1, 1, t0));
        assert_eq!(q.poll(t0), Next::Ready);
        let b = q.take_batch();
        assert_eq!((b.len(), b[0].items), (1, 10));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn cancelled_entries_are_removed_and_accounted() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(2, 1000, 1000));
        q.push(e(1, 1, t0));
        q.push(e(1, 1, t0));
        q.push(e(1, 1, t0));
        q.entries[0].gone.set(true);
        q.entries[1].gone.set(true);
        assert_eq!(q.remove_cancelled().len(), 2);
        // one live entry left: no longer a full batch
        assert!(matches!(q.poll(t0), Next::WaitUntil(_)));
        assert_eq!(q.take_batch().len(), 1);
        assert_eq!(q.poll(t0), Next::Idle);
    }

    #[test]
    fn fifo_order_is_kept() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(8, 1000, 0));
        for i in 0..4 {
            q.push(e(1, i + 1, t0));
        }
        let toks: Vec<usize> = q.take_batch().iter().map(|e| e.tokens).collect();
        assert_eq!(toks, vec![1, 2, 3, 4]);
    }
}
