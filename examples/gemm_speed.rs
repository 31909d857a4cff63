//! One thread through each quantized kernel this CPU has: a 1536 × 576 Q4_1 matrix and a
//! 576 × 1536 Q8_0 one (SmolLM2-135M's FFN shapes), then Q4_1 beside the K-quants (Q4_K, Q5_K,
//! Q6_K) on a 1536 × 1536 matrix (the K-quants need rows of whole 256-value blocks), against
//! 1, 2, 4, 8 and 17 activations.
//!
//! cargo run --release --example gemm_speed [ROUNDS]
//!
//! Each figure is the fastest of ten batches of ROUNDS (default 50) calls. The activations are
//! quantized once, outside the timing.

use std::time::Instant;

use anya::models::quant::{Acts, GgmlType, Kernel, QData, QMatrix};

/// Deterministic bytes.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

/// A GGUF tensor's bytes with small finite f16 scales where each block has them.
fn tensor(ty: GgmlType, rows: usize, cols: usize) -> QMatrix {
    let size = ty.block_bytes();
    let mut b = bytes(ty.id() as u64, rows * cols / ty.block_elems() * size);
    let h = |x: f32| half::f16::from_f32(x).to_bits().to_le_bytes();
    for blk in b.chunks_exact_mut(size) {
        match ty {
            GgmlType::Q6_K => blk[208..].copy_from_slice(&h(0.001)),
            GgmlType::Q4_1 => {
                blk[..2].copy_from_slice(&h(0.01));
                blk[2..4].copy_from_slice(&h(-0.07));
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                blk[..2].copy_from_slice(&h(0.001));
                blk[2..4].copy_from_slice(&h(0.002));
            }
            _ => blk[..2].copy_from_slice(&h(0.01)),
        }
    }
    QMatrix::from_type(ty, rows, cols, &b).expect("sizes match")
}

/// All rows of `m` against the `n` activations in `acts` (already quantized), on this thread.
fn gemm(k: Kernel, m: &QMatrix, acts: &mut Acts, out: &mut [f32]) {
    let (nb, n) = (m.blocks_per_row(), acts.rows());
    match &m.data {
        QData::Q4_1(b) => k.gemm(b, nb, acts.q8(), n, out),
        QData::Q8_0(b) => k.gemm(b, nb, acts.q8(), n, out),
        QData::Q4_0(b) => k.gemm(b, nb, acts.q8(), n, out),
        QData::Q5_0(b) => k.gemm(b, nb, acts.q8(), n, out),
        QData::Q4_K(b) => k.gemm(b, nb, acts.q8k(), n, out),
        QData::Q5_K(b) => k.gemm(b, nb, acts.q8k(), n, out),
        QData::Q6_K(b) => k.gemm(b, nb, acts.q8k(), n, out),
        QData::F16(b) => k.gemm(b, nb, acts.f16(), n, out),
        QData::BF16(b) => k.gemm(b, nb, acts.bf16(), n, out),
        QData::F32(b) => k.gemm(b, nb, acts.f32s(), n, out),
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let mut kernels = vec![Kernel::pick(Some("avx2")), Kernel::detect()];
    kernels.dedup();
    let shapes = [
        (GgmlType::Q4_1, 1536, 576),
        (GgmlType::Q8_0, 576, 1536),
        (GgmlType::Q4_1, 1536, 1536),
        (GgmlType::Q4_K, 1536, 1536),
        (GgmlType::Q5_K, 1536, 1536),
        (GgmlType::Q6_K, 1536, 1536),
    ];
    for (ty, rows, cols) in shapes {
        let m = tensor(ty, rows, cols);
        for n in [1usize, 2, 4, 8, 17] {
            let x: Vec<f32> = bytes(7 + n as u64, n * cols)
                .iter()
                .map(|&v| v as i8 as f32 / 37.0)
                .collect();
            let mut acts = Acts::default();
            acts.load(&x, cols);
            let mut out = vec![0.0f32; rows * n];
            gemm(kernels[0], &m, &mut acts, &mut out); // quantize outside the timing
            let mut line = format!("{:4} {rows:4}×{cols:4} n={n:2}:", ty.name());
            for &k in &kernels {
                // The fastest of ten batches: the least disturbed by other work on the machine.
                let mut us = f64::INFINITY;
                for _ in 0..10 {
                    let t = Instant::now();
                    for _ in 0..rounds {
                        gemm(k, &m, &mut acts, &mut out);
                    }
                    us = us.min(t.elapsed().as_secs_f64() * 1e6 / rounds as f64);
                }
                line += &format!(
                    "  {} {us:8.1} µs ({:.2} ns/row·act)",
                    k.name(),
                    us * 1e3 / (rows * n) as f64
                );
            }
            println!("{line}");
        }
    }
}
