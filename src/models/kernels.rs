//! Element-wise and row-wise f32 kernels for the CPU BERT forward (`bert_fast`): exact-erf GELU,
//! softmax attention per sequence, LayerNorm with bias and residual, pooling.
//!
//! Every kernel is written once as plain straight-line Rust (no libm call per element, reductions
//! over fixed lanes of 8) so LLVM vectorises it. Each one is compiled twice: for the baseline
//! target, and with AVX2 + FMA enabled, picked at run time with `is_x86_feature_detected!`. The
//! `FMA` const parameter switches `a * b + c` to a fused multiply-add where the CPU has one
//! (without hardware FMA `mul_add` would be a slow libm call).

/// Lanes of the fixed-width accumulators in reductions (one AVX register of f32).
const LANES: usize = 8;

/// Compile `$body::<true>` with AVX2 + FMA enabled and use it where the CPU has both;
/// otherwise `$body::<false>` for the baseline target.
macro_rules! dispatch {
    ($(#[$doc:meta])* pub fn $name:ident => $body:ident ($($arg:ident : $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                if simd_available() {
                    #[target_feature(enable = "avx2,fma")]
                    fn avx2($($arg: $ty),*) {
                        $body::<true>($($arg),*)
                    }
                    // SAFETY: `simd_available` checked that this CPU has AVX2 and FMA, the only
                    // requirement of the target features `avx2` is compiled with.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body::<false>($($arg),*)
        }
    };
}

/// Whether the AVX2 + FMA versions of the kernels run on this CPU.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// e^x for x in [-87, 88] (clamped to it), relative error ≲ 2e-7: x = n ln 2 + r with
/// |r| ≤ ln 2 / 2, e^r by its Taylor series to r^7, 2^n built in the exponent bits.
#[inline(always)]
fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^8.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer, which lands in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = madd::<FMA>(x, LOG2E, SHIFTER);
    let n = t - SHIFTER;
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, x));
    let mut p = 1.0 / 5040.0;
    p = madd::<FMA>(p, r, 1.0 / 720.0);
    p = madd::<FMA>(p, r, 1.0 / 120.0);
    p = madd::<FMA>(p, r, 1.0 / 24.0);
    p = madd::<FMA>(p, r, 1.0 / 6.0);
    p = madd::<FMA>(p, r, 0.5);
    p = madd::<FMA>(p, r, 1.0);
    p = madd::<FMA>(p, r, 1.0);
    // n sits in the low bits of t's mantissa, offset by 0x4B40_0000 (t's bits at n = 0).
    let n_int = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    p * scale
}

/// Φ(x), the standard normal CDF, as ½ erfc(-x / √2) with erfc from Abramowitz & Stegun 7.1.26
/// (|error of erf| ≤ 1.5e-7). The tail below zero is computed directly, without cancellation.
#[inline(always)]
fn normal_cdf<const FMA: bool>(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / madd::<FMA>(P, z, 1.0);
    let mut poly = A5;
    poly = madd::<FMA>(poly, t, A4);
    poly = madd::<FMA>(poly, t, A3);
    poly = madd::<FMA>(poly, t, A2);
    poly = madd::<FMA>(poly, t, A1);
    // ½ erfc(|z|)
    let half_erfc = 0.5 * poly * t * exp::<FMA>(-z * z);
    if x < 0.0 {
        half_erfc
    } else {
        1.0 - half_erfc
    }
}

/// erf(x) by the same approximation as [`gelu_bias`] uses (for tests and callers that want it).
pub fn erf(x: f32) -> f32 {
    2.0 * normal_cdf::<false>(x * std::f32::consts::SQRT_2) - 1.0
}

#[inline(always)]
fn gelu_bias_body<const FMA: bool>(xs: &mut [f32], bias: &[f32]) {
    for row in xs.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            let x = *v + b;
            *v = x * normal_cdf::<FMA>(x);
        }
    }
}

dispatch! {
    /// `xs[r][c] = gelu(xs[r][c] + bias[c])` in place with the exact (erf) GELU, rows
    /// `bias.len()` wide.
    pub fn gelu_bias => gelu_bias_body(xs: &mut [f32], bias: &[f32])
}

#[inline(always)]
fn sum_lanes<const FMA: bool>(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for &x in chunks.remainder() {
        s += x;
    }
    s
}

#[inline(always)]
fn sq_dev_lanes<const FMA: bool>(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            let d = x - mean;
            *a = madd::<FMA>(d, d, *a);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for &x in chunks.remainder() {
        let d = x - mean;
        s += d * d;
    }
    s
}

#[inline(always)]
fn layer_norm_row<const FMA: bool>(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = sum_lanes::<FMA>(row) / n;
    let var = sq_dev_lanes::<FMA>(row, mean) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((x, &g), &b) in row.iter_mut().zip(gamma).zip(beta) {
        *x = madd::<FMA>((*x - mean) * inv, g, b);
    }
}

#[inline(always)]
fn add_layer_norm_body<const FMA: bool>(
    xs: &mut [f32],
    bias: &[f32],
    residual: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let w = bias.len();
    for (row, r_row) in xs.chunks_exact_mut(w).zip(residual.chunks_exact(w)) {
        for ((v, &r), &b) in row.iter_mut().zip(r_row).zip(bias) {
            *v += b + r;
        }
        layer_norm_row::<FMA>(row, gamma, beta, eps);
    }
}

dispatch! {
    /// `xs[r] = LayerNorm(xs[r] + bias + residual[r])` in place, rows `bias.len()` wide.
    pub fn add_layer_norm => add_layer_norm_body(
        xs: &mut [f32],
        bias: &[f32],
        residual: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    )
}

#[inline(always)]
fn layer_norm_body<const FMA: bool>(rows: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    for row in rows.chunks_exact_mut(gamma.len()) {
        layer_norm_row::<FMA>(row, gamma, beta, eps);
    }
}

dispatch! {
    /// LayerNorm of each row (`gamma.len()` wide) in place.
    pub fn layer_norm => layer_norm_body(rows: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32)
}

/// The shape of one attention call: `heads` heads of `head_dim` over rows of `3 * heads *
/// head_dim` (query, key, value side by side, as one fused projection writes them).
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub heads: usize,
    pub head_dim: usize,
}

/// Scratch space for [`attention`], kept between calls.
#[derive(Debug, Default)]
pub struct AttentionScratch {
    /// One head's keys of one sequence, transposed: [head_dim][len].
    keys_t: Vec<f32>,
    /// Scores of one query row: [len].
    scores: Vec<f32>,
    /// One query row of one head, scaled: [head_dim].
    query: Vec<f32>,
}

/// `out[c * 8 ..][.. G * 8] = Σ_j p_j · rows_j[c * 8 ..][.. G * 8]` for `G` lanes at once, the
/// accumulators in registers (`rows` row `j` starts at `j * row`). Scores are this with the
/// query as `p` and the transposed keys as rows (`q · keys`); weighted values with the
/// probabilities as `p` and the value rows.
#[inline(always)]
fn weigh_lanes<const G: usize, const FMA: bool>(
    p: &[f32],
    values: &[f32],
    row: usize,
    c: usize,
    out: &mut [f32],
) {
    let mut acc = [[0.0f32; LANES]; G];
    for (j, &p) in p.iter().enumerate() {
        let v = &values[j * row + c * LANES..][..G * LANES];
        for (a, v) in acc.iter_mut().zip(v.chunks_exact(LANES)) {
            for (a, &v) in a.iter_mut().zip(v) {
                *a = madd::<FMA>(p, v, *a);
            }
        }
    }
    for (o, a) in out[c * LANES..][..G * LANES]
        .chunks_exact_mut(LANES)
        .zip(&acc)
    {
        o.copy_from_slice(a);
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attention_body<const FMA: bool>(
    shape: AttentionShape,
    qkv: &[f32],
    bias: &[f32],
    lens: &[usize],
    scratch: &mut AttentionScratch,
    ctx: &mut [f32],
) {
    let AttentionShape { heads, head_dim } = shape;
    let hidden = heads * head_dim;
    let row = 3 * hidden;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut start = 0;
    for &len in lens {
        if len == 0 {
            continue;
        }
        let seq = &qkv[start * row..(start + len) * row];
        let out = &mut ctx[start * hidden..(start + len) * hidden];
        // Key columns padded to whole lanes with zeros, so the score loops run on full lanes.
        let padded = len.div_ceil(LANES) * LANES;
        scratch.keys_t.clear();
        scratch.keys_t.resize(head_dim * padded, 0.0);
        scratch.scores.clear();
        scratch.scores.resize(padded, 0.0);
        scratch.query.clear();
        scratch.query.resize(head_dim, 0.0);
        for h in 0..heads {
            let q_off = h * head_dim;
            let k_off = hidden + h * head_dim;
            let v_off = 2 * hidden + h * head_dim;
            let (bq, bk, bv) = (
                &bias[q_off..q_off + head_dim],
                &bias[k_off..k_off + head_dim],
                &bias[v_off..v_off + head_dim],
            );
            for (j, r) in seq.chunks_exact(row).enumerate() {
                for (d, (&k, &b)) in r[k_off..k_off + head_dim].iter().zip(bk).enumerate() {
                    scratch.keys_t[d * padded + j] = k + b;
                }
            }
            for (i, q_row) in seq.chunks_exact(row).enumerate() {
                for ((qs, &q), &b) in scratch
                    .query
                    .iter_mut()
                    .zip(&q_row[q_off..q_off + head_dim])
                    .zip(bq)
                {
                    *qs = (q + b) * scale;
                }
                let scores = &mut scratch.scores[..];
                let (q, keys_t) = (&scratch.query[..], &scratch.keys_t[..]);
                let lanes = padded / LANES;
                let mut c = 0;
                while c + 4 <= lanes {
                    weigh_lanes::<4, FMA>(q, keys_t, padded, c, scores);
                    c += 4;
                }
                if c + 2 <= lanes {
                    weigh_lanes::<2, FMA>(q, keys_t, padded, c, scores);
                    c += 2;
                }
                if c < lanes {
                    weigh_lanes::<1, FMA>(q, keys_t, padded, c, scores);
                }
                scores[len..].fill(f32::NEG_INFINITY);
                let mut mx = [f32::NEG_INFINITY; LANES];
                for s8 in scores.chunks_exact(LANES) {
                    for (m, &s) in mx.iter_mut().zip(s8) {
                        *m = m.max(s);
                    }
                }
                let max = mx.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                for s8 in scores.chunks_exact_mut(LANES) {
                    for s in s8 {
                        *s = exp::<FMA>(*s - max);
                    }
                }
                scores[len..].fill(0.0);
                let inv = 1.0 / sum_lanes::<FMA>(scores);
                let o = &mut out[i * hidden + q_off..i * hidden + q_off + head_dim];
                let p = &scores[..len];
                let values = &seq[v_off..];
                let lanes = head_dim / LANES;
                let mut c = 0;
                while c + 4 <= lanes {
                    weigh_lanes::<4, FMA>(p, values, row, c, o);
                    c += 4;
                }
                while c < lanes {
                    weigh_lanes::<1, FMA>(p, values, row, c, o);
                    c += 1;
                }
                for (d, o) in o.iter_mut().enumerate().skip(lanes * LANES) {
                    *o = p
                        .iter()
                        .zip(values.chunks(row))
                        .fold(0.0, |acc, (&p, v)| madd::<FMA>(p, v[d], acc));
                }
                // The weights sum to one, so the value bias passes straight through.
                for (o, &b) in o.iter_mut().zip(bv) {
                    *o = madd::<FMA>(*o, inv, b);
                }
            }
        }
        start += len;
    }
}

dispatch! {
    /// Multi-head self-attention of each sequence with itself, no mask and no padding:
    /// `qkv` holds the fused query/key/value projections (without `bias`) of the tokens of all
    /// sequences, one after the other (`lens` long each); `ctx` gets one `heads * head_dim` row
    /// per token.
    pub fn attention => attention_body(
        shape: AttentionShape,
        qkv: &[f32],
        bias: &[f32],
        lens: &[usize],
        scratch: &mut AttentionScratch,
        ctx: &mut [f32],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf in f64 by its Maclaurin series (accurate to ~1e-11 for |x| ≤ 4, where the largest
    /// term is ~1e5), and ±1 beyond (erfc(4) ≈ 1.5e-8).
    fn erf_ref(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let mut term = x; // (-1)^n x^(2n+1) / n!
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    fn grid() -> impl Iterator<Item = f32> {
        (-12_000..=12_000).map(|i| i as f32 * 1e-3)
    }

    #[test]
    fn erf_is_within_1e_6_of_the_series() {
        let mut worst = 0.0f64;
        for x in grid() {
            let err = (erf(x) as f64 - erf_ref(x as f64)).abs();
            worst = worst.max(err);
        }
        // 1.5e-7 from the approximation, the rest f32 rounding (2 Φ(x √2) - 1 near ±1).
        assert!(worst < 1e-6, "max |erf error| {worst:e}");
    }

    #[test]
    fn gelu_matches_the_exact_gelu_on_both_paths() {
        let xs: Vec<f32> = grid().collect();
        let (mut fast, mut scalar) = (xs.clone(), xs.clone());
        gelu_bias(&mut fast, &[0.0]);
        gelu_bias_body::<false>(&mut scalar, &[0.0]);
        for ((&x, &f), &s) in xs.iter().zip(&fast).zip(&scalar) {
            let x64 = x as f64;
            let want = 0.5 * x64 * (1.0 + erf_ref(x64 / std::f64::consts::SQRT_2));
            let tol = 1e-6 * x64.abs().max(1.0);
            assert!(
                (f as f64 - want).abs() < tol,
                "gelu({x}) = {f}, want {want}"
            );
            assert!(
                (s as f64 - want).abs() < tol,
                "scalar gelu({x}) = {s}, want {want}"
            );
            assert!((f - s).abs() <= 1e-6 * x.abs().max(1.0), "{x}: {f} vs {s}");
        }
        // Bias is added per column.
        let mut out = [0.0f32, 0.0, 1.0, 1.0];
        gelu_bias(&mut out, &[1.0, -1.0]);
        assert!((out[0] - 0.841_344_7).abs() < 1e-6 && (out[1] + 0.158_655_3).abs() < 1e-6);
        assert!((out[2] - 1.954_499_7).abs() < 1e-6 && out[3].abs() < 1e-7);
    }

    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        for i in 0..=8700 {
            let x = -(i as f32) * 0.01;
            let (got, want) = (exp::<false>(x) as f64, (x as f64).exp());
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp::<false>(0.0), 1.0);
        assert!(exp::<false>(-1e4) < 1e-37 && exp::<false>(f32::NEG_INFINITY) >= 0.0);
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn layer_norm_both_paths_agree_with_a_plain_one() {
        let w = 37; // not a multiple of the lane count
        let (src, res) = (pseudo_random(3 * w, 1), pseudo_random(3 * w, 2));
        let (bias, gamma, beta) = (
            pseudo_random(w, 3),
            pseudo_random(w, 4),
            pseudo_random(w, 5),
        );
        let (mut fast, mut scalar) = (src.clone(), src.clone());
        add_layer_norm(&mut fast, &bias, &res, &gamma, &beta, 1e-12);
        add_layer_norm_body::<false>(&mut scalar, &bias, &res, &gamma, &beta, 1e-12);
        for r in 0..3 {
            let y: Vec<f64> = (0..w)
                .map(|c| (src[r * w + c] + bias[c] + res[r * w + c]) as f64)
                .collect();
            let mean = y.iter().sum::<f64>() / w as f64;
            let var = y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / w as f64;
            for c in 0..w {
                let want = (y[c] - mean) / (var + 1e-12).sqrt() * gamma[c] as f64 + beta[c] as f64;
                assert!((fast[r * w + c] as f64 - want).abs() < 1e-5);
                assert!((scalar[r * w + c] as f64 - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn attention_both_paths_agree_with_a_plain_one() {
        // Head sizes under, over and at whole lanes; sequences of 0 to 5 lanes of keys.
        for (heads, head_dim) in [(3usize, 5usize), (2, 40), (2, 32)] {
            let shape = AttentionShape { heads, head_dim };
            let hidden = heads * head_dim;
            let lens = [4usize, 0, 11, 1, 37, 16];
            let total: usize = lens.iter().sum();
            let qkv = pseudo_random(total * 3 * hidden, 7);
            let bias = pseudo_random(3 * hidden, 8);
            let mut fast = vec![0.0; total * hidden];
            let mut scalar = vec![0.0; total * hidden];
            let mut scratch = AttentionScratch::default();
            attention(shape, &qkv, &bias, &lens, &mut scratch, &mut fast);
            attention_body::<false>(shape, &qkv, &bias, &lens, &mut scratch, &mut scalar);
            let at = |t: usize, c: usize| (qkv[t * 3 * hidden + c] + bias[c]) as f64;
            let mut start = 0;
            for &len in &lens {
                for h in 0..heads {
                    for i in 0..len {
                        let s: Vec<f64> = (0..len)
                            .map(|j| {
                                (0..head_dim)
                                    .map(|d| {
                                        at(start + i, h * head_dim + d)
                                            * at(start + j, hidden + h * head_dim + d)
                                    })
                                    .sum::<f64>()
                                    / (head_dim as f64).sqrt()
                            })
                            .collect();
                        let m = s.iter().cloned().fold(f64::MIN, f64::max);
                        let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                        let z: f64 = e.iter().sum();
                        for d in 0..head_dim {
                            let want: f64 = (0..len)
                                .map(|j| e[j] / z * at(start + j, 2 * hidden + h * head_dim + d))
                                .sum();
                            let k = (start + i) * hidden + h * head_dim + d;
                            let (f, sc) = (fast[k] as f64, scalar[k] as f64);
                            assert!((f - want).abs() < 1e-4, "{head_dim}: {f} vs {want}");
                            assert!((sc - want).abs() < 1e-4, "{head_dim}: {sc} vs {want}");
                        }
                    }
                }
                start += len;
            }
        }
    }
}
