//! all-MiniLM-L6-v2 throughput, old against new in the same run: candle-transformers'
//! `BertModel` over padded batches (`BertEmbedder::load_candle`, what the CPU ran before) and
//! the padding-free CPU forward pass (`BertEmbedder::load`, what the worker loads now), at
//! batch 1, 8 and 32 over deterministic sentences of 8 to 40 words (≈ 12 to 55 tokens) in mixed
//! order. The two are timed in alternating rounds (which goes first alternates too), so a noisy,
//! shared machine slows both alike.
//!
//! ```text
//! cargo run --release --example embed_speed [-- ROUNDS [old|new [BATCH]]]
//! ```
//!
//! With `old` or `new`, only that path runs (at batch `BATCH`, default 32, `ROUNDS` times over
//! the sentences), for a profiler.
//!
//! `ANYA_MODELS_DIR` names another model repository; `RAYON_NUM_THREADS` pins the threads;
//! `EMBED_SET=uniform` swaps the mixed-length sentences for 16-word ones (about 18 tokens).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anya::models::bert::{BertEmbedder, Pooling};
use anya::models::{Embedder, TextCodec};
use candle_core::Device;

const WORDS: &[&str] = &[
    "the",
    "model",
    "serves",
    "a",
    "quick",
    "brown",
    "fox",
    "across",
    "river",
    "to",
    "city",
    "market",
    "every",
    "morning",
    "while",
    "engineers",
    "measure",
    "latency",
    "and",
    "throughput",
    "of",
    "their",
    "servers",
    "under",
    "heavy",
    "load",
    "with",
    "many",
    "small",
    "requests",
    "music",
    "garden",
    "window",
    "cloud",
    "signal",
    "paper",
    "light",
    "story",
    "ocean",
    "bridge",
    "mountain",
    "embedding",
    "vectors",
    "search",
    "documents",
    "quietly",
    "because",
    "nobody",
    "remembered",
    "unbelievable",
];

/// Sentence `i`: 8 to 40 words, deterministic; with `uniform`, 16 words (about 18 tokens), the
/// "uniform" set of `scripts/bench/ort_embed.py` (same generator).
fn sentence(i: u64, uniform: bool) -> String {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let n = 8 + (next() % 33) as usize;
    let n = if uniform { 16 } else { n };
    (0..n)
        .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

/// Embed all of `seqs` in chunks of `batch`; the time taken and the vectors.
fn run(m: &mut BertEmbedder, seqs: &[Vec<u32>], batch: usize) -> (Duration, Vec<Vec<f32>>) {
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let t = Instant::now();
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in refs.chunks(batch) {
        out.extend(m.embed(chunk).expect("embeds"));
    }
    (t.elapsed(), out)
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS is a number"))
        .unwrap_or(5);
    let dir = std::env::var_os("ANYA_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
        .join("all-minilm-l6-v2/1.0.0");
    let codec = TextCodec::from_file(&dir.join("tokenizer.json"), true, 256).expect("tokenizer");
    let (w, c) = (dir.join("model.safetensors"), dir.join("config.json"));
    let cpu = Device::Cpu;
    let mut old = BertEmbedder::load_candle(&w, &c, Pooling::Mean, true, &cpu).expect("loads");
    let mut new = BertEmbedder::load(&w, &c, Pooling::Mean, true, &cpu).expect("loads");

    // EMBED_SET=uniform: the 16-word set instead of the mixed-length one.
    let uniform = std::env::var("EMBED_SET").is_ok_and(|v| v == "uniform");
    let seqs: Vec<Vec<u32>> = (0..128)
        .map(|i| codec.encode(&sentence(i, uniform), false).expect("encodes"))
        .collect();
    if let Some(only) = std::env::args().nth(2) {
        let m = match only.as_str() {
            "old" => &mut old,
            "new" => &mut new,
            other => panic!("{other}: old or new"),
        };
        let batch: usize = std::env::args()
            .nth(3)
            .map(|a| a.parse().expect("BATCH is a number"))
            .unwrap_or(32);
        let mut t = Duration::ZERO;
        for _ in 0..rounds {
            t += run(m, &seqs, batch).0;
        }
        let n = (seqs.len() * rounds) as f64;
        println!(
            "{only}: {:.1} sentences/s at batch {batch}",
            n / t.as_secs_f64()
        );
        return;
    }
    let tokens: usize = seqs.iter().map(|s| s.len()).sum();
    let (lo, hi) = seqs.iter().fold((usize::MAX, 0), |(lo, hi), s| {
        (lo.min(s.len()), hi.max(s.len()))
    });
    println!(
        "{} sentences, {lo} to {hi} tokens (mean {:.1}); {rounds} rounds per batch size; \
         threads: {}",
        seqs.len(),
        tokens as f64 / seqs.len() as f64,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
    );

    // Warm up both (allocator, thread pool) and check they agree.
    let (_, a) = run(&mut old, &seqs, 32);
    let (_, b) = run(&mut new, &seqs, 32);
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| cosine(x, y))
        .fold(1.0f32, f32::min);
    println!("lowest cosine old vs new: {worst:.7}");
    // Both against sentence-transformers' vectors (tests/fixtures, as the fidelity test uses).
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embeddings_reference.json");
    if let Ok(text) = std::fs::read_to_string(&fixture) {
        let v: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
        let sentences: Vec<Vec<u32>> = v["sentences"]
            .as_array()
            .expect("sentences")
            .iter()
            .map(|s| {
                codec
                    .encode(s.as_str().expect("text"), false)
                    .expect("encodes")
            })
            .collect();
        let want: Vec<Vec<f32>> = serde_json::from_value(v["embeddings"].clone()).expect("vecs");
        for (name, m) in [("old", &mut old), ("new", &mut new)] {
            let (_, batched) = run(m, &sentences, 32);
            let (_, alone) = run(m, &sentences, 1);
            let low = |got: &[Vec<f32>]| {
                got.iter()
                    .zip(&want)
                    .map(|(g, w)| cosine(g, w))
                    .fold(1.0f32, f32::min)
            };
            println!(
                "{name}: lowest cosine to sentence-transformers over {} sentences: {:.7} batched, \
                 {:.7} alone",
                want.len(),
                low(&batched),
                low(&alone)
            );
        }
    }

    println!(
        "{:>5} {:>14} {:>14} {:>7}   (median of the rounds' rates; total over all rounds)",
        "batch", "old sent/s", "new sent/s", "new/old"
    );
    for batch in [1usize, 8, 32] {
        // Batch 1 is slow on the old path: fewer sentences keep the run short.
        let set = if batch == 1 { &seqs[..32] } else { &seqs[..] };
        let (mut r_old, mut r_new) = (Vec::new(), Vec::new());
        let rate = |t: Duration| set.len() as f64 / t.as_secs_f64();
        for r in 0..rounds {
            if r % 2 == 0 {
                r_old.push(rate(run(&mut old, set, batch).0));
                r_new.push(rate(run(&mut new, set, batch).0));
            } else {
                r_new.push(rate(run(&mut new, set, batch).0));
                r_old.push(rate(run(&mut old, set, batch).0));
            }
        }
        // Total rate: sentences over the summed time.
        let total = |r: &[f64]| r.len() as f64 / r.iter().map(|x| 1.0 / x).sum::<f64>();
        let (to, tn) = (total(&r_old), total(&r_new));
        let (mo, mn) = (median(&mut r_old), median(&mut r_new));
        println!(
            "{batch:>5} {mo:>14.1} {mn:>14.1} {:>6.2}x   (total {to:.1} / {tn:.1}: {:.2}x)",
            mn / mo,
            tn / to
        );
    }
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}
