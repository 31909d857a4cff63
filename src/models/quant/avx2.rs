//! The AVX2 + FMA + F16C dot products and gemm, summing in llama.cpp's AVX2 order.

use super::formats::{BlockQ4_0, BlockQ5_0};
use super::{BlockQ4_1, BlockQ8, BlockQ8_0, WeightBlock};
use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1(w: &[BlockQ4_1], a: &[BlockQ8]) -> f32 {
    let low = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut offsets = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        // SAFETY: both arrays are 16 / 32 bytes; unaligned loads.
        let packed = unsafe { _mm_loadu_si128(x.qs.as_ptr().cast()) };
        let qy = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
        let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
        let qx = _mm256_and_si256(both, low);
        let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), ones);
        let scale = _mm256_set1_ps(x.d * y.d);
        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(prod), acc);
        offsets += x.m * y.s;
    }
    hsum(acc) + offsets
}

/// One Q4_1 row against four activation rows: each weight block is unpacked once.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1_x4(w: &[BlockQ4_1], a: [&[BlockQ8]; 4]) -> [f32; 4] {
    let n = w.len();
    let a = a.map(|r| &r[..n]);
    let low = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut offsets = [0.0f32; 4];
    for (i, x) in w.iter().enumerate() {
        // SAFETY: 16 bytes; unaligned load.
        let packed = unsafe { _mm_loadu_si128(x.qs.as_ptr().cast()) };
        let qx = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low);
        let (d, m) = (x.d, x.m);
        for j in 0..4 {
            let y = &a[j][i];
            // SAFETY: 32 bytes; unaligned load.
            let qy = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), ones);
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(prod), acc[j]);
            offsets[j] += m * y.s;
        }
    }
    [
        hsum(acc[0]) + offsets[0],
        hsum(acc[1]) + offsets[1],
        hsum(acc[2]) + offsets[2],
        hsum(acc[3]) + offsets[3],
    ]
}

/// A block format with 32 signed codes and one scale (Q8_0, Q4_0, Q5_0): the codes unpacked
/// to 32 signed bytes, multiplied with the activation's with the sign moved onto it (as
/// llama.cpp's `mul_sum_i8_pairs_float`; the i32 sums are exact however they are formed).
pub trait Signed32 {
    fn d(&self) -> f32;
    /// The 32 codes as signed bytes, element order.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    unsafe fn codes(&self) -> __m256i;
}

impl Signed32 for BlockQ8_0 {
    #[inline(always)]
    fn d(&self) -> f32 {
        self.d
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn codes(&self) -> __m256i {
        // SAFETY: 32 bytes; unaligned load.
        unsafe { _mm256_loadu_si256(self.qs.as_ptr().cast()) }
    }
}

/// The 32 nibbles of `qs`, low ones first, as bytes 0..16.
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: 16 bytes; unaligned load.
    let packed = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed),
        _mm256_set1_epi8(0x0F),
    )
}

impl Signed32 for BlockQ4_0 {
    #[inline(always)]
    fn d(&self) -> f32 {
        self.d
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn codes(&self) -> __m256i {
        _mm256_sub_epi8(nibbles(&self.qs), _mm256_set1_epi8(8))
    }
}

impl Signed32 for BlockQ5_0 {
    #[inline(always)]
    fn d(&self) -> f32 {
        self.d
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn codes(&self) -> __m256i {
        // Byte k gets byte k / 8 of qh, then keeps bit k % 8: 0x10 where the fifth bit is set.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(self.qh as i32),
            _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        let high = _mm256_and_si256(set, _mm256_set1_epi8(0x10));
        _mm256_sub_epi8(
            _mm256_or_si256(nibbles(&self.qs), high),
            _mm256_set1_epi8(16),
        )
    }
}

/// The eight 4-byte-group sums of signed `x` times signed `y`, as f32.
#[inline]
#[target_feature(enable = "avx2")]
fn signed_dot(qx: __m256i, qy: __m256i) -> __m256 {
    // maddubs wants one unsigned operand: |x| times y with x's sign moved onto y.
    let ax = _mm256_sign_epi8(qx, qx);
    let sy = _mm256_sign_epi8(qy, qx);
    let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
    _mm256_cvtepi32_ps(prod)
}

/// One row of a [`Signed32`] format against four activation rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_signed_x4<B: Signed32>(w: &[B], a: [&[BlockQ8]; 4]) -> [f32; 4] {
    let n = w.len();
    let a = a.map(|r| &r[..n]);
    let mut acc = [_mm256_setzero_ps(); 4];
    for (i, x) in w.iter().enumerate() {
        // SAFETY: the CPU features.
        let qx = unsafe { x.codes() };
        let d = x.d();
        for j in 0..4 {
            let y = &a[j][i];
            // SAFETY: 32 bytes; unaligned load.
            let qy = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), signed_dot(qx, qy), acc[j]);
        }
    }
    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
}

/// One row of a [`Signed32`] format against one activation row.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_signed<B: Signed32>(w: &[B], a: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        // SAFETY: the CPU features; 32 bytes, unaligned load.
        let (qx, qy) = unsafe { (x.codes(), _mm256_loadu_si256(y.qs.as_ptr().cast())) };
        let scale = _mm256_set1_ps(x.d() * y.d);
        acc = _mm256_fmadd_ps(scale, signed_dot(qx, qy), acc);
    }
    hsum(acc)
}

/// `out[r][t]` for every row `r` of `w` (`nb` blocks each) and activation `t` of `acts`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm<B: WeightBlock>(w: &[B], nb: usize, acts: &[B::Act], n: usize, out: &mut [f32]) {
    let rows = w.len() / nb;
    let row = |r: usize| &w[r * nb..(r + 1) * nb];
    let act = |t: usize| &acts[t * nb..(t + 1) * nb];
    if n == 1 {
        // One row at a time: interleaving rows here measured slower (more streams to load).
        let a = act(0);
        for (r, o) in out[..rows].iter_mut().enumerate() {
            // SAFETY: same CPU features.
            *o = unsafe { B::dot_avx2(row(r), a) };
        }
        return;
    }
    let quads = n / 4 * 4;
    for (r, o) in out.chunks_exact_mut(n).enumerate() {
        let wr = row(r);
        for t in (0..quads).step_by(4) {
            // SAFETY: same CPU features.
            let v = unsafe { B::dot4_avx2(wr, [act(t), act(t + 1), act(t + 2), act(t + 3)]) };
            o[t..t + 4].copy_from_slice(&v);
        }
        for (t, o) in o.iter_mut().enumerate().skip(quads) {
            // SAFETY: same CPU features.
            *o = unsafe { B::dot_avx2(wr, act(t)) };
        }
    }
}
