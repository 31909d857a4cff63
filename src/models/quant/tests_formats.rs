//! Tests of every weight type: SIMD kernels against the scalar references (bit for bit),
//! dequantization against llama.cpp's formulas applied to the file bytes, kernels against f64
//! dots of the dequantized values, Q8_K quantization on edge inputs, [`QMatrix::from_type`]'s
//! checks and [`Acts`] reuse.

use super::tests::noise;
use super::*;

/// Deterministic bytes (xorshift).
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

/// A tensor's file bytes: random codes, random finite scales of a plausible size, and the
/// scales of block 1 (where there is one) zero.
fn tensor_bytes(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let size = ty.block_bytes();
    let blocks = rows * cols / ty.block_elems();
    let mut b = bytes(seed, blocks * size);
    let v = noise(seed + 1, 2 * blocks);
    for (i, blk) in b.chunks_exact_mut(size).enumerate() {
        let zero = if i == 1 { 0.0 } else { 1.0 };
        let (u, w) = (v[2 * i] * zero, v[2 * i + 1] * zero);
        match ty {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => {
                blk[..2].copy_from_slice(&f16_bytes(u * 0.02))
            }
            GgmlType::Q4_1 => {
                blk[..2].copy_from_slice(&f16_bytes(u.abs() * 0.02));
                blk[2..4].copy_from_slice(&f16_bytes(w * 0.1));
            }
            GgmlType::Q4_K | GgmlType::Q5_K => {
                blk[..2].copy_from_slice(&f16_bytes(u.abs() * 0.002));
                blk[2..4].copy_from_slice(&f16_bytes(w.abs() * 0.002));
            }
            GgmlType::Q6_K => blk[208..].copy_from_slice(&f16_bytes(u * 0.002)),
            GgmlType::F16 => blk.copy_from_slice(&f16_bytes(v[2 * i])),
            GgmlType::BF16 => blk.copy_from_slice(&Bf16::from_f32(v[2 * i]).0.to_le_bytes()),
            GgmlType::F32 => blk.copy_from_slice(&v[2 * i].to_le_bytes()),
        }
    }
    b
}

/// `n` activation rows of `cols` values at different scales; row 1 (if any) all zero.
fn act_values(n: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut x: Vec<f32> = noise(seed, n * cols)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1 + i % 7) as f32 * 0.5f32.powi((i / cols) as i32))
        .collect();
    if n > 1 {
        x[cols..2 * cols].fill(0.0);
    }
    x
}

/// Column counts to try: one block, odd block counts, and for the float types row lengths
/// with leftovers after the runs of 32.
fn col_counts(ty: GgmlType) -> Vec<usize> {
    match ty.block_elems() {
        1 => vec![1, 31, 32, 45, 96, 100, 300],
        e => vec![e, 3 * e, 5 * e],
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// The SIMD kernels this CPU runs.
fn simd_kernels() -> Vec<Kernel> {
    let mut k = vec![Kernel::pick(Some("avx2")), Kernel::detect()];
    k.retain(|&k| k != Kernel::Scalar);
    k.dedup();
    k
}

fn matmul(m: &QMatrix, k: Kernel, acts: &mut Acts) -> Vec<f32> {
    let mut out = vec![f32::NAN; acts.rows() * m.rows];
    m.matmul_acts(k, acts, &mut out, &mut Vec::new());
    out
}

/// Every type, one block and odd block counts, 1..=5 activations (one-row and four-row
/// kernels and their mix) and 8, 17 (AVX-512 tiles), odd row counts, through `matmul_acts`:
/// each SIMD kernel equals the scalar reference bit for bit.
#[test]
fn simd_equals_scalar_bit_for_bit_for_every_type() {
    let kernels = simd_kernels();
    if kernels.is_empty() {
        eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
        return;
    }
    for &ty in GgmlType::ALL {
        for (c, cols) in col_counts(ty).into_iter().enumerate() {
            for rows in [1, 17] {
                let seed = 100 * ty.id() as u64 + c as u64;
                let m = QMatrix::from_type(ty, rows, cols, &tensor_bytes(ty, rows, cols, seed))
                    .unwrap();
                for n in [1, 2, 3, 4, 5, 8, 17] {
                    let mut acts = Acts::default();
                    acts.load(&act_values(n, cols, seed + n as u64), cols);
                    let want = matmul(&m, Kernel::Scalar, &mut acts);
                    assert!(want.iter().all(|v| v.is_finite()), "{ty}");
                    for &k in &kernels {
                        let got = matmul(&m, k, &mut acts);
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "{ty} {} cols {cols} rows {rows} n {n}:\n{got:?}\n{want:?}",
                            k.name()
                        );
                    }
                }
            }
        }
    }
}

/// The AVX-512 kernels of Q4_0 and Q5_0 (row pairs, tiles of 8/4/2/1 activations) equal
/// AVX2's through `gemm`, for every activation count up to 17 and row counts around the
/// tile sizes.
#[test]
fn avx512_equals_avx2_for_q4_0_and_q5_0() {
    #[cfg(target_arch = "x86_64")]
    {
        if !avx512::available() || Kernel::pick(Some("avx2")) != Kernel::Avx2 {
            eprintln!("skipped: this CPU lacks AVX-512 F/BW/VNNI (or AVX2)");
            return;
        }
        for ty in [GgmlType::Q4_0, GgmlType::Q5_0] {
            let (rows, nb) = (33, 3);
            let cols = nb * QK;
            let m = QMatrix::from_type(ty, rows, cols, &tensor_bytes(ty, rows, cols, 5)).unwrap();
            for n in 1..=17 {
                let mut acts = Acts::default();
                acts.load(&act_values(n, cols, 40 + n as u64), cols);
                let a = acts.q8().to_vec();
                for r in [1, 2, 3, 16, 17, 33] {
                    let run = |k: Kernel| {
                        let mut out = vec![0.0f32; r * n];
                        match &m.data {
                            QData::Q4_0(b) => k.gemm(&b[..r * nb], nb, &a, n, &mut out),
                            QData::Q5_0(b) => k.gemm(&b[..r * nb], nb, &a, n, &mut out),
                            _ => unreachable!(),
                        }
                        bits(&out)
                    };
                    assert_eq!(run(Kernel::Avx512), run(Kernel::Avx2), "{ty} r {r} n {n}");
                }
            }
        }
    }
}

/// llama.cpp's `get_scale_min_k4`, on the file's 12 bytes.
fn scale_min(j: usize, q: &[u8]) -> (f32, f32) {
    let (d, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (d as f32, m as f32)
}

/// llama.cpp's `dequantize_row_*` loops, on one block's file bytes.
fn direct(ty: GgmlType, b: &[u8]) -> Vec<f32> {
    let h = |i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let mut y = vec![0.0f32; ty.block_elems()];
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 => {
            let (d, qs) = (h(0), &b[b.len() - 16..]);
            let m = if ty == GgmlType::Q4_1 { h(2) } else { 0.0 };
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                let (mut x0, mut x1) = ((qs[j] & 0x0F) as i32, (qs[j] >> 4) as i32);
                match ty {
                    GgmlType::Q4_0 => (x0, x1) = (x0 - 8, x1 - 8),
                    GgmlType::Q5_0 => {
                        x0 = (x0 | (((qh >> j) << 4) & 0x10) as i32) - 16;
                        x1 = (x1 | ((qh >> (j + 12)) & 0x10) as i32) - 16;
                    }
                    _ => {}
                }
                if ty == GgmlType::Q4_1 {
                    (y[j], y[j + 16]) = (x0 as f32 * d + m, x1 as f32 * d + m);
                } else {
                    (y[j], y[j + 16]) = (x0 as f32 * d, x1 as f32 * d);
                }
            }
        }
        GgmlType::Q8_0 => {
            for j in 0..32 {
                y[j] = (b[2 + j] as i8) as f32 * h(0);
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (d, min, sc) = (h(0), h(2), &b[4..16]);
            let (qh, ql) = if ty == GgmlType::Q5_K {
                (&b[16..48], &b[48..])
            } else {
                (&b[..0], &b[16..])
            };
            for j in 0..4 {
                let ((s1, m1), (s2, m2)) = (scale_min(2 * j, sc), scale_min(2 * j + 1, sc));
                let (d1, m1, d2, m2) = (d * s1, min * m1, d * s2, min * m2);
                for l in 0..32 {
                    let q = ql[32 * j + l];
                    let (h1, h2) = match qh {
                        [] => (0, 0),
                        _ => ((qh[l] >> (2 * j)) & 1, (qh[l] >> (2 * j + 1)) & 1),
                    };
                    y[64 * j + l] = d1 * ((q & 0xF) + 16 * h1) as f32 - m1;
                    y[64 * j + 32 + l] = d2 * ((q >> 4) + 16 * h2) as f32 - m2;
                }
            }
        }
        GgmlType::Q6_K => {
            let d = h(208);
            for half in 0..2 {
                let (ql, qh) = (&b[64 * half..], &b[128 + 32 * half..]);
                let sc = |i: usize| (b[192 + 8 * half + i] as i8) as f32;
                for l in 0..32 {
                    let is = l / 16;
                    let q = |lo: u8, sh: u32| ((lo | (((qh[l] >> sh) & 3) << 4)) as i8 - 32) as f32;
                    let y0 = &mut y[128 * half..];
                    y0[l] = d * sc(is) * q(ql[l] & 0xF, 0);
                    y0[l + 32] = d * sc(is + 2) * q(ql[l + 32] & 0xF, 2);
                    y0[l + 64] = d * sc(is + 4) * q(ql[l] >> 4, 4);
                    y0[l + 96] = d * sc(is + 6) * q(ql[l + 32] >> 4, 6);
                }
            }
        }
        GgmlType::F16 => y[0] = h(0),
        GgmlType::BF16 => y[0] = Bf16(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
    }
    y
}

/// `dequantize_row` equals llama.cpp's formulas applied to the file bytes, bit for bit.
#[test]
fn dequantize_row_equals_the_direct_formula() {
    for &ty in GgmlType::ALL {
        let (rows, cols) = (3, 3 * ty.block_elems().max(32));
        let raw = tensor_bytes(ty, rows, cols, 7 + ty.id() as u64);
        let m = QMatrix::from_type(ty, rows, cols, &raw).unwrap();
        let per_row = raw.len() / rows;
        for r in 0..rows {
            let mut got = vec![f32::NAN; cols];
            m.dequantize_row(r, &mut got);
            let want: Vec<f32> = raw[r * per_row..(r + 1) * per_row]
                .chunks_exact(ty.block_bytes())
                .flat_map(|b| direct(ty, b))
                .collect();
            assert_eq!(bits(&got), bits(&want), "{ty} row {r}");
        }
    }
}

/// The activations as the kernels see them, back in f32.
fn dequantized_acts(ty: GgmlType, acts: &mut Acts) -> Vec<f32> {
    let back = |d: f32, qs: &[i8]| qs.iter().map(move |&q| d * q as f32).collect::<Vec<_>>();
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 => {
            acts.q8().iter().flat_map(|b| back(b.d, &b.qs)).collect()
        }
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            acts.q8k().iter().flat_map(|b| back(b.d, &b.qs)).collect()
        }
        GgmlType::F16 => acts.f16().iter().map(|v| v.to_f32()).collect(),
        GgmlType::BF16 => acts.bf16().iter().map(|v| v.to_f32()).collect(),
        GgmlType::F32 => acts.f32s().to_vec(),
    }
}

/// Each kernel's result is, up to f32 rounding, the f64 dot of the dequantized weight row
/// with the dequantized activation (Q4_1's offset term also carries the f16 rounding of
/// `d · Σq`, as llama.cpp's does).
#[test]
fn kernels_approximate_the_dequantized_dot() {
    let mut kernels = simd_kernels();
    kernels.push(Kernel::Scalar);
    for &ty in GgmlType::ALL {
        let (rows, n) = (5, 3);
        let cols = 4 * ty.block_elems().max(64);
        let m = QMatrix::from_type(
            ty,
            rows,
            cols,
            &tensor_bytes(ty, rows, cols, 3 + ty.id() as u64),
        )
        .unwrap();
        let mut acts = Acts::default();
        acts.load(&act_values(n, cols, 9), cols);
        let a = dequantized_acts(ty, &mut acts);
        for &k in &kernels {
            let out = matmul(&m, k, &mut acts);
            let mut w = vec![0.0f32; cols];
            for r in 0..rows {
                m.dequantize_row(r, &mut w);
                for t in 0..n {
                    let at = &a[t * cols..(t + 1) * cols];
                    let want: f64 = w.iter().zip(at).map(|(&p, &q)| p as f64 * q as f64).sum();
                    let mag: f64 = w
                        .iter()
                        .zip(at)
                        .map(|(&p, &q)| (p as f64 * q as f64).abs())
                        .sum();
                    let rel = if ty == GgmlType::Q4_1 { 2e-3 } else { 1e-5 };
                    let got = out[t * rows + r] as f64;
                    assert!(
                        (got - want).abs() <= rel * mag + 1e-6,
                        "{ty} {} row {r} act {t}: {got} vs {want} (magnitude {mag})",
                        k.name()
                    );
                }
            }
        }
    }
}

#[test]
fn q8k_quantization_of_edge_inputs() {
    let mut out = [BlockQ8K::default(); 2];
    // All zeros: d = 0, no codes, whatever the blocks held before.
    let x = vec![0.0f32; 2 * QK_K];
    (out[0].d, out[0].qs[5], out[1].bsums[2]) = (9.0, 3, 7);
    quantize_row_q8k(&x, &mut out);
    for b in &out {
        assert_eq!((b.d, b.qs, b.bsums), (0.0, [0; QK_K], [0; 16]));
    }
    // A single positive maximum: iscale = -127 / 2, so the code is -127 and d negative.
    let mut x = vec![0.0f32; QK_K];
    x[20] = 2.0;
    quantize_row_q8k(&x, &mut out[..1]);
    assert_eq!(out[0].d, 1.0 / (-127.0f32 / 2.0));
    assert!(out[0].d < 0.0);
    assert!(out[0]
        .qs
        .iter()
        .enumerate()
        .all(|(i, &q)| q == if i == 20 { -127 } else { 0 }));
    assert_eq!(out[0].bsums[1], -127);
    assert_eq!(out[0].bsums.iter().map(|&s| s as i32).sum::<i32>(), -127);
    // A negative maximum of -127: iscale = 1, codes are the values rounded half to even.
    let mut x = vec![0.0f32; QK_K];
    let vals = [-127.0, 2.5, 3.5, -2.5, 0.5, -0.5, 1.5, 126.5, -1.49, 100.0];
    x[..vals.len()].copy_from_slice(&vals);
    quantize_row_q8k(&x, &mut out[..1]);
    assert_eq!(out[0].d, 1.0);
    assert_eq!(
        &out[0].qs[..vals.len()],
        &[-127, 2, 4, -2, 0, 0, 2, 126, -1, 100]
    );
    assert_eq!(out[0].bsums[0], -127 + 2 + 4 - 2 + 2 + 126 - 1 + 100);
    // Two values of the same magnitude: the first sets the sign.
    let mut x = vec![0.0f32; QK_K];
    (x[0], x[1], x[17]) = (-3.0, 3.0, 1.0);
    quantize_row_q8k(&x, &mut out[..1]);
    let iscale = -127.0f32 / -3.0;
    assert_eq!(out[0].d, 1.0 / iscale);
    assert_eq!((out[0].qs[0], out[0].qs[1]), (-127, 127));
    assert_eq!(out[0].qs[17], (iscale * 1.0f32).round_ties_even() as i8);
    assert_eq!((out[0].bsums[0], out[0].bsums[1]), (0, 42));
}

#[test]
fn from_type_checks_lengths_and_columns() {
    let err = |r: Result<QMatrix, QuantError>| match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    };
    for &ty in GgmlType::ALL {
        let (rows, cols) = (2, 2 * ty.block_elems().max(32));
        let good = tensor_bytes(ty, rows, cols, 1);
        let m = QMatrix::from_type(ty, rows, cols, &good).unwrap();
        assert_eq!((m.ggml_type(), m.rows, m.cols), (ty, rows, cols));
        let short = err(QMatrix::from_type(ty, rows, cols, &good[1..]));
        assert!(
            short.contains(ty.name()) && short.contains("bytes"),
            "{short}"
        );
        let mut long = good.clone();
        long.push(0);
        assert!(QMatrix::from_type(ty, rows, cols, &long).is_err());
        assert!(QMatrix::from_type(ty, usize::MAX, cols, &good).is_err());
        assert!(QMatrix::from_bytes(ty.id(), rows, cols, &good).is_ok());
    }
    let e = err(QMatrix::from_type(GgmlType::Q4_K, 1, 288, &[0; 162]));
    assert!(e.contains("288 columns") && e.contains("256"), "{e}");
    assert!(QMatrix::from_type(GgmlType::Q8_0, 1, 48, &[0; 51]).is_err());
    assert!(QMatrix::from_type(GgmlType::F16, 1, 3, &[0; 6]).is_ok());
    let e = err(QMatrix::from_bytes(7, 1, 32, &[0; 24]));
    assert!(e.contains("GGML type 7"), "{e}");
    assert_eq!(block_bytes(99), None);
}

#[test]
fn ggml_types_ids_names_and_sizes() {
    for &ty in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
        assert_eq!(block_bytes(ty.id()), Some(ty.block_bytes()));
    }
    assert_eq!(GgmlType::from_id(12), Some(GgmlType::Q4_K));
    assert_eq!(GgmlType::from_id(30), Some(GgmlType::BF16));
    assert_eq!(GgmlType::Q6_K.name(), "Q6_K");
    assert_eq!(
        (GgmlType::Q5_K.block_elems(), GgmlType::Q5_K.block_bytes()),
        (256, 176)
    );
    // In memory no type takes more than a fifth over its file size (Q4_1's two f16 scales
    // widened to f32; the K-quants about 5%).
    for &ty in GgmlType::ALL {
        let (rows, cols) = (4, 512);
        let m = QMatrix::from_type(ty, rows, cols, &tensor_bytes(ty, rows, cols, 2)).unwrap();
        let file = rows * cols / ty.block_elems() * ty.block_bytes();
        assert!(
            m.data.size_bytes() * 100 <= file * 120,
            "{ty}: {} vs {file}",
            m.data.size_bytes()
        );
    }
}

/// On Q4_1 and Q8_0, `matmul_acts` gives `matmul`'s bits (the same activation blocks), and
/// one input's quantizations serve every matrix that reads it.
#[test]
fn matmul_acts_equals_matmul_and_reuses_quantizations() {
    let k = Kernel::detect();
    let (rows, cols, n) = (40, 256, 3);
    let x = act_values(n, cols, 77);
    let mut blocks = vec![BlockQ8::default(); n * cols / QK];
    for (xr, br) in x.chunks_exact(cols).zip(blocks.chunks_exact_mut(cols / QK)) {
        quantize_row(xr, br);
    }
    let mut acts = Acts::default();
    acts.load(&x, cols);
    assert_eq!((acts.rows(), acts.conversions()), (n, 0));
    for (i, ty) in [GgmlType::Q4_1, GgmlType::Q8_0].into_iter().enumerate() {
        let m = QMatrix::from_type(ty, rows, cols, &tensor_bytes(ty, rows, cols, 8)).unwrap();
        let mut want = vec![0.0; n * rows];
        m.matmul(k, &blocks, n, &mut want, &mut Vec::new());
        assert_eq!(bits(&matmul(&m, k, &mut acts)), bits(&want), "{ty}");
        assert_eq!(acts.conversions(), 1, "{ty} (matrix {i})");
    }
    let q4k = GgmlType::Q4_K;
    let a = QMatrix::from_type(q4k, rows, cols, &tensor_bytes(q4k, rows, cols, 9)).unwrap();
    let first = matmul(&a, k, &mut acts);
    assert_eq!(acts.conversions(), 2);
    let q6k = GgmlType::Q6_K;
    let b = QMatrix::from_type(q6k, rows, cols, &tensor_bytes(q6k, rows, cols, 10)).unwrap();
    matmul(&b, k, &mut acts);
    assert_eq!(acts.conversions(), 2);
    // A new input drops the old quantizations.
    let y = act_values(n, cols, 78);
    acts.load(&y, cols);
    assert_eq!(acts.conversions(), 0);
    assert_ne!(bits(&matmul(&a, k, &mut acts)), bits(&first));
}

#[test]
fn concat_works_for_every_type_and_refuses_mixes() {
    for &ty in GgmlType::ALL {
        let cols = ty.block_elems().max(32);
        let part = |rows, seed| {
            QMatrix::from_type(ty, rows, cols, &tensor_bytes(ty, rows, cols, seed)).unwrap()
        };
        let (a, b) = (part(2, 1), part(3, 2));
        let mut rows_ab = vec![vec![0.0; cols]; 5];
        for (r, row) in rows_ab.iter_mut().enumerate() {
            if r < 2 {
                a.dequantize_row(r, row)
            } else {
                b.dequantize_row(r - 2, row)
            }
        }
        let c = QMatrix::concat(vec![a, b]).unwrap();
        assert_eq!((c.rows, c.cols, c.ggml_type()), (5, cols, ty));
        for (r, want) in rows_ab.iter().enumerate() {
            let mut got = vec![0.0; cols];
            c.dequantize_row(r, &mut got);
            assert_eq!(bits(&got), bits(want), "{ty} row {r}");
        }
        let other = if ty == GgmlType::F32 {
            GgmlType::F16
        } else {
            GgmlType::F32
        };
        let o = QMatrix::from_type(other, 1, cols, &tensor_bytes(other, 1, cols, 3)).unwrap();
        let e = QMatrix::concat(vec![c, o]).err().unwrap().to_string();
        assert!(e.contains("formats differ"), "{e}");
    }
}
