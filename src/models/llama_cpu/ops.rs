//! The per-token operations of a step: rope, RMS norms, GELU, and attention over the f16 KV
//! cache (portable and F16C).

use std::sync::OnceLock;

use super::{from_f16_bits, Rope, KB};
use crate::models::quant::{round_f16, Kernel};

/// `(cos, sin)` per rotated pair, per token, computed the way ggml does: the angle of pair `i`
/// is `pos * base^(-2i/d)` by repeated products, divided by the pair's frequency factor and
/// multiplied by the linear position scale.
pub(super) fn rope_table(
    where_: &[(usize, usize)],
    hd: usize,
    base: f32,
    rope: &Rope,
) -> Vec<Vec<(f32, f32)>> {
    let step = base.powf(-2.0 / hd as f32);
    where_
        .iter()
        .map(|&(_, pos)| {
            let mut theta = pos as f32;
            (0..hd / 2)
                .map(|i| {
                    let ff = rope.factors.as_ref().map_or(1.0, |f| f[i]);
                    let angle = rope.scale * (theta / ff);
                    theta *= step;
                    (angle.cos(), angle.sin())
                })
                .collect()
        })
        .collect()
}

/// Rotate each head of `x`: adjacent pairs `(2i, 2i + 1)` (llama), or `(i, i + d/2)` (NeoX
/// style: qwen, gemma, phi).
pub(super) fn apply_rope(x: &mut [f32], hd: usize, table: &[(f32, f32)], neox: bool) {
    let half = hd / 2;
    for head in x.chunks_exact_mut(hd) {
        for (i, &(c, s)) in table.iter().enumerate().take(half) {
            let (ia, ib) = if neox {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (a, b) = (head[ia], head[ib]);
            head[ia] = a * c - b * s;
            head[ib] = a * s + b * c;
        }
    }
}

/// ggml's RMS norm: squares summed in double, mean and scale in single precision, then the
/// weight multiplied in.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let ss: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (ss / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

pub(super) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    let dim = w.len();
    out.resize(x.len(), 0.0);
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let scale = rms_scale(xr, eps);
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// [`rms_norm`] of every `w.len()`-long piece of `x` (each head), in place.
pub(super) fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    for xr in x.chunks_exact_mut(w.len()) {
        let scale = rms_scale(xr, eps);
        for (v, &g) in xr.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

/// GELU (tanh form) as ggml's CPU path computes it: inside (-10, 10) the input is rounded to
/// f16 and the answer read from `table` ([`gelu_table`]), a table of f16 results.
#[inline(always)]
pub(super) fn gelu(table: &[u16], x: f32) -> f32 {
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    from_f16_bits(table[half::f16::from_f32(x).to_bits() as usize])
}

/// GELU of every f16 value, as f16 bits (built once).
pub(super) fn gelu_table() -> &'static [u16] {
    static TABLE: OnceLock<Vec<u16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| {
                let v = half::f16::from_bits(b).to_f32();
                half::f16::from_f32(gelu_exact(v)).to_bits()
            })
            .collect()
    })
}

fn gelu_exact(x: f32) -> f32 {
    const A: f32 = 0.044715;
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + A * x * x)).tanh())
}

/// One head of one query over `len` cached positions of a slot's K and V (columns
/// `off..off + head size` of each row).
pub(super) struct Head<'a> {
    pub(super) q: &'a [f32],
    pub(super) k: &'a [u16],
    pub(super) v: &'a [u16],
    pub(super) kv_dim: usize,
    pub(super) off: usize,
    /// The first position the query sees (a sliding window), and one past the last.
    pub(super) start: usize,
    pub(super) len: usize,
    pub(super) scale: f32,
}

/// Attention of one head as ggml's CPU flash attention computes it (llama.cpp's default): the
/// scores against the f16 keys, then an online softmax whose weighted values are accumulated
/// in f16 (see [`Online`], [`mad_f16`]). With AVX2 and F16C the same arithmetic runs on 8 lanes
/// (separate multiply and add for the scores, fused for the accumulator, as the portable code),
/// so the results are the same bits.
pub(super) fn attend(kernel: Kernel, head: &Head<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(kernel, Kernel::Avx2 | Kernel::Avx512) {
        // SAFETY: both are only detected on CPUs with AVX2, FMA and F16C (`Kernel::pick`).
        unsafe { attend_avx2(head, scores, out) };
        return;
    }
    let _ = kernel;
    attend_generic(head, scores, out);
}

/// Largest head size the attention takes (its f16 accumulator lives on the stack).
pub(super) const MAX_HEAD: usize = 512;

/// `_MM_FROUND_TO_NEAREST_INT`: f32 to f16 rounding to nearest, ties to even.
#[cfg(target_arch = "x86_64")]
const NEAREST: i32 = 0;

/// The online softmax of ggml's CPU flash attention, position by position: a running maximum
/// and sum, and for each new score the factor the accumulated values are scaled by (`ms`, below
/// 1 when the maximum grows) and the weight of this position's value (`vs`).
struct Online {
    max: f32,
    sum: f32,
}

impl Online {
    fn new() -> Online {
        Online {
            max: f32::NEG_INFINITY,
            sum: 0.0,
        }
    }

    #[inline(always)]
    fn push(&mut self, s: f32) -> (f32, f32) {
        let (ms, vs) = if s > self.max {
            let ms = (self.max - s).exp();
            self.max = s;
            (ms, 1.0)
        } else {
            (1.0, (s - self.max).exp())
        };
        self.sum = self.sum * ms + vs;
        (ms, vs)
    }

    /// The weighted values divided by the sum.
    fn finish(&self, acc: &[u16], out: &mut [f32]) {
        let inv = if self.sum == 0.0 { 0.0 } else { 1.0 / self.sum };
        for (o, &a) in out.iter_mut().zip(acc) {
            *o = from_f16_bits(a) * inv;
        }
    }
}

/// One element of the f16 accumulator: scaled by `ms` (rounded to f16) when the maximum grew,
/// then `x * vs` added with one rounding (a fused multiply-add) and the sum rounded to f16 —
/// as ggml's `vec_scale_f16` and `vec_mad_f16` do.
#[inline(always)]
fn mad_f16(acc: u16, x: u16, ms: f32, vs: f32) -> u16 {
    let mut a = from_f16_bits(acc);
    if ms != 1.0 {
        a = round_f16(a * ms);
    }
    half::f16::from_f32(from_f16_bits(x).mul_add(vs, a)).to_bits()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2(head: &Head<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let Head {
        q,
        k,
        v,
        kv_dim,
        off,
        start,
        len,
        scale,
    } = *head;
    let hd = q.len();
    scores.clear();
    let mut lanes = [0.0f32; KB];
    let first = start / KB;
    for block in k
        .chunks_exact(kv_dim * KB)
        .take(len.div_ceil(KB))
        .skip(first)
    {
        let rows = &block[off * KB..(off + hd) * KB];
        let mut acc = _mm256_setzero_ps();
        for (&qd, kd) in q.iter().zip(rows.chunks_exact(KB)) {
            // SAFETY: `kd` holds KB = 8 halves (16 bytes); unaligned loads are allowed.
            let kf = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(kd.as_ptr().cast()) });
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(qd), kf));
        }
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        scores.extend(lanes.iter().map(|a| a * scale));
    }
    scores.truncate(len - first * KB);
    scores.drain(..start - first * KB);
    let mut acc = [0u16; MAX_HEAD];
    let acc = &mut acc[..hd];
    let mut online = Online::new();
    for (p, &sc) in (start..).zip(scores.iter()) {
        let (ms, vs) = online.push(sc);
        let vr = &v[p * kv_dim + off..p * kv_dim + off + hd];
        let msv = _mm256_set1_ps(ms);
        let vsv = _mm256_set1_ps(vs);
        let mut a8 = acc.chunks_exact_mut(8);
        let mut v8 = vr.chunks_exact(8);
        for (a, x) in (&mut a8).zip(&mut v8) {
            // SAFETY: both chunks hold 8 halves (16 bytes); unaligned loads and stores are
            // allowed.
            unsafe {
                let mut af = _mm256_cvtph_ps(_mm_loadu_si128(a.as_ptr().cast()));
                if ms != 1.0 {
                    af = _mm256_cvtph_ps(_mm256_cvtps_ph::<NEAREST>(_mm256_mul_ps(af, msv)));
                }
                let xf = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().cast()));
                let r = _mm256_cvtps_ph::<NEAREST>(_mm256_fmadd_ps(xf, vsv, af));
                _mm_storeu_si128(a.as_mut_ptr().cast(), r);
            }
        }
        for (a, &x) in a8.into_remainder().iter_mut().zip(v8.remainder()) {
            *a = mad_f16(*a, x, ms, vs);
        }
    }
    online.finish(acc, out);
}

#[inline(always)]
fn attend_generic(head: &Head<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    let Head {
        q,
        k,
        v,
        kv_dim,
        off,
        start,
        len,
        scale,
    } = *head;
    let hd = q.len();
    scores.clear();
    let first = start / KB;
    for block in k
        .chunks_exact(kv_dim * KB)
        .take(len.div_ceil(KB))
        .skip(first)
    {
        let mut acc = [0.0f32; KB];
        for (d, &qd) in q.iter().enumerate() {
            let kd = &block[(off + d) * KB..(off + d + 1) * KB];
            for (a, &kv) in acc.iter_mut().zip(kd) {
                *a += qd * from_f16_bits(kv);
            }
        }
        scores.extend(acc.iter().map(|a| a * scale));
    }
    scores.truncate(len - first * KB);
    scores.drain(..start - first * KB);
    let mut acc = [0u16; MAX_HEAD];
    let acc = &mut acc[..hd];
    let mut online = Online::new();
    for (p, &sc) in (start..).zip(scores.iter()) {
        let (ms, vs) = online.push(sc);
        let vr = &v[p * kv_dim + off..p * kv_dim + off + hd];
        for (a, &x) in acc.iter_mut().zip(vr) {
            *a = mad_f16(*a, x, ms, vs);
        }
    }
    online.finish(acc, out);
}
