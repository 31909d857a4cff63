//! One forward pass of each real model, loaded the way the worker loads it
//! (`Manifest::load` → `models::load` on the CPU): all-minilm-l6-v2 embeddings at batch 1 and
//! 32 (one sentence repeated, and 32 sentences of mixed length), and smollm2-135m-instruct's
//! prompt pass (64 tokens) and one decode step. Skipped, with a message, when the model
//! repository has no copy (`scripts/fetch-models.sh` fetches them; `ANYA_MODELS_DIR` names
//! another repository).
//!
//! cargo bench --bench models
//!
//! Compute threads follow candle's default (one per core); `RAYON_NUM_THREADS=1` pins one.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anya::models::{self, Backend, Frontend};
use anya::registry::manifest::Manifest;
use candle_core::Device;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn models_dir() -> PathBuf {
    std::env::var_os("ANYA_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
}

fn load(id: &str) -> Option<(Backend, Frontend)> {
    let dir = models_dir().join(id).join("1.0.0");
    if !dir.join("anya.yaml").exists() {
        eprintln!(
            "models: {id} skipped, {} is absent (run scripts/fetch-models.sh)",
            dir.display()
        );
        return None;
    }
    let manifest = Manifest::load(&dir).expect("manifest");
    Some(models::load(&manifest, Path::new(&dir), &Device::Cpu).expect("model loads"))
}

/// The sentence set of `examples/loadgen.rs` in spirit: plain English, 8 to 40 words.
const SENTENCE: &str = "the model serves a quick brown fox across the river to the city market";

fn embedding(c: &mut Criterion) {
    let Some((Backend::Embedding(mut m), frontend)) = load("all-minilm-l6-v2") else {
        return;
    };
    let codec = frontend.codec.as_ref().expect("a tokenizer");
    let ids = codec.encode(SENTENCE, false).expect("encodes");
    let mut g = c.benchmark_group("forward/all-minilm-l6-v2");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for batch in [1usize, 32] {
        let seqs: Vec<&[u32]> = (0..batch).map(|_| ids.as_slice()).collect();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("embed/batch_{batch}/{}_tokens", ids.len()), |b| {
            b.iter(|| black_box(m.embed(&seqs).expect("embeds")))
        });
    }
    // 32 sentences of 8 to 40 words in mixed order, as dynamic batching of single-sentence
    // requests forms them (a padded forward pass pays for the longest one 32 times).
    let words: Vec<&str> = SENTENCE.split(' ').collect();
    let mixed: Vec<Vec<u32>> = (0..32usize)
        .map(|i| {
            let n = 8 + (i * 13) % 33;
            let text: Vec<&str> = (0..n).map(|k| words[(i + k * 7) % words.len()]).collect();
            codec.encode(&text.join(" "), false).expect("encodes")
        })
        .collect();
    let seqs: Vec<&[u32]> = mixed.iter().map(Vec::as_slice).collect();
    let tokens: usize = seqs.iter().map(|s| s.len()).sum();
    g.throughput(Throughput::Elements(seqs.len() as u64));
    g.bench_function(format!("embed/batch_32/mixed_{tokens}_tokens"), |b| {
        b.iter(|| black_box(m.embed(&seqs).expect("embeds")))
    });
    g.finish();
}

/// 64 words, each one SmolLM2 token (the prompt shape of the generation benchmark).
const PROMPT: &str =
    " the model serves quick brown fox batch queue token vector server request latency \
    river mountain city music garden window engine cloud signal paper light story ocean market \
    bridge the model serves quick brown fox batch queue token vector server request latency river \
    mountain city music garden window engine cloud signal paper light story ocean market bridge \
    the model serves quick brown fox batch queue";

fn generation(c: &mut Criterion) {
    let Some((Backend::Generation(mut lm), frontend)) = load("smollm2-135m-instruct") else {
        return;
    };
    let codec = frontend.codec.as_ref().expect("a tokenizer");
    let prompt = codec.encode(PROMPT, false).expect("encodes");
    let mut g = c.benchmark_group("forward/smollm2-135m-instruct");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    g.bench_function("tokenize_prompt", |b| {
        b.iter(|| black_box(codec.encode(black_box(PROMPT), false).expect("encodes")))
    });
    g.throughput(Throughput::Elements(prompt.len() as u64));
    g.bench_function(format!("prefill/{}_tokens", prompt.len()), |b| {
        b.iter(|| black_box(lm.forward(&prompt, 0).expect("forward")))
    });
    // One decode step after the prompt: the KV cache grows by one position per step, so each
    // sample starts a fresh sequence (untimed) and times `iters` consecutive steps.
    g.throughput(Throughput::Elements(1));
    let room = lm.context_length().saturating_sub(prompt.len() + 1).max(1);
    g.bench_function("decode_step", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                let steps = (iters - done).min(room as u64);
                lm.forward(&prompt, 0).expect("forward");
                let t = Instant::now();
                for k in 0..steps {
                    black_box(
                        lm.forward(&[13], prompt.len() + k as usize)
                            .expect("forward"),
                    );
                }
                total += t.elapsed();
                done += steps;
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, embedding, generation);
criterion_main!(benches);
