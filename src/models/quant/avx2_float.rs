//! F16, BF16 and F32 rows times activations of the same type with AVX2 + FMA + F16C, in the
//! order of `ggml_vec_dot_f16` / `_bf16` / `_f32`'s AVX2 paths (see [`super::scalar`], which
//! these equal bit for bit): four 8-lane accumulators over each run of 32 values, then GGML's
//! reduction, then the leftover values one by one.

use super::avx2::hsum;
use super::formats::{Bf16, F16};
use super::scalar;
use std::arch::x86_64::*;

/// An element type the float kernels read.
pub trait Lanes: Copy {
    /// BF16 reduces its four accumulators as `ggml_vec_dot_bf16` does; the others as
    /// `GGML_F32x8_REDUCE`.
    const BF16: bool;
    /// F32 sums its leftover products in f32; F16 and BF16 in f64.
    const F32: bool;
    /// Eight values from `p` as f32.
    ///
    /// # Safety
    /// The CPU must support AVX2 and F16C, and `p` must point at 8 values.
    unsafe fn load8(p: *const Self) -> __m256;
    fn to_f32(self) -> f32;
}

impl Lanes for F16 {
    const BF16: bool = false;
    const F32: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(p: *const Self) -> __m256 {
        // SAFETY: the caller's promise; unaligned load.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        F16::to_f32(self)
    }
}

impl Lanes for Bf16 {
    const BF16: bool = true;
    const F32: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(p: *const Self) -> __m256 {
        // SAFETY: the caller's promise; unaligned load.
        let h = unsafe { _mm_loadu_si128(p.cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        Bf16::to_f32(self)
    }
}

impl Lanes for f32 {
    const BF16: bool = false;
    const F32: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(p: *const Self) -> __m256 {
        // SAFETY: the caller's promise; unaligned load.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// The four accumulators reduced to one value.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn reduce<T: Lanes>(s: [__m256; 4]) -> f32 {
    let v = _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
    if T::BF16 {
        return hsum(v);
    }
    let t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let t = _mm_hadd_ps(t, t);
    _mm_cvtss_f32(_mm_hadd_ps(t, t))
}

/// The total with the leftover products `x[k] · y[k]` for `k` in `from..`: F32 sums them in
/// f32 as [`scalar::f32_tail`] does, F16 and BF16 in f64.
#[inline(always)]
fn tail<T: Lanes>(total: f32, x: &[T], y: &[T], from: usize) -> f32 {
    if T::F32 {
        let n = x.len().min(y.len());
        return scalar::f32_tail(total, from, n, |k| (x[k].to_f32(), y[k].to_f32()));
    }
    let s = x[from..]
        .iter()
        .zip(&y[from..])
        .fold(total as f64, |s, (a, b)| {
            s + (a.to_f32() * b.to_f32()) as f64
        });
    s as f32
}

/// One row `w` against `N` activation rows of the same element type.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_float<T: Lanes, const N: usize>(w: &[T], a: [&[T]; N]) -> [f32; N] {
    let n = w.len();
    let a = a.map(|r| &r[..n]);
    let runs = n & !31;
    let mut acc = [[_mm256_setzero_ps(); 4]; N];
    for i in (0..runs).step_by(32) {
        for j in 0..4 {
            let at = i + 8 * j;
            // SAFETY: at + 8 <= runs <= n, the length of `w` and of each `a[t]`; the CPU
            // features.
            let x = unsafe { T::load8(w.as_ptr().add(at)) };
            for (sums, row) in acc.iter_mut().zip(&a) {
                let y = unsafe { T::load8(row.as_ptr().add(at)) };
                sums[j] = _mm256_fmadd_ps(x, y, sums[j]);
            }
        }
    }
    std::array::from_fn(|t| tail(reduce::<T>(acc[t]), w, a[t], runs))
}
