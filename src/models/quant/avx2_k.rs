//! The K-quants (Q4_K, Q5_K, Q6_K) times Q8_K with AVX2 + FMA, summing as llama.cpp's AVX2
//! kernels do (see [`super::scalar`] for the order, which these equal bit for bit).
//!
//! Each kernel takes `N` activation rows (1, or 4 for batches) against one weight row: a weight
//! block's codes are unpacked once and multiplied with each activation's block in turn, every
//! activation keeping its own accumulators, so the results are those of `N` single dots.

use super::acts::BlockQ8K;
use super::avx2::hsum;
use super::formats::{BlockQ4K, BlockQ5K, BlockQ6K};
use std::arch::x86_64::*;

/// Q4_K and Q5_K as the shared kernel sees them.
pub trait KBlock {
    /// Q4_K sums the mins' terms in four f32 lanes (fused with `dmin`, lanes reduced at the
    /// end); Q5_K converts each block's integer total and fuses it into one f32.
    const MIN_LANES: bool;
    fn d(&self) -> f32;
    fn dmin(&self) -> f32;
    fn scales(&self) -> &[u8; 8];
    fn mins(&self) -> &[u8; 8];
    /// The unsigned codes of elements `64j..64j + 32` and `64j + 32..64j + 64`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    unsafe fn codes(&self, j: usize) -> (__m256i, __m256i);
}

/// The low and high nibbles of `qs[32j..32j + 32]`.
#[inline]
#[target_feature(enable = "avx2")]
fn nibble_pair(qs: &[u8; 128], j: usize) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(0x0F);
    // SAFETY: 32 bytes at 32j <= 96; unaligned load.
    let bits = unsafe { _mm256_loadu_si256(qs[32 * j..32 * j + 32].as_ptr().cast()) };
    (
        _mm256_and_si256(bits, m4),
        _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4),
    )
}

impl KBlock for BlockQ4K {
    const MIN_LANES: bool = true;
    #[inline(always)]
    fn d(&self) -> f32 {
        self.d
    }
    #[inline(always)]
    fn dmin(&self) -> f32 {
        self.dmin
    }
    #[inline(always)]
    fn scales(&self) -> &[u8; 8] {
        &self.scales
    }
    #[inline(always)]
    fn mins(&self) -> &[u8; 8] {
        &self.mins
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn codes(&self, j: usize) -> (__m256i, __m256i) {
        nibble_pair(&self.qs, j)
    }
}

impl KBlock for BlockQ5K {
    const MIN_LANES: bool = false;
    #[inline(always)]
    fn d(&self) -> f32 {
        self.d
    }
    #[inline(always)]
    fn dmin(&self) -> f32 {
        self.dmin
    }
    #[inline(always)]
    fn scales(&self) -> &[u8; 8] {
        &self.scales
    }
    #[inline(always)]
    fn mins(&self) -> &[u8; 8] {
        &self.mins
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn codes(&self, j: usize) -> (__m256i, __m256i) {
        let (lo, hi) = nibble_pair(&self.qs, j);
        // SAFETY: 32 bytes; unaligned load.
        let qh = unsafe { _mm256_loadu_si256(self.qh.as_ptr().cast()) };
        // Bits 2j and 2j + 1 of each byte to bit 0 and 1 (what crosses in from the next byte
        // lands at bit 8 - 2j or above, not read), then each to bit 4.
        let h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * j as i32));
        let bit4 = _mm256_set1_epi8(0x10);
        (
            _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(h, 4), bit4)),
            _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(h, 3), bit4)),
        )
    }
}

/// The sixteen i16 `bsums` of `y` summed in pairs (the sums over each 32 values, as `hadd`).
#[inline]
#[target_feature(enable = "avx2")]
fn sums32(y: &BlockQ8K) -> __m128i {
    // SAFETY: 32 bytes; unaligned load.
    let b = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
    _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1))
}

/// `x` (unsigned bytes) times `y` (signed), in 4-byte groups, each group's pair sums times
/// the i16 `scale`.
#[inline]
#[target_feature(enable = "avx2")]
fn scaled(scale: __m256i, x: __m256i, y: &[i8]) -> __m256i {
    // SAFETY: 32 bytes (the callers pass 32-byte slices); unaligned load.
    let qy = unsafe { _mm256_loadu_si256(y[..32].as_ptr().cast()) };
    _mm256_madd_epi16(scale, _mm256_maddubs_epi16(x, qy))
}

/// One Q4_K or Q5_K row against `N` Q8_K activation rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_k<B: KBlock, const N: usize>(w: &[B], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let n = w.len();
    let a = a.map(|r| &r[..n]);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut acc_m = [_mm_setzero_ps(); N];
    let mut summs = [0.0f32; N];
    for (i, x) in w.iter().enumerate() {
        // SAFETY: 8 bytes; unaligned load.
        let mins = _mm_cvtepu8_epi16(unsafe { _mm_loadl_epi64(x.mins().as_ptr().cast()) });
        for t in 0..N {
            let y = &a[t][i];
            let dmin = -y.d * x.dmin();
            let prod = _mm_madd_epi16(mins, sums32(y));
            if B::MIN_LANES {
                acc_m[t] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[t]);
            } else {
                let p = _mm_add_epi32(prod, _mm_unpackhi_epi64(prod, prod));
                let total = _mm_cvtsi128_si32(_mm_add_epi32(p, _mm_srli_si128(p, 4)));
                summs[t] = dmin.mul_add(total as f32, summs[t]);
            }
        }
        let mut sumi = [_mm256_setzero_si256(); N];
        let sc = x.scales();
        for j in 0..4 {
            // SAFETY: the CPU features.
            let (lo, hi) = unsafe { x.codes(j) };
            let (sl, sh) = (
                _mm256_set1_epi16(sc[2 * j] as i16),
                _mm256_set1_epi16(sc[2 * j + 1] as i16),
            );
            for t in 0..N {
                let q = &a[t][i].qs[64 * j..64 * j + 64];
                let s = _mm256_add_epi32(scaled(sl, lo, &q[..32]), scaled(sh, hi, &q[32..]));
                sumi[t] = _mm256_add_epi32(sumi[t], s);
            }
        }
        for t in 0..N {
            let d = _mm256_set1_ps(a[t][i].d * x.d());
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        }
    }
    std::array::from_fn(|t| {
        let m = if B::MIN_LANES {
            let m = _mm_add_ps(acc_m[t], _mm_movehl_ps(acc_m[t], acc_m[t]));
            _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)))
        } else {
            summs[t]
        };
        hsum(acc[t]) + m
    })
}

/// The codes of the four 32-element groups of half `h` of a Q6_K block (unsigned, 0..64).
#[inline]
#[target_feature(enable = "avx2")]
fn q6_codes(x: &BlockQ6K, h: usize) -> [__m256i; 4] {
    // SAFETY: 32-byte unaligned loads inside the arrays (64h + 32 <= 96, 32h <= 32).
    let (l0, l1, hb) = unsafe {
        (
            _mm256_loadu_si256(x.ql[64 * h..].as_ptr().cast()),
            _mm256_loadu_si256(x.ql[64 * h + 32..].as_ptr().cast()),
            _mm256_loadu_si256(x.qh[32 * h..].as_ptr().cast()),
        )
    };
    let (m15, top) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30));
    // Bits 2k, 2k + 1 of qh to bits 4, 5 (bits shifted across bytes are masked off).
    [
        _mm256_or_si256(
            _mm256_and_si256(l0, m15),
            _mm256_and_si256(_mm256_slli_epi16(hb, 4), top),
        ),
        _mm256_or_si256(
            _mm256_and_si256(l1, m15),
            _mm256_and_si256(_mm256_slli_epi16(hb, 2), top),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(l0, 4), m15),
            _mm256_and_si256(hb, top),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(l1, 4), m15),
            _mm256_and_si256(_mm256_srli_epi16(hb, 2), top),
        ),
    ]
}

/// One Q6_K row against `N` Q8_K activation rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k<const N: usize>(w: &[BlockQ6K], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let n = w.len();
    let a = a.map(|r| &r[..n]);
    let mut acc = [_mm256_setzero_ps(); N];
    for (i, x) in w.iter().enumerate() {
        let mut sumi = [_mm256_setzero_si256(); N];
        for h in 0..2 {
            let codes = q6_codes(x, h);
            for (k, &q) in codes.iter().enumerate() {
                let s = 8 * h + 2 * k;
                // Sixteen values per scale: the first eight i16 lanes one, the last eight the
                // next.
                let scale = _mm256_set_m128i(
                    _mm_set1_epi16(x.scales[s + 1] as i16),
                    _mm_set1_epi16(x.scales[s] as i16),
                );
                for t in 0..N {
                    let y = &a[t][i].qs[128 * h + 32 * k..128 * h + 32 * k + 32];
                    sumi[t] = _mm256_add_epi32(sumi[t], scaled(scale, q, y));
                }
            }
        }
        // SAFETY: 16 bytes; unaligned load.
        let sc16 = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(x.scales.as_ptr().cast()) });
        for t in 0..N {
            let y = &a[t][i];
            // SAFETY: 32 bytes; unaligned load.
            let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, sc16), 5);
            let d = _mm256_set1_ps(y.d * x.d);
            let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[t], offset));
            acc[t] = _mm256_fmadd_ps(d, v, acc[t]);
        }
    }
    std::array::from_fn(|t| hsum(acc[t]))
}
