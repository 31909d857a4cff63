//! Tests of the quantized kernels: the SIMD dot products against the scalar reference, the
//! matmul against row-by-row dots, and the kernel choice.

use super::*;

/// A deterministic pseudo-random stream in [-1, 1).
pub(super) fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Quantize f32 weights to Q4_1 the way llama.cpp does (min/max per block).
fn q4_1_bytes(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in x.chunks_exact(QK) {
        let min = b.iter().cloned().fold(f32::INFINITY, f32::min);
        let max = b.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(f16::from_f32(min).to_bits().to_le_bytes());
        for j in 0..16 {
            let lo = (((b[j] - min) * id + 0.5) as u8).min(15);
            let hi = (((b[j + 16] - min) * id + 0.5) as u8).min(15);
            out.push(lo | (hi << 4));
        }
    }
    out
}

fn q8_0_bytes(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in x.chunks_exact(QK) {
        let amax = b.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

fn acts(x: &[f32]) -> Vec<BlockQ8> {
    let mut a = vec![BlockQ8::default(); x.len() / QK];
    quantize_row(x, &mut a);
    a
}

#[test]
fn quantized_dots_approximate_the_f32_dot() {
    let (rows, cols) = (8, 256);
    let w = noise(1, rows * cols);
    let x = noise(2, cols);
    let a = acts(&x);
    for (ty, bytes) in [(3, q4_1_bytes(&w)), (8, q8_0_bytes(&w))] {
        let m = QMatrix::from_bytes(ty, rows, cols, &bytes).unwrap();
        let mut deq = vec![0.0; cols];
        for r in 0..rows {
            m.dequantize_row(r, &mut deq);
            let want: f32 = deq.iter().zip(&x).map(|(p, q)| p * q).sum();
            let got = match &m.data {
                QData::Q4_1(b) => dot_q4_1_scalar(&b[r * 8..(r + 1) * 8], &a),
                QData::Q8_0(b) => dot_q8_0_scalar(&b[r * 8..(r + 1) * 8], &a),
                _ => unreachable!(),
            };
            // Only the activation's 8-bit rounding separates them.
            assert!(
                (got - want).abs() < 0.05 + 0.01 * want.abs(),
                "{ty}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn simd_dots_equal_the_reference() {
    let k = Kernel::detect();
    let cols = 1536;
    for seed in 0..20 {
        let w = noise(seed * 3 + 1, cols);
        let x: Vec<f32> = noise(seed * 3 + 2, cols)
            .iter()
            .map(|v| v * (seed as f32 + 1.0))
            .collect();
        let a = acts(&x);
        let q4 = QMatrix::from_bytes(3, 1, cols, &q4_1_bytes(&w)).unwrap();
        let q8 = QMatrix::from_bytes(8, 1, cols, &q8_0_bytes(&w)).unwrap();
        let (QData::Q4_1(b4), QData::Q8_0(b8)) = (&q4.data, &q8.data) else {
            unreachable!()
        };
        // One activation (the decode path) and four (the batched path), through `gemm`.
        let nb = cols / QK;
        let mut four = a.clone();
        for j in 0..3 {
            four.extend(acts(&noise(seed * 7 + j + 100, cols)));
        }
        for (n, acts) in [(1, &a), (4, &four)] {
            let (mut o4, mut o8) = (vec![0.0; n], vec![0.0; n]);
            k.gemm(b4, nb, acts, n, &mut o4);
            k.gemm(b8, nb, acts, n, &mut o8);
            for t in 0..n {
                let at = &acts[t * nb..(t + 1) * nb];
                let (r4, r8) = (dot_q4_1_scalar(b4, at), dot_q8_0_scalar(b8, at));
                // Same integer products; only the order of the f32 sums differs.
                let close = |r: f32, s: f32| (r - s).abs() <= 1e-4 * (1.0 + r.abs());
                assert!(close(r4, o4[t]), "q4_1 n={n} t={t}: {r4} vs {}", o4[t]);
                assert!(close(r8, o8[t]), "q8_0 n={n} t={t}: {r8} vs {}", o8[t]);
            }
        }
    }
}

#[test]
fn matmul_equals_row_by_row_dots_for_one_and_many_inputs() {
    let (rows, cols) = (300, 64);
    let w = noise(7, rows * cols);
    let m = QMatrix::from_bytes(3, rows, cols, &q4_1_bytes(&w)).unwrap();
    let QData::Q4_1(blocks) = &m.data else {
        unreachable!()
    };
    for n in [1, 5, 8] {
        let x = noise(9 + n as u64, n * cols);
        let a = acts(&x);
        let mut out = vec![0.0; n * rows];
        m.matmul(Kernel::detect(), &a, n, &mut out, &mut Vec::new());
        for t in 0..n {
            for r in 0..rows {
                let want = dot_q4_1_scalar(&blocks[r * 2..r * 2 + 2], &a[t * 2..t * 2 + 2]);
                let got = out[t * rows + r];
                assert!((got - want).abs() < 1e-4, "t {t} r {r}: {got} vs {want}");
            }
        }
    }
}

/// The AVX-512 kernels equal the AVX2 ones (llama.cpp's order) bit for bit, for every
/// number of activations (tiles of 8, 4, 2, 1 over groups of up to four row pairs), odd and
/// even row counts (a last odd row goes through AVX2) and several row lengths, through
/// `gemm` and through `matmul`.
#[test]
fn avx512_gemm_equals_avx2_exactly() {
    #[cfg(target_arch = "x86_64")]
    {
        if !avx512::available() || Kernel::pick(Some("avx2")) != Kernel::Avx2 {
            eprintln!("skipped: this CPU lacks AVX-512 F/BW/VNNI (or AVX2)");
            return;
        }
        for nb in [1, 3, 18] {
            let cols = nb * QK;
            let rows = 33;
            // Rows of different scales, one all-zero block (for signed zeros).
            let mut w: Vec<f32> = noise(11 + nb as u64, rows * cols)
                .iter()
                .enumerate()
                .map(|(i, v)| v * (1 + (i / cols) % 5) as f32)
                .collect();
            w[2 * cols..2 * cols + QK].fill(0.0);
            for (ty, bytes) in [(3, q4_1_bytes(&w)), (8, q8_0_bytes(&w))] {
                let m = QMatrix::from_bytes(ty, rows, cols, &bytes).unwrap();
                for n in 1..=17 {
                    let x: Vec<f32> = noise(20 + n as u64, n * cols)
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v * (1 + i % 7) as f32)
                        .collect();
                    let mut a = vec![BlockQ8::default(); n * nb];
                    for (xr, ar) in x.chunks_exact(cols).zip(a.chunks_exact_mut(nb)) {
                        quantize_row(xr, ar);
                    }
                    for r in [1, 2, 3, 16, 17, 33] {
                        let run = |k: Kernel| {
                            let mut out = vec![0.0f32; r * n];
                            match &m.data {
                                QData::Q4_1(b) => k.gemm(&b[..r * nb], nb, &a, n, &mut out),
                                QData::Q8_0(b) => k.gemm(&b[..r * nb], nb, &a, n, &mut out),
                                _ => unreachable!(),
                            }
                            out
                        };
                        let (want, got) = (run(Kernel::Avx2), run(Kernel::Avx512));
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(
                                g.to_bits(),
                                w.to_bits(),
                                "type {ty} nb {nb} rows {r} n {n}: row {} act {}: {g} vs {w}",
                                i / n,
                                i % n
                            );
                        }
                    }
                    let mut mm = [vec![0.0f32; n * rows], vec![0.0f32; n * rows]];
                    m.matmul(Kernel::Avx2, &a, n, &mut mm[0], &mut Vec::new());
                    m.matmul(Kernel::Avx512, &a, n, &mut mm[1], &mut Vec::new());
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&mm[0]), bits(&mm[1]), "matmul {ty} nb {nb} n {n}");
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    eprintln!("skipped: not x86-64");
}

#[test]
fn kernel_choice_follows_the_cpu_and_anya_kernel() {
    assert_eq!(Kernel::pick(Some("scalar")), Kernel::Scalar);
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        assert_eq!(Kernel::pick(Some("avx2")), Kernel::Avx2);
        let best = if avx512::available() {
            Kernel::Avx512
        } else {
            Kernel::Avx2
        };
        assert_eq!(Kernel::pick(None), best);
        assert_eq!(Kernel::pick(Some("avx512")), best);
    }
}

#[test]
fn concat_stacks_rows_and_rejects_mismatches() {
    let a = QMatrix::from_bytes(3, 2, 32, &q4_1_bytes(&noise(1, 64))).unwrap();
    let b = QMatrix::from_bytes(3, 3, 32, &q4_1_bytes(&noise(2, 96))).unwrap();
    let c = QMatrix::concat(vec![a, b]).unwrap();
    assert_eq!((c.rows, c.cols), (5, 32));
    let d = QMatrix::from_bytes(8, 1, 32, &q8_0_bytes(&noise(3, 32))).unwrap();
    assert!(QMatrix::concat(vec![c, d]).is_err());
    assert!(QMatrix::from_bytes(3, 1, 33, &[]).is_err());
    assert!(QMatrix::from_bytes(7, 1, 32, &[0; 24]).is_err()); // Q5_1: not read
}

#[test]
fn quantize_row_keeps_scale_and_sum() {
    let x = noise(5, 64);
    let a = acts(&x);
    for (blk, xb) in a.iter().zip(x.chunks_exact(QK)) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_eq!(blk.d, round_f16(amax / 127.0));
        let s: i32 = blk.qs.iter().map(|&q| q as i32).sum();
        assert!((blk.s - s as f32 * amax / 127.0).abs() < 1e-2);
        assert!(blk.qs.iter().any(|&q| q.abs() == 127));
    }
}
