//! The per-token operations of a step: rope, RMS norm, quantizing activations, and attention
//! over the f16 KV cache (portable and F16C).

use super::{from_f16_bits, KB};
use crate::models::quant::{quantize_row, round_f16, BlockQ8, Kernel, QK};

/// `(cos, sin)` per rotated pair, per token (llama's "normal" rope: adjacent pairs), computed
/// the way ggml does: the angle of pair `i` is `pos * base^(-2i/d)` by repeated products.
pub(super) fn rope_table(where_: &[(usize, usize)], hd: usize, base: f32) -> Vec<Vec<(f32, f32)>> {
    let scale = base.powf(-2.0 / hd as f32);
    where_
        .iter()
        .map(|&(_, pos)| {
            let mut theta = pos as f32;
            (0..hd / 2)
                .map(|_| {
                    let cs = (theta.cos(), theta.sin());
                    theta *= scale;
                    cs
                })
                .collect()
        })
        .collect()
}

pub(super) fn apply_rope(x: &mut [f32], hd: usize, table: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(hd) {
        for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(table) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

pub(super) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    let dim = w.len();
    out.resize(x.len(), 0.0);
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let scale = 1.0 / ((ss / dim as f64) as f32 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

pub(super) fn quantize_rows(x: &[f32], width: usize, out: &mut Vec<BlockQ8>) {
    out.resize(x.len() / QK, BlockQ8::default());
    for (xr, or) in x.chunks_exact(width).zip(out.chunks_exact_mut(width / QK)) {
        quantize_row(xr, or);
    }
}

/// One head of one query over `len` cached positions of a slot's K and V (columns
/// `off..off + head size` of each row).
pub(super) struct Head<'a> {
    pub(super) q: &'a [f32],
    pub(super) k: &'a [u16],
    pub(super) v: &'a [u16],
    pub(super) kv_dim: usize,
    pub(super) off: usize,
    pub(super) len: usize,
    pub(super) scale: f32,
}

/// With AVX2 and F16C: the same arithmetic in the same order on 8 lanes, converting the cache's
/// halves with F16C (separate multiply and add, no FMA contraction, so the results are the
/// same bits as the portable code).
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

/// Softmax of the scores in place; answers `1 / sum` (the weights are `score * inv`).
#[inline(always)]
fn softmax_unnormalized(scores: &mut [f32]) -> f32 {
    let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s as f64;
    }
    (1.0 / sum) as f32
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
        len,
        scale,
    } = *head;
    let hd = q.len();
    scores.clear();
    let mut lanes = [0.0f32; KB];
    for block in k.chunks_exact(kv_dim * KB).take(len.div_ceil(KB)) {
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
    scores.truncate(len);
    let inv = softmax_unnormalized(scores);
    out.fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        let w = round_f16(w * inv);
        let vr = &v[p * kv_dim + off..p * kv_dim + off + hd];
        let wv = _mm256_set1_ps(w);
        let mut o8 = out.chunks_exact_mut(8);
        let mut v8 = vr.chunks_exact(8);
        for (o, x) in (&mut o8).zip(&mut v8) {
            // SAFETY: both chunks hold 8 elements; unaligned loads and stores are allowed.
            unsafe {
                let xf = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().cast()));
                let cur = _mm256_loadu_ps(o.as_ptr());
                _mm256_storeu_ps(o.as_mut_ptr(), _mm256_add_ps(cur, _mm256_mul_ps(wv, xf)));
            }
        }
        for (o, &x) in o8.into_remainder().iter_mut().zip(v8.remainder()) {
            *o += w * from_f16_bits(x);
        }
    }
}

#[inline(always)]
fn attend_generic(head: &Head<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    let Head {
        q,
        k,
        v,
        kv_dim,
        off,
        len,
        scale,
    } = *head;
    let hd = q.len();
    scores.clear();
    for block in k.chunks_exact(kv_dim * KB).take(len.div_ceil(KB)) {
        let mut acc = [0.0f32; KB];
        for (d, &qd) in q.iter().enumerate() {
            let kd = &block[(off + d) * KB..(off + d + 1) * KB];
            for (a, &kv) in acc.iter_mut().zip(kd) {
                *a += qd * from_f16_bits(kv);
            }
        }
        scores.extend(acc.iter().map(|a| a * scale));
    }
    scores.truncate(len);
    let inv = softmax_unnormalized(scores);
    out.fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        let w = round_f16(w * inv);
        let vr = &v[p * kv_dim + off..p * kv_dim + off + hd];
        for (o, &x) in out.iter_mut().zip(vr) {
            *o += w * from_f16_bits(x);
        }
    }
}
