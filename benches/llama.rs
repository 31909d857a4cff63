//! smollm2-135m-instruct on the CPU: our forward pass (`CpuLlama`, the one the server runs)
//! against candle's quantized llama on the same GGUF, in the same run: prompt pass (64-token
//! prompt), one decode step, and one step of 8 sequences decoding together (continuous
//! batching; candle's model holds one sequence, so it has no such case). Skipped, with a
//! message, without the model (`scripts/fetch-models.sh`).
//!
//! cargo bench --bench llama
//!
//! Compute threads: one per core; `RAYON_NUM_THREADS=1` pins one.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anya::models::llama::GgufLlama;
use anya::models::llama_cpu::CpuLlama;
use anya::models::{compute_threads, CausalLm, Chunk};
use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn gguf() -> Option<PathBuf> {
    let dir = std::env::var_os("ANYA_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
        .join("smollm2-135m-instruct/1.0.0/SmolLM2-135M-Instruct.Q4_1.gguf");
    if dir.exists() {
        Some(dir)
    } else {
        eprintln!(
            "llama: skipped, {} is absent (run scripts/fetch-models.sh)",
            dir.display()
        );
        None
    }
}

/// 64 token ids of ordinary text (any ids below the vocabulary size do for timing).
fn prompt() -> Vec<u32> {
    (0..64u32).map(|i| 300 + (i * 7919) % 40_000).collect()
}

/// Time `iters` decode steps after a fresh prompt pass, restarting when the context fills.
fn decode_steps(lm: &mut dyn CausalLm, slots: usize, iters: u64) -> Duration {
    let p = prompt();
    let mut total = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        for s in 0..slots {
            lm.step(&[Chunk {
                slot: s,
                start: 0,
                tokens: &p,
                logits: false,
            }])
            .expect("prompt");
        }
        let steps = (iters - done).min(256);
        let tok = [13u32];
        let t = Instant::now();
        for k in 0..steps as usize {
            let chunks: Vec<Chunk> = (0..slots)
                .map(|s| Chunk {
                    slot: s,
                    start: p.len() + k,
                    tokens: &tok,
                    logits: true,
                })
                .collect();
            black_box(lm.step(&chunks).expect("step"));
        }
        total += t.elapsed();
        done += steps;
    }
    total
}

fn llama(c: &mut Criterion) {
    let Some(path) = gguf() else { return };
    let mut ours = CpuLlama::open(&path, 8, compute_threads()).expect("loads");
    let mut theirs = GgufLlama::open_candle(&path, &Device::Cpu).expect("loads");
    eprintln!("llama: CpuLlama kernel {}", ours.kernel().name());
    let p = prompt();
    let mut g = c.benchmark_group("llama/smollm2-135m-instruct");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Elements(p.len() as u64));
    g.bench_function("prefill_64/ours", |b| {
        b.iter(|| black_box(ours.forward(&p, 0).expect("forward")))
    });
    g.bench_function("prefill_64/candle", |b| {
        b.iter(|| black_box(theirs.forward(&p, 0).expect("forward")))
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode/ours", |b| {
        b.iter_custom(|iters| decode_steps(&mut ours, 1, iters))
    });
    g.bench_function("decode/candle", |b| {
        b.iter_custom(|iters| decode_steps(&mut theirs, 1, iters))
    });
    g.throughput(Throughput::Elements(8));
    g.bench_function("decode_8_sequences/ours", |b| {
        b.iter_custom(|iters| decode_steps(&mut ours, 8, iters))
    });
    g.finish();
}

criterion_group!(benches, llama);
criterion_main!(benches);
