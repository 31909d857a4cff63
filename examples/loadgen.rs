//! A small closed-loop load generator for anya's predict API that also reads what the server
//! says about each request (`metadata.batch_size`), which oha and wrk cannot.
//!
//! cargo run --release --example loadgen -- URL CONCURRENCY REQUESTS [BODY_JSON]
//! e.g. cargo run --release --example loadgen -- \
//!        http://127.0.0.1:8000/models/all-minilm-l6-v2/predict 32 2000
//! Each request embeds one sentence from a fixed, seeded set unless BODY_JSON is given.
//! Prints one JSON line: requests/s, latency percentiles, errors, and batch sizes seen.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORDS: &[&str] = &[
    "the", "model", "serves", "quick", "brown", "fox", "batch", "queue", "token", "vector",
    "server", "request", "latency", "river", "mountain", "city", "music", "garden", "window",
    "engine", "cloud", "signal", "paper", "light", "story", "ocean", "market", "bridge",
];

fn sentence(i: usize) -> String {
    // A deterministic pseudo-random sentence of 8 to 40 words.
    let mut x = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^= x >> 33;
        x
    };
    let n = 8 + (next() % 33) as usize;
    (0..n)
        .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: loadgen URL CONCURRENCY REQUESTS [BODY_JSON]");
        std::process::exit(2);
    }
    let url = args[1].clone();
    let concurrency: usize = args[2].parse().expect("concurrency");
    let total: usize = args[3].parse().expect("requests");
    let fixed_body: Option<serde_json::Value> = args
        .get(4)
        .map(|b| serde_json::from_str(b).expect("body json"));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next, fixed_body) = (
            client.clone(),
            url.clone(),
            next.clone(),
            fixed_body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut batches: BTreeMap<u64, usize> = BTreeMap::new();
            let mut errors: BTreeMap<u16, usize> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = fixed_body
                    .clone()
                    .unwrap_or_else(|| serde_json::json!({"inputs": [sentence(i)]}));
                let t = Instant::now();
                match client.post(&url).json(&body).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let v: serde_json::Value = r.json().await.unwrap_or_default();
                        lat.push(t.elapsed());
                        if status == 200 {
                            let b = v["metadata"]["batch_size"].as_u64().unwrap_or(0);
                            *batches.entry(b).or_default() += 1;
                        } else {
                            *errors.entry(status).or_default() += 1;
                        }
                    }
                    Err(_) => *errors.entry(0).or_default() += 1,
                }
            }
            (lat, batches, errors)
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    let mut batches: BTreeMap<u64, usize> = BTreeMap::new();
    let mut errors: BTreeMap<u16, usize> = BTreeMap::new();
    for t in tasks {
        let (l, b, e) = t.await.unwrap();
        lat.extend(l);
        for (k, v) in b {
            *batches.entry(k).or_default() += v;
        }
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0)
    };
    let ok: usize = batches.values().sum();
    let mean_batch = batches
        .iter()
        .map(|(k, v)| *k as f64 * *v as f64)
        .sum::<f64>()
        / ok.max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "url": url, "concurrency": concurrency, "requests": total, "ok": ok,
            "errors": errors, "seconds": elapsed, "rps": ok as f64 / elapsed,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "mean_batch_size": mean_batch, "batch_sizes": batches,
        })
    );
}
