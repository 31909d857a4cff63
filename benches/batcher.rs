//! The batching policy (`engine::batcher::BatchQueue`) on its own: what forming a batch costs
//! the batcher task per request, with no runtime, no model and no clock of its own.
//!
//! cargo bench --bench batcher

use std::cell::Cell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anya::engine::batcher::{BatchPolicy, BatchQueue, Pending};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

struct Entry {
    tokens: usize,
    at: Instant,
    gone: Cell<bool>,
}

impl Pending for Entry {
    fn items(&self) -> usize {
        1
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

/// all-minilm-l6-v2's manifest: 32 inputs, 8192 tokens, 2 ms.
fn policy() -> BatchPolicy {
    BatchPolicy {
        max_batch_size: 32,
        max_batch_tokens: 8192,
        max_delay: Duration::from_millis(2),
    }
}

fn entries(n: usize, t0: Instant) -> Vec<Entry> {
    (0..n)
        .map(|i| Entry {
            tokens: 8 + (i * 7) % 40,
            at: t0,
            gone: Cell::new(false),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("batcher");
    for n in [1usize, 32, 256] {
        g.throughput(Throughput::Elements(n as u64));
        // The batcher's steady state: entries arrive, the queue is polled, batches are taken
        // until it is empty.
        g.bench_function(format!("push_poll_take/{n}"), |b| {
            let t0 = Instant::now();
            b.iter_batched(
                || entries(n, t0),
                |es| {
                    let mut q = BatchQueue::new(policy());
                    for e in es {
                        q.push(e);
                    }
                    let mut taken = 0;
                    while !q.is_empty() {
                        black_box(q.poll(t0 + Duration::from_millis(3)));
                        taken += q.take_batch().len();
                    }
                    taken
                },
                BatchSize::SmallInput,
            )
        });
        // Dropping the entries whose client left (every fourth here) before a batch forms.
        g.bench_function(format!("remove_cancelled/{n}"), |b| {
            let t0 = Instant::now();
            b.iter_batched(
                || {
                    let mut q = BatchQueue::new(policy());
                    for (i, e) in entries(n, t0).into_iter().enumerate() {
                        e.gone.set(i % 4 == 0);
                        q.push(e);
                    }
                    q
                },
                |mut q| black_box(q.remove_cancelled().len()),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
