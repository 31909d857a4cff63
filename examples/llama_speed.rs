//! Quick figures for our CPU llama on a GGUF: prompt tokens/s (64-token prompt) and decode
//! tokens/s for 1 and 8 sequences, three rounds each.
//!
//! cargo run --release --example llama_speed -- models/smollm2-135m-instruct/1.0.0/SmolLM2-135M-Instruct.Q4_1.gguf [THREADS]

use std::time::Instant;

use anya::models::llama_cpu::CpuLlama;
use anya::models::{compute_threads, CausalLm, Chunk};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: llama_speed GGUF [THREADS]"))?;
    let threads = match args.next() {
        Some(t) => t.parse()?,
        None => compute_threads(),
    };
    let mut lm = CpuLlama::open(std::path::Path::new(&path), 8, threads)?;
    let prompt: Vec<u32> = (0..64u32).map(|i| 300 + (i * 7919) % 40_000).collect();
    if let Some(steps) = std::env::var("PROFILE_STEPS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        // For callgrind: the 64-token prompt into PROFILE_SEQS slots (default 1), then
        // PROFILE_STEPS decode steps of all of them together (0: the prefill alone).
        let seqs: usize = std::env::var("PROFILE_SEQS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        for s in 0..seqs {
            lm.step(&[Chunk {
                slot: s,
                start: 0,
                tokens: &prompt,
                logits: true,
            }])?;
        }
        let tok = [13u32];
        for k in 0..steps {
            let chunks: Vec<Chunk> = (0..seqs)
                .map(|s| Chunk {
                    slot: s,
                    start: prompt.len() + k,
                    tokens: &tok,
                    logits: true,
                })
                .collect();
            lm.step(&chunks)?;
        }
        return Ok(());
    }
    if std::env::var_os("DECODE_ONLY").is_some() {
        // For profiling the decode step alone.
        lm.forward(&prompt, 0)?;
        let t = Instant::now();
        for k in 0..400 {
            lm.forward(&[13], prompt.len() + k)?;
        }
        println!("decode {:.1} tok/s", 400.0 / t.elapsed().as_secs_f64());
        return Ok(());
    }
    for _ in 0..3 {
        let t = Instant::now();
        lm.forward(&prompt, 0)?;
        let pp = prompt.len() as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for k in 0..64 {
            lm.forward(&[13], prompt.len() + k)?;
        }
        let tg = 64.0 / t.elapsed().as_secs_f64();
        let mut batched = Vec::new();
        for seqs in [4usize, 8] {
            for s in 0..seqs {
                lm.step(&[Chunk {
                    slot: s,
                    start: 0,
                    tokens: &prompt,
                    logits: false,
                }])?;
            }
            let t = Instant::now();
            let tok = [13u32];
            for k in 0..32 {
                let chunks: Vec<Chunk> = (0..seqs)
                    .map(|s| Chunk {
                        slot: s,
                        start: prompt.len() + k,
                        tokens: &tok,
                        logits: true,
                    })
                    .collect();
                lm.step(&chunks)?;
            }
            batched.push(seqs as f64 * 32.0 / t.elapsed().as_secs_f64());
        }
        let (tg4, tg8) = (batched[0], batched[1]);
        println!(
            "ours threads={threads} kernel={}: prompt {pp:.1} tok/s, decode {tg:.1} tok/s, 4 sequences {tg4:.1} tok/s, 8 sequences {tg8:.1} tok/s",
            lm.kernel().name()
        );
    }
    Ok(())
}
