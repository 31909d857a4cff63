//! Tests of the CPU llama: attention bits on every kernel, batched and chunked runs against
//! single ones, bad steps, and files it cannot load.

use candle_core::quantized::gguf_file::{self, Value};

use super::ops::{attend, Head};
use super::*;

use crate::models::test_gguf::{tiny_gguf, tiny_model, VOCAB};

fn chunk(slot: usize, start: usize, tokens: &[u32]) -> Chunk<'_> {
    Chunk {
        slot,
        start,
        tokens,
        logits: true,
    }
}

/// The F16C attention equals the portable one bit for bit, over whole and partial blocks
/// and a head that is not the first.
#[test]
fn attention_on_the_half_float_cache_is_the_same_bits_on_every_kernel() {
    let (hd, kv_dim) = (64, 128);
    let mut seed = 0x2545_f491_u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 2001) as f32 / 1000.0 - 1.0
    };
    for len in [1usize, 7, 8, 9, 33, 100] {
        let blocks = len.div_ceil(KB);
        let k: Vec<u16> = (0..blocks * kv_dim * KB)
            .map(|_| to_f16_bits(rnd()))
            .collect();
        let v: Vec<u16> = (0..len * kv_dim).map(|_| to_f16_bits(rnd())).collect();
        let q: Vec<f32> = (0..hd).map(|_| round_f16(rnd())).collect();
        for start in [0, 3.min(len - 1), len / 2, len - 1] {
            let head = Head {
                q: &q,
                k: &k,
                v: &v,
                kv_dim,
                off: hd,
                start,
                len,
                scale: 0.125,
            };
            let (mut s1, mut s2) = (Vec::new(), Vec::new());
            let (mut portable, mut best) = (vec![0.0; hd], vec![0.0; hd]);
            attend(Kernel::Scalar, &head, &mut s1, &mut portable);
            attend(Kernel::detect(), &head, &mut s2, &mut best);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&portable), bits(&best), "len {len} start {start}");
            // Against a plain softmax over the positions start..len in f64.
            let score = |p: usize| -> f64 {
                let (b, lane) = (p / KB, p % KB);
                (0..hd)
                    .map(|d| {
                        let kv = from_f16_bits(k[b * kv_dim * KB + (hd + d) * KB + lane]);
                        q[d] as f64 * kv as f64
                    })
                    .sum::<f64>()
                    * 0.125
            };
            let scores: Vec<f64> = (start..len).map(score).collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for (d, &got) in portable.iter().enumerate() {
                let want: f64 = (start..len)
                    .zip(&scores)
                    .map(|(p, s)| {
                        (s - max).exp() / sum * from_f16_bits(v[p * kv_dim + hd + d]) as f64
                    })
                    .sum();
                assert!(
                    (got as f64 - want).abs() < 2e-3,
                    "len {len} start {start} dim {d}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn batched_chunked_and_restarted_runs_equal_single_runs() {
    for arch in ["llama", "qwen2", "phi3", "gemma3"] {
        batched_equals_single(arch);
    }
}

fn batched_equals_single(arch: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = CpuLlama::open(&tiny_model(dir.path(), arch), 6, 2).unwrap();
    assert_eq!(lm.arch(), Arch::from_name(arch).unwrap());
    assert_eq!(
        (lm.max_sequences(), lm.context_length(), lm.vocab_size()),
        (6, 48, VOCAB)
    );
    let prompts: Vec<Vec<u32>> = (0..6u32)
        .map(|s| {
            (0..5 + s * 3)
                .map(|i| (i * 7 + s * 11) % VOCAB as u32)
                .collect()
        })
        .collect();
    // Each prompt alone, then two decode steps, in slot 0.
    let mut alone = Vec::new();
    for p in &prompts {
        let a = lm.forward(p, 0).unwrap();
        let b = lm.forward(&[3], p.len()).unwrap();
        let c = lm.forward(&[4], p.len() + 1).unwrap();
        assert!(a.iter().all(|v| v.is_finite()) && a != b && b != c);
        alone.push([a, b, c]);
    }
    // All six at once in their own slots (the four-activation kernels run here).
    let chunks: Vec<Chunk> = prompts
        .iter()
        .enumerate()
        .map(|(s, p)| chunk(s, 0, p))
        .collect();
    let first = lm.step(&chunks).unwrap();
    let second = lm
        .step(
            &(0..6)
                .map(|s| chunk(s, prompts[s].len(), &[3]))
                .collect::<Vec<_>>(),
        )
        .unwrap();
    for s in 0..6 {
        assert_eq!(first[s], alone[s][0], "prompt {s}");
        assert_eq!(second[s], alone[s][1], "decode {s}");
    }
    // A prompt in two chunks gives what it gives in one; only the last chunk asks.
    let p = &prompts[5];
    let none = lm
        .step(&[Chunk {
            logits: false,
            ..chunk(2, 0, &p[..8])
        }])
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(lm.step(&[chunk(2, 8, &p[8..])]).unwrap()[0], alone[5][0]);
    // Restarting inside what a slot holds replaces the rest.
    assert_eq!(lm.forward(&[9, 9, 9], 0).unwrap().len(), VOCAB);
    lm.forward(&prompts[1], 0).unwrap();
    lm.forward(&[50], prompts[1].len()).unwrap();
    assert_eq!(lm.forward(&[3], prompts[1].len()).unwrap(), alone[1][1]);
    lm.release(0);
    assert_eq!(lm.forward(&prompts[0], 0).unwrap(), alone[0][0]);
}

#[test]
fn bad_steps_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = CpuLlama::open(&tiny_gguf(dir.path()), 2, 1).unwrap();
    let ok = [1u32, 2];
    for bad in [
        vec![chunk(2, 0, &ok)],                   // no such slot
        vec![chunk(0, 0, &ok), chunk(0, 0, &ok)], // one slot twice
        vec![chunk(0, 0, &[])],                   // nothing to run
        vec![chunk(0, 5, &ok)],                   // a gap after the cached positions
        vec![chunk(0, 47, &ok)],                  // past the context
        vec![chunk(0, 0, &[VOCAB as u32])],       // outside the vocabulary
    ] {
        assert!(
            matches!(lm.step(&bad), Err(ModelError::Inference(_))),
            "{bad:?}"
        );
    }
    assert!(lm.step(&[chunk(0, 0, &ok)]).is_ok());
}

#[test]
fn missing_tensors_and_unsupported_files_fail_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let arch = Value::String("llama".into());
    gguf_file::write(&mut f, &[("general.architecture", &arch)], &[]).unwrap();
    assert!(matches!(
        CpuLlama::open(&path, 1, 1),
        Err(ModelError::Load(_))
    ));
    assert!(CpuLlama::open(&dir.path().join("absent.gguf"), 1, 1).is_err());
}
