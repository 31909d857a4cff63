//! One thread through each quantized kernel this CPU has: a 1536 × 576 Q4_1 matrix and a
//! 576 × 1536 Q8_0 one (SmolLM2-135M's FFN shapes) against 1, 2, 4, 8 and 17 activations.
//!
//! cargo run --release --example gemm_speed [ROUNDS]
//!
//! Each figure is the fastest of ten batches of ROUNDS (default 50) calls.

use std::time::Instant;

use anya::models::quant::{quantize_row, BlockQ8, Kernel, QData, QMatrix, QK};

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

/// A GGUF tensor's bytes with small finite f16 scales at the front of each block.
fn tensor(ty: u32, rows: usize, cols: usize) -> QMatrix {
    let size = anya::models::quant::block_bytes(ty).unwrap();
    let mut b = bytes(ty as u64, rows * cols / QK * size);
    for blk in b.chunks_exact_mut(size) {
        blk[..2].copy_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
        if ty == 3 {
            blk[2..4].copy_from_slice(&half::f16::from_f32(-0.07).to_bits().to_le_bytes());
        }
    }
    QMatrix::from_bytes(ty, rows, cols, &b).unwrap()
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let mut kernels = vec![Kernel::pick(Some("avx2")), Kernel::detect()];
    kernels.dedup();
    for (ty, rows, cols) in [(3, 1536, 576), (8, 576, 1536)] {
        let m = tensor(ty, rows, cols);
        let nb = cols / QK;
        for n in [1usize, 2, 4, 8, 17] {
            let x: Vec<f32> = bytes(7 + n as u64, n * cols)
                .iter()
                .map(|&v| v as i8 as f32 / 37.0)
                .collect();
            let mut a = vec![BlockQ8::default(); n * nb];
            for (xr, ar) in x.chunks_exact(cols).zip(a.chunks_exact_mut(nb)) {
                quantize_row(xr, ar);
            }
            let mut out = vec![0.0f32; rows * n];
            let mut line = format!("{} n={n:2}:", if ty == 3 { "q4_1" } else { "q8_0" });
            for &k in &kernels {
                let run = |out: &mut [f32]| match &m.data {
                    QData::Q4_1(b) => k.gemm(b, nb, &a, n, out),
                    QData::Q8_0(b) => k.gemm(b, nb, &a, n, out),
                };
                // The fastest of ten batches: the least disturbed by other work on the machine.
                let mut us = f64::INFINITY;
                for _ in 0..10 {
                    let t = Instant::now();
                    for _ in 0..rounds {
                        run(&mut out);
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
