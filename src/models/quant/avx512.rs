//! Q4_1 × Q8_1 and Q8_0, Q4_0, Q5_0 × Q8_0 with AVX-512 VNNI, summing every row exactly as
//! [`super::avx2`] does (which is llama.cpp's AVX2 order), so the results equal the AVX2
//! kernels' bit for bit.
//!
//! A zmm register holds two rows side by side: row `r`'s block `b` unpacked to the 32 bytes
//! AVX2 multiplies (for Q4_1 the sixteen low nibbles, then the sixteen high ones) in its low
//! half, row `r + 1`'s in its high half. The activation block's 32 bytes go to both halves, and
//! one `vpdpbusd` gives each half the eight 4-byte-group sums that AVX2's
//! `maddubs` + `madd` give (exact integers either way). Those are converted to f32 and
//! `fmadd`ed with the scale `[x_r.d · y.d ×8 | x_{r+1}.d · y.d ×8]` into the pair's accumulator,
//! whose halves are then, lane for lane, the two rows' AVX2 accumulators; each half is reduced
//! with the same horizontal sum. Q4_1's `x.m · y.s` terms are summed per row in the same
//! sequential order (multiply, then add: not fused), eight activations to a half. Each unpacked
//! pair serves up to eight activations; a last odd row goes through [`super::avx2`] itself.

use super::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8, BlockQ8_0, WeightBlock};
use std::arch::x86_64::*;

/// Rows per matmul work item (eight pairs: what one activation runs against at once).
pub const ROWS: usize = 16;

pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// A weight format as the pair kernels see it.
pub trait PairBlock: WeightBlock<Act = BlockQ8> {
    /// Whether the format has Q4_1's `m · y.s` term.
    const OFFSETS: bool;
    fn d(&self) -> f32;
    fn m(&self) -> f32;
    /// Blocks `x0` and `x1` unpacked side by side, and the value the integer sums start at.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI.
    unsafe fn unpack(x0: &Self, x1: &Self) -> (__m512i, __m512i);
    /// `start` plus the eight 4-byte-group products of each half of `w` with `y`.
    ///
    /// # Safety
    /// As [`PairBlock::unpack`].
    unsafe fn dot(start: __m512i, w: __m512i, y: __m512i) -> __m512i;
}

/// The nibbles of two 16-byte code arrays, each block's low ones then its high ones: `a`'s
/// 32 codes in the low half, `b`'s in the high.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn nibbles(a: &[u8; 16], b: &[u8; 16]) -> __m512i {
    // SAFETY: 16 bytes each; unaligned loads.
    let (p0, p1) = unsafe {
        (
            _mm_loadu_si128(a.as_ptr().cast()),
            _mm_loadu_si128(b.as_ptr().cast()),
        )
    };
    // [p0, p0, p1, p1] by 128-bit lanes; the second copy of each shifted to its high nibbles.
    let both = _mm512_shuffle_i64x2::<0>(_mm512_castsi128_si512(p0), _mm512_castsi128_si512(p1));
    let shifts = _mm512_set_epi64(
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0,
        0,
        0x0004_0004_0004_0004,
        0x0004_0004_0004_0004,
        0,
        0,
    );
    _mm512_and_si512(_mm512_srlv_epi16(both, shifts), _mm512_set1_epi8(0x0F))
}

/// Signed codes `q` and the value their integer sums start at: `-128 · Σq` per 4-byte group,
/// which [`signed_dot`]'s offset activations add back.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn signed(q: __m512i) -> (__m512i, __m512i) {
    let bias = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(-128), q);
    (q, _mm512_sub_epi32(_mm512_setzero_si512(), bias))
}

/// `start` plus the 4-byte-group products of signed `w` and signed `y` (as `y + 128`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn signed_dot(start: __m512i, w: __m512i, y: __m512i) -> __m512i {
    _mm512_dpbusd_epi32(start, _mm512_xor_si512(y, _mm512_set1_epi8(-128)), w)
}

impl PairBlock for BlockQ4_1 {
    const OFFSETS: bool = true;
    #[inline(always)]
    fn d(&self) -> f32 {
        self.d
    }
    #[inline(always)]
    fn m(&self) -> f32 {
        self.m
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn unpack(x0: &Self, x1: &Self) -> (__m512i, __m512i) {
        (nibbles(&x0.qs, &x1.qs), _mm512_setzero_si512())
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dot(start: __m512i, w: __m512i, y: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(start, w, y)
    }
}

/// `vpdpbusd` wants unsigned bytes on one side: the activation's, offset by 128 (`y ^ 0x80`
/// as unsigned is `y + 128`), with `128 · Σw` over each group taken off up front. Every sum
/// is an exact integer, as AVX2's.
impl PairBlock for BlockQ8_0 {
    const OFFSETS: bool = false;
    #[inline(always)]
    fn d(&self) -> f32 {
        self.d
    }
    #[inline(always)]
    fn m(&self) -> f32 {
        0.0
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn unpack(x0: &Self, x1: &Self) -> (__m512i, __m512i) {
        // SAFETY: 32 bytes each; unaligned loads.
        let q = unsafe {
            _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(x0.qs.as_ptr().cast())),
                _mm256_loadu_si256(x1.qs.as_ptr().cast()),
            )
        };
        signed(q)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dot(start: __m512i, w: __m512i, y: __m512i) -> __m512i {
        signed_dot(start, w, y)
    }
}

/// Q4_0: Q4_1's nibbles less 8, then as Q8_0.
impl PairBlock for BlockQ4_0 {
    const OFFSETS: bool = false;
    #[inline(always)]
    fn d(&self) -> f32 {
        self.d
    }
    #[inline(always)]
    fn m(&self) -> f32 {
        0.0
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn unpack(x0: &Self, x1: &Self) -> (__m512i, __m512i) {
        signed(_mm512_sub_epi8(
            nibbles(&x0.qs, &x1.qs),
            _mm512_set1_epi8(8),
        ))
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dot(start: __m512i, w: __m512i, y: __m512i) -> __m512i {
        signed_dot(start, w, y)
    }
}

/// Q5_0: the nibbles, less 16 where the fifth bit (one mask bit per byte) is clear.
impl PairBlock for BlockQ5_0 {
    const OFFSETS: bool = false;
    #[inline(always)]
    fn d(&self) -> f32 {
        self.d
    }
    #[inline(always)]
    fn m(&self) -> f32 {
        0.0
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn unpack(x0: &Self, x1: &Self) -> (__m512i, __m512i) {
        let q = nibbles(&x0.qs, &x1.qs);
        let high = ((x1.qh as u64) << 32) | x0.qh as u64;
        signed(_mm512_mask_sub_epi8(q, !high, q, _mm512_set1_epi8(16)))
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dot(start: __m512i, w: __m512i, y: __m512i) -> __m512i {
        signed_dot(start, w, y)
    }
}

/// [`super::avx2`]'s horizontal sum, on eight stored lanes.
#[inline(always)]
fn hsum8(v: &[f32]) -> f32 {
    ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
}

/// `out[r][t]` for every row `r` of `w` (`nb` blocks each) and activation `t` of `acts`.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F, BW and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub unsafe fn gemm<B: PairBlock>(w: &[B], nb: usize, acts: &[BlockQ8], n: usize, out: &mut [f32]) {
    let rows = w.len() / nb;
    assert!(acts.len() >= n * nb && out.len() >= rows * n);
    // Q4_1's activation sums `y.s` by block, then activation (eight spare lanes at the end,
    // so a tile may read eight from any of its activations).
    let stride = n + 8;
    let mut ys = Vec::new();
    if B::OFFSETS {
        ys.resize(nb * stride, 0.0f32);
        for t in 0..n {
            for b in 0..nb {
                ys[b * stride + t] = acts[t * nb + b].s;
            }
        }
    }
    let ctx = Ctx {
        w,
        nb,
        acts,
        ys: &ys,
        stride,
        n,
    };
    let pairs = rows / 2;
    let mut p = 0;
    while p < pairs {
        let group = (pairs - p).min(ROWS / 2);
        let mut t = 0;
        while t < n {
            let left = n - t;
            // SAFETY: the CPU features, and rows / activations in range (`tile` asserts).
            unsafe {
                if left >= 8 {
                    for q in p..p + group {
                        tile::<B, 1, 8>(&ctx, 2 * q, t, out);
                    }
                    t += 8;
                } else if left >= 4 {
                    tiles::<B, 4>(&ctx, p, group, t, out);
                    t += 4;
                } else if left >= 2 {
                    tiles::<B, 2>(&ctx, p, group, t, out);
                    t += 2;
                } else {
                    if group == ROWS / 2 {
                        tile::<B, 8, 1>(&ctx, 2 * p, t, out);
                    } else {
                        tiles::<B, 1>(&ctx, p, group, t, out);
                    }
                    t += 1;
                }
            }
        }
        p += group;
    }
    if rows % 2 == 1 {
        let r = rows - 1;
        let wr = &w[r * nb..(r + 1) * nb];
        for t in 0..n {
            // SAFETY: the CPU features.
            out[r * n + t] = unsafe { B::dot_avx2(wr, &acts[t * nb..(t + 1) * nb]) };
        }
    }
}

/// What every tile reads.
struct Ctx<'a, B> {
    w: &'a [B],
    nb: usize,
    acts: &'a [BlockQ8],
    ys: &'a [f32],
    stride: usize,
    n: usize,
}

/// Pairs `p..p + group` against activations `t0..t0 + T`, two pairs at a time.
///
/// # Safety
/// As [`tile`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn tiles<B: PairBlock, const T: usize>(
    ctx: &Ctx<'_, B>,
    p: usize,
    group: usize,
    t0: usize,
    out: &mut [f32],
) {
    let mut q = p;
    // SAFETY: the caller's promise.
    unsafe {
        while q + 2 <= p + group {
            tile::<B, 2, T>(ctx, 2 * q, t0, out);
            q += 2;
        }
        if q < p + group {
            tile::<B, 1, T>(ctx, 2 * q, t0, out);
        }
    }
}

/// Rows `r0..r0 + 2P` (as `P` pairs) against activations `t0..t0 + T`, into
/// `out[row * n + t]`.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F, BW and VNNI.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn tile<B: PairBlock, const P: usize, const T: usize>(
    ctx: &Ctx<'_, B>,
    r0: usize,
    t0: usize,
    out: &mut [f32],
) {
    let &Ctx {
        w,
        nb,
        acts,
        ys,
        stride,
        n,
    } = ctx;
    assert!(
        (r0 + 2 * P) * nb <= w.len()
            && (t0 + T) * nb <= acts.len()
            && (r0 + 2 * P) * n <= out.len()
            && (!B::OFFSETS || ys.len() >= nb * stride && t0 + 8 <= stride)
    );
    let mut acc = [[_mm512_setzero_ps(); T]; P];
    let mut offsets = [_mm512_setzero_ps(); P];
    for b in 0..nb {
        // SAFETY: in range by the assertion above.
        let sv = if B::OFFSETS {
            let s = unsafe { ys.as_ptr().add(b * stride + t0) };
            // [y.s of activations t0..t0 + 8] in both halves.
            _mm512_castpd_ps(_mm512_broadcast_f64x4(unsafe { _mm256_loadu_pd(s.cast()) }))
        } else {
            _mm512_setzero_ps()
        };
        for (p, (acc, offsets)) in acc.iter_mut().zip(offsets.iter_mut()).enumerate() {
            let r = r0 + 2 * p;
            // SAFETY: in range by the assertion above.
            let (x0, x1) = unsafe {
                (
                    w.get_unchecked(r * nb + b),
                    w.get_unchecked((r + 1) * nb + b),
                )
            };
            // SAFETY: the CPU features.
            let (q, start) = unsafe { B::unpack(x0, x1) };
            let halves =
                |a: f32, b: f32| _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b));
            let d = halves(x0.d(), x1.d());
            for (t, a) in acc.iter_mut().enumerate() {
                // SAFETY: in range by the assertion above; 32 bytes, unaligned.
                let y = unsafe { acts.get_unchecked((t0 + t) * nb + b) };
                let qy =
                    _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) });
                // SAFETY: the CPU features.
                let sum = unsafe { B::dot(start, q, qy) };
                // x.d * y.d as one f32 product per lane, as AVX2's broadcast of it.
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(y.d));
                *a = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sum), *a);
            }
            if B::OFFSETS {
                // offsets += x.m * y.s, not fused, as AVX2.
                let m = halves(x0.m(), x1.m());
                *offsets = _mm512_add_ps(*offsets, _mm512_mul_ps(m, sv));
            }
        }
    }
    for (p, (acc, offsets)) in acc.iter().zip(&offsets).enumerate() {
        let r = r0 + 2 * p;
        let mut o = [0.0f32; 16];
        // SAFETY: 16 floats into a 16-float array.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *offsets) };
        for (t, a) in acc.iter().enumerate() {
            let mut v = [0.0f32; 16];
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(v.as_mut_ptr(), *a) };
            let (lo, hi) = (hsum8(&v[..8]), hsum8(&v[8..]));
            // Q8_0 adds nothing (not even 0.0, which would turn -0.0 into 0.0).
            let (lo, hi) = if B::OFFSETS {
                (lo + o[t], hi + o[8 + t])
            } else {
                (lo, hi)
            };
            out[r * n + t0 + t] = lo;
            out[(r + 1) * n + t0 + t] = hi;
        }
    }
}
