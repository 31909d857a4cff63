//! The dynamic batching policy, as plain state: no runtime, no clock of its own.
//!
//! A batch is due when the waiting entries fill it (by count of inputs or by tokens) or when
//! the oldest has waited `max_delay`; until then the caller sleeps until the instant `poll`
//! names. Entries whose client has gone are removed before a batch is formed, so no compute is
//! spent on them. Time is always passed in, so the tests need no clock.
//!
//! Fairness: a large request arrives cut into pieces (`Pending::piece` numbers them), and
//! entries leave in start-time fair order: an entry's tag is the virtual time at its arrival
//! plus its piece number, and the virtual time advances to the tag of each entry taken. So the
//! pieces of concurrent requests interleave, and a small request that arrives behind a queue
//! of large ones runs in the next batch or the one after, whatever is queued. Entries that are
//! not cut (piece 0 each) keep their arrival order.
//!
//! Lanes: background entries (batch jobs, head training) never share a batch with interactive
//! ones and leave only when no interactive entry waits. While interactive requests have arrived
//! within `BACKGROUND_QUIET` a background batch holds at most `BACKGROUND_BUSY_ITEMS` inputs, so
//! an interactive request that arrives during one waits for a few inputs' compute, not a full
//! batch; once interactive traffic has been quiet that long, background batches are full. And
//! a background batch does not start within `BACKGROUND_YIELD` of an interactive arrival (a
//! closed-loop client's next request is on its way), waiting at most `BACKGROUND_MAX_YIELD`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long after the last interactive arrival background batches stay small.
pub const BACKGROUND_QUIET: Duration = Duration::from_secs(1);
/// Most inputs of a background batch while interactive traffic is recent.
pub const BACKGROUND_BUSY_ITEMS: usize = 2;
/// How long after an interactive arrival a background batch waits to start, in case the next
/// interactive request is about to come (a forward pass cannot be interrupted once started)...
pub const BACKGROUND_YIELD: Duration = Duration::from_millis(100);
/// ...but a background entry never waits longer than this for it, so background work always
/// goes on under steady interactive traffic.
pub const BACKGROUND_MAX_YIELD: Duration = Duration::from_millis(300);

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
    /// Which piece of its request this entry is (0 for the first, or a request not cut).
    fn piece(&self) -> usize {
        0
    }
    /// Background work (batch jobs): it leaves only after every interactive entry, filling
    /// what room a batch has left.
    fn background(&self) -> bool {
        false
    }
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
    /// Waiting entries by (lane, tag, arrival number): the order they leave in; lane 0 is
    /// interactive, lane 1 background.
    entries: BTreeMap<(u8, u64, u64), T>,
    items: usize,
    tokens: usize,
    /// The tag of the entry taken last.
    vtime: u64,
    arrivals: u64,
    /// When the latest interactive entry arrived.
    last_interactive: Option<Instant>,
}

impl<T: Pending> BatchQueue<T> {
    pub fn new(policy: BatchPolicy) -> Self {
        Self {
            policy,
            entries: BTreeMap::new(),
            items: 0,
            tokens: 0,
            vtime: 0,
            arrivals: 0,
            last_interactive: None,
        }
    }

    pub fn push(&mut self, entry: T) {
        self.items += entry.items();
        self.tokens += entry.tokens();
        let tag = self.vtime + entry.piece() as u64;
        self.arrivals += 1;
        let lane = u8::from(entry.background());
        if lane == 0 {
            let at = entry.enqueued();
            self.last_interactive = Some(self.last_interactive.map_or(at, |l| l.max(at)));
        }
        self.entries.insert((lane, tag, self.arrivals), entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Take out the entries whose client has gone; returns them (to be counted and dropped).
    pub fn remove_cancelled(&mut self) -> Vec<T> {
        let keys: Vec<(u8, u64, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.is_cancelled())
            .map(|(k, _)| *k)
            .collect();
        let mut gone = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(e) = self.entries.remove(&k) {
                self.items -= e.items();
                self.tokens -= e.tokens();
                gone.push(e);
            }
        }
        gone
    }

    pub fn poll(&self, now: Instant) -> Next {
        let Some(oldest) = self.entries.values().min_by_key(|e| e.enqueued()) else {
            return Next::Idle;
        };
        // Only background entries wait and an interactive request arrived a moment ago: the
        // next one may be on its way (a closed-loop client sends it as soon as it has its
        // answer), so the background batch yields, for at most `BACKGROUND_MAX_YIELD`.
        let background_only = self.entries.keys().next().is_some_and(|k| k.0 == 1);
        if let (true, Some(at)) = (background_only, self.last_interactive) {
            let until = (at + BACKGROUND_YIELD).min(oldest.enqueued() + BACKGROUND_MAX_YIELD);
            if now < until {
                return Next::WaitUntil(until);
            }
        }
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

    /// The next batch: entries in fair order while they fit both limits; always at least one
    /// (an entry larger than a batch runs alone, and the worker splits it).
    pub fn take_batch(&mut self) -> Vec<T> {
        self.take_batch_at(Instant::now())
    }

    /// `take_batch` at `now` (which decides whether interactive traffic is recent).
    pub fn take_batch_at(&mut self, now: Instant) -> Vec<T> {
        let mut batch = Vec::new();
        let (mut items, mut tokens) = (0usize, 0usize);
        let Some(&(first_lane, _, _)) = self.entries.keys().next() else {
            return batch;
        };
        let busy = self
            .last_interactive
            .is_some_and(|at| now.saturating_duration_since(at) < BACKGROUND_QUIET);
        let max_items = if first_lane == 1 && busy {
            BACKGROUND_BUSY_ITEMS.min(self.policy.max_batch_size)
        } else {
            self.policy.max_batch_size
        };
        while let Some((&(lane, _, _), next)) = self.entries.first_key_value() {
            let fits = items + next.items() <= max_items
                && tokens + next.tokens() <= self.policy.max_batch_tokens;
            if lane != first_lane || (!batch.is_empty() && !fits) {
                break;
            }
            let Some(((lane, tag, _), e)) = self.entries.pop_first() else {
                break;
            };
            if lane == 0 {
                self.vtime = self.vtime.max(tag);
            }
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
        piece: usize,
        name: &'static str,
        background: bool,
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
        fn piece(&self) -> usize {
            self.piece
        }
        fn background(&self) -> bool {
            self.background
        }
    }

    fn e(items: usize, tokens: usize, at: Instant) -> E {
        E {
            items,
            tokens,
            at,
            gone: Cell::new(false),
            piece: 0,
            name: "",
            background: false,
        }
    }

    /// A request of `pieces` pieces of `items` inputs each, as `infer` cuts it.
    fn request(
        q: &mut BatchQueue<E>,
        name: &'static str,
        pieces: usize,
        items: usize,
        at: Instant,
    ) {
        for piece in 0..pieces {
            q.push(E {
                piece,
                name,
                ..e(items, items * 10, at)
            });
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
        for e in q.entries.values().take(2) {
            e.gone.set(true);
        }
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

    #[test]
    fn pieces_of_concurrent_requests_interleave() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(32, 100_000, 0));
        // four clients with 256 inputs each, cut into pieces of 8
        for name in ["a", "b", "c", "d"] {
            request(&mut q, name, 32, 8, t0);
        }
        let first: Vec<&str> = q.take_batch().iter().map(|e| e.name).collect();
        assert_eq!(first, vec!["a", "b", "c", "d"], "one piece of each");
        let second: Vec<&str> = q.take_batch().iter().map(|e| e.name).collect();
        assert_eq!(second, vec!["a", "b", "c", "d"]);
    }

    #[test]
    fn a_small_request_overtakes_queued_large_ones() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(32, 100_000, 0));
        for name in ["a", "b", "c", "d"] {
            request(&mut q, name, 32, 8, t0);
        }
        q.take_batch();
        q.take_batch();
        // 240 inputs of the large requests still wait; one sentence arrives
        request(&mut q, "small", 1, 1, t0 + Duration::from_millis(5));
        let mut batches = 0;
        loop {
            batches += 1;
            let b = q.take_batch();
            assert!(!b.is_empty());
            if b.iter().any(|e| e.name == "small") {
                break;
            }
        }
        assert!(batches <= 2, "the small request waited {batches} batches");
    }

    #[test]
    fn one_cut_request_alone_still_fills_batches() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(32, 100_000, 0));
        request(&mut q, "a", 32, 8, t0);
        for _ in 0..8 {
            let b = q.take_batch();
            assert_eq!(b.iter().map(|e| e.items).sum::<usize>(), 32);
        }
        assert!(q.is_empty());
    }

    #[test]
    fn background_work_waits_for_interactive_work_and_stays_small_while_it_is_recent() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(8, 100_000, 0));
        let job = |q: &mut BatchQueue<E>, n: usize| {
            for piece in 0..n {
                q.push(E {
                    piece,
                    name: "job",
                    background: true,
                    ..e(1, 10, t0)
                });
            }
        };
        job(&mut q, 14);
        // Interactive requests arriving later leave first, alone in their batch.
        request(&mut q, "a", 1, 2, t0 + Duration::from_millis(5));
        request(&mut q, "b", 1, 3, t0 + Duration::from_millis(6));
        let at = t0 + Duration::from_millis(10);
        let first: Vec<&str> = q.take_batch_at(at).iter().map(|e| e.name).collect();
        assert_eq!(first, vec!["a", "b"]);
        // Interactive traffic is recent: background batches are small.
        let second = q.take_batch_at(at);
        assert_eq!(second.len(), BACKGROUND_BUSY_ITEMS);
        assert!(second.iter().all(|e| e.background));
        request(&mut q, "c", 1, 1, t0 + Duration::from_millis(20));
        let third: Vec<&str> = q.take_batch_at(at).iter().map(|e| e.name).collect();
        assert_eq!(third, vec!["c"]);
        // A second after the last interactive arrival, background batches are full again.
        let quiet = t0 + Duration::from_millis(20) + BACKGROUND_QUIET;
        assert_eq!(q.take_batch_at(quiet).len(), 8);
        assert_eq!(q.take_batch_at(quiet).len(), 14 - BACKGROUND_BUSY_ITEMS - 8);
        assert!(q.is_empty());
    }

    #[test]
    fn background_batches_yield_to_recent_interactive_traffic_for_a_bounded_time() {
        let t0 = Instant::now();
        let mut q = BatchQueue::new(policy(8, 10_000, 2));
        let bg = |name, at| E {
            name,
            background: true,
            ..e(1, 10, at)
        };
        // No interactive traffic yet: a background entry is due after max_delay, as any.
        q.push(bg("j1", t0));
        assert_eq!(q.poll(t0 + Duration::from_millis(5)), Next::Ready);
        assert_eq!(q.take_batch_at(t0 + Duration::from_millis(5)).len(), 1);
        // An interactive request came and went at t0 + 10 ms: a background entry queued at
        // t0 + 20 ms waits until t0 + 110 ms, in case the next interactive one is coming...
        request(&mut q, "a", 1, 1, t0 + Duration::from_millis(10));
        assert_eq!(q.take_batch_at(t0 + Duration::from_millis(10)).len(), 1);
        q.push(bg("j2", t0 + Duration::from_millis(20)));
        assert_eq!(
            q.poll(t0 + Duration::from_millis(25)),
            Next::WaitUntil(t0 + Duration::from_millis(10) + BACKGROUND_YIELD)
        );
        // ...and it does: the interactive request leaves first.
        request(&mut q, "b", 1, 1, t0 + Duration::from_millis(40));
        let next: Vec<&str> = q
            .take_batch_at(t0 + Duration::from_millis(45))
            .iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(next, vec!["b"]);
        // Under steady interactive traffic the background entry still starts once it has
        // waited BACKGROUND_MAX_YIELD.
        let late = t0 + Duration::from_millis(20) + BACKGROUND_MAX_YIELD;
        request(&mut q, "c", 1, 1, late - Duration::from_millis(1));
        assert_eq!(q.take_batch_at(late).len(), 1); // c
        assert_eq!(q.poll(late), Next::Ready);
        assert_eq!(
            q.take_batch_at(late)
                .iter()
                .map(|e| e.name)
                .collect::<Vec<_>>(),
            vec!["j2"]
        );
        // Quiet for longer than the yield: no wait at all.
        q.push(bg("j3", late + BACKGROUND_YIELD));
        assert_eq!(q.poll(late + BACKGROUND_YIELD * 2), Next::Ready);
    }
}
