//! Quantized matrix kernels for the GGUF formats our models use: Q4_1 and Q8_0 weights times
//! activations quantized on the fly to Q8_1 / Q8_0, the way llama.cpp does it (so greedy
//! outputs match it).
//!
//! Each format has a scalar reference dot product and, on x86-64 with AVX2 + FMA + F16C
//! (detected at run time), a SIMD one; tests check that both agree. Where the CPU also has
//! AVX-512 F/BW/VNNI, `ANYA_AVX512=1` switches to kernels that take sixteen rows at once and
//! equal the scalar reference bit for bit (opt-in: see [`Kernel::detect`]). [`QMatrix::matmul`] splits
//! the weight rows into many small chunks on a rayon pool, so a core taken by something else
//! slows the step down instead of stalling it.

use half::f16;
use rayon::prelude::*;

/// Elements per quantization block in every format here.
pub const QK: usize = 32;

/// Q4_1: 32 weights as 4-bit codes `q`, value `d * q + m`. Codes 0..16 of `qs[j]`'s low nibble
/// are element `j`, the high nibble element `j + 16`. The file stores `d` and `m` as f16; they
/// are widened (exactly) at load, which spares the kernels two conversions per block.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f32,
    pub m: f32,
    pub qs: [u8; 16],
}

/// Q8_0: 32 weights as signed bytes, value `d * q` (`d` widened from f16 at load).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f32,
    pub qs: [i8; 32],
}

/// An activation block: 32 signed bytes with scale `d` and `s = d * Σq` (used against Q4_1's
/// offset). `d` and `s` are stored as the f32 values of their f16 rounding, as llama.cpp has them.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

impl Default for BlockQ8 {
    fn default() -> Self {
        Self {
            d: 0.0,
            s: 0.0,
            qs: [0; 32],
        }
    }
}

fn h2f(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Round to the nearest f16 and back.
pub fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Quantize one row (length a multiple of 32) into `out` (one block per 32 values).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in yb.qs.iter_mut().zip(xb) {
            let r = (v * id).round() as i32;
            *q = r as i8;
            sum += r;
        }
        yb.d = round_f16(d);
        yb.s = round_f16(sum as f32 * d);
    }
}

/// Which dot-product implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VNNI: rows sixteen at a time, one 32-bit lane per row (see
    /// [`avx512`]).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// The fastest this CPU supports.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                // Opt-in for now: its sums run in the reference's order, not llama.cpp's AVX2
                // order, and greedy SmolLM2 output then leaves llama.cpp's at three low-margin
                // reference steps (tests/real_models.rs; docs/benchmarks.md).
                if std::env::var_os("ANYA_AVX512").is_some() && avx512::available() {
                    return Kernel::Avx512;
                }
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => "avx512",
        }
    }

    /// `out[r][t] = row r of w · activation t` for all rows of `w` (`nb` blocks each) and the
    /// `n` activations in `acts`.
    pub fn gemm<B: WeightBlock>(
        self,
        w: &[B],
        nb: usize,
        acts: &[BlockQ8],
        n: usize,
        out: &mut [f32],
    ) {
        match self {
            Kernel::Scalar => {
                for (r, o) in out.chunks_exact_mut(n).enumerate() {
                    for (t, v) in o.iter_mut().enumerate() {
                        *v = B::dot_scalar(&w[r * nb..(r + 1) * nb], &acts[t * nb..(t + 1) * nb]);
                    }
                }
            }
            // SAFETY: `detect` only returns Avx2 when the CPU has AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::gemm(w, nb, acts, n, out) },
            // SAFETY: `detect` only returns Avx512 when the CPU also has AVX-512 F, BW and VNNI.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { B::gemm_avx512(w, nb, acts, n, out) },
        }
    }

    /// Rows per matmul work item: a multiple of what the kernel handles at once.
    fn row_group(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::ROWS,
            _ => 4,
        }
    }
}

/// The reference Q4_1 · Q8_1 dot product.
pub fn dot_q4_1_scalar(w: &[BlockQ4_1], a: &[BlockQ8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let mut acc = 0i32;
        for j in 0..16 {
            acc += (x.qs[j] & 0x0F) as i32 * y.qs[j] as i32;
            acc += (x.qs[j] >> 4) as i32 * y.qs[j + 16] as i32;
        }
        sum += x.d * y.d * acc as f32 + x.m * y.s;
    }
    sum
}

/// The reference Q8_0 · Q8_0 dot product.
pub fn dot_q8_0_scalar(w: &[BlockQ8_0], a: &[BlockQ8]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let acc: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sum += x.d * y.d * acc as f32;
    }
    sum
}

/// A weight block format and its dot products with activation blocks.
pub trait WeightBlock: Copy + Send + Sync {
    fn dot_scalar(w: &[Self], a: &[BlockQ8]) -> f32;
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_avx2(w: &[Self], a: &[BlockQ8]) -> f32;
    /// One row against four activations, each weight block read once.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot4_avx2(w: &[Self], a: [&[BlockQ8]; 4]) -> [f32; 4];
    /// [`Kernel::gemm`] on CPUs with AVX-512 F, BW and VNNI (and AVX2, FMA, F16C).
    ///
    /// # Safety
    /// The CPU must support all of those.
    #[cfg(target_arch = "x86_64")]
    unsafe fn gemm_avx512(w: &[Self], nb: usize, acts: &[BlockQ8], n: usize, out: &mut [f32]);
}

impl WeightBlock for BlockQ4_1 {
    fn dot_scalar(w: &[Self], a: &[BlockQ8]) -> f32 {
        dot_q4_1_scalar(w, a)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_avx2(w: &[Self], a: &[BlockQ8]) -> f32 {
        // SAFETY: the caller's promise.
        unsafe { avx2::dot_q4_1(w, a) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot4_avx2(w: &[Self], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        // SAFETY: the caller's promise.
        unsafe { avx2::dot_q4_1_x4(w, a) }
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn gemm_avx512(w: &[Self], nb: usize, acts: &[BlockQ8], n: usize, out: &mut [f32]) {
        // SAFETY: the caller's promise.
        unsafe { avx512::gemm_q4_1(w, nb, acts, n, out) }
    }
}

impl WeightBlock for BlockQ8_0 {
    fn dot_scalar(w: &[Self], a: &[BlockQ8]) -> f32 {
        dot_q8_0_scalar(w, a)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_avx2(w: &[Self], a: &[BlockQ8]) -> f32 {
        // SAFETY: the caller's promise.
        unsafe { avx2::dot_q8_0(w, a) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot4_avx2(w: &[Self], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        // SAFETY: the caller's promise.
        unsafe { avx2::dot_q8_0_x4(w, a) }
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn gemm_avx512(w: &[Self], nb: usize, acts: &[BlockQ8], n: usize, out: &mut [f32]) {
        // SAFETY: the caller's promise.
        unsafe { avx512::gemm_q8_0(w, nb, acts, n, out) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockQ4_1, BlockQ8, BlockQ8_0, WeightBlock};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
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

    /// One Q8_0 row against four activation rows.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0_x4(w: &[BlockQ8_0], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        let n = w.len();
        let a = a.map(|r| &r[..n]);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (i, x) in w.iter().enumerate() {
            // SAFETY: 32 bytes; unaligned load.
            let qx = unsafe { _mm256_loadu_si256(x.qs.as_ptr().cast()) };
            let ax = _mm256_sign_epi8(qx, qx);
            let d = x.d;
            for j in 0..4 {
                let y = &a[j][i];
                // SAFETY: 32 bytes; unaligned load.
                let qy = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
                let sy = _mm256_sign_epi8(qy, qx);
                let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
                acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(prod), acc[j]);
            }
        }
        [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for (x, y) in w.iter().zip(a) {
            // SAFETY: both arrays are 32 bytes; unaligned loads.
            let qx = unsafe { _mm256_loadu_si256(x.qs.as_ptr().cast()) };
            let qy = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            // maddubs wants one unsigned operand: |x| times y with x's sign moved onto y.
            let ax = _mm256_sign_epi8(qx, qx);
            let sy = _mm256_sign_epi8(qy, qx);
            let prod = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
            let scale = _mm256_set1_ps(x.d * y.d);
            acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(prod), acc);
        }
        hsum(acc)
    }

    /// `out[r][t]` for every row `r` of `w` (`nb` blocks each) and activation `t` of `acts`.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn gemm<B: WeightBlock>(
        w: &[B],
        nb: usize,
        acts: &[BlockQ8],
        n: usize,
        out: &mut [f32],
    ) {
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
}

/// Q4_1 × Q8_1 with AVX-512 VNNI. Sixteen weight rows go side by side, one 32-bit lane each:
/// per block, four gathers fetch bytes `4k..4k + 4` of every row's codes (their low nibbles are
/// elements `4k..4k + 4`, the high ones `16 + 4k..`), and `vpdpbusd` multiplies them with the
/// activation's matching four bytes broadcast to every lane. Each lane thus holds one row's
/// exact integer block sum, and the block is added to the row's total in the same order and with
/// the same f32 operations as [`dot_q4_1_scalar`]: the results equal the reference bit for bit,
/// whatever the number of activations. Up to eight activations share each gathered block.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BlockQ4_1, BlockQ8, BlockQ8_0, WeightBlock};
    use std::arch::x86_64::*;

    /// Rows handled together.
    pub const ROWS: usize = 16;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// `out[r][t]` for every row `r` of `w` (`nb` blocks each) and activation `t` of `acts`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn gemm_q4_1(
        w: &[BlockQ4_1],
        nb: usize,
        acts: &[BlockQ8],
        n: usize,
        out: &mut [f32],
    ) {
        // SAFETY: the caller's promise.
        unsafe {
            drive(w, nb, acts, n, out, |wg, t, og| {
                let left = n - t;
                if left >= 8 {
                    tile::<8>(wg, nb, acts, t, n, og);
                    8
                } else if left >= 4 {
                    tile::<4>(wg, nb, acts, t, n, og);
                    4
                } else if left >= 2 {
                    tile::<2>(wg, nb, acts, t, n, og);
                    2
                } else {
                    tile::<1>(wg, nb, acts, t, n, og);
                    1
                }
            })
        }
    }

    /// The same for Q8_0 rows.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn gemm_q8_0(
        w: &[BlockQ8_0],
        nb: usize,
        acts: &[BlockQ8],
        n: usize,
        out: &mut [f32],
    ) {
        // SAFETY: the caller's promise.
        unsafe {
            drive(w, nb, acts, n, out, |wg, t, og| {
                let left = n - t;
                if left >= 8 {
                    tile_q8_0::<8>(wg, nb, acts, t, n, og);
                    8
                } else if left >= 4 {
                    tile_q8_0::<4>(wg, nb, acts, t, n, og);
                    4
                } else if left >= 2 {
                    tile_q8_0::<2>(wg, nb, acts, t, n, og);
                    2
                } else {
                    tile_q8_0::<1>(wg, nb, acts, t, n, og);
                    1
                }
            })
        }
    }

    /// Groups of sixteen rows through `tile(rows, first activation, out rows) -> activations
    /// done`; rows past the last whole group through the scalar reference (the same bits).
    ///
    /// # Safety
    /// `tile` must be safe to call on this CPU.
    #[inline(always)]
    unsafe fn drive<B: WeightBlock>(
        w: &[B],
        nb: usize,
        acts: &[BlockQ8],
        n: usize,
        out: &mut [f32],
        mut tile: impl FnMut(&[B], usize, &mut [f32]) -> usize,
    ) {
        let rows = w.len() / nb;
        let groups = rows / ROWS;
        for g in 0..groups {
            let wg = &w[g * ROWS * nb..(g + 1) * ROWS * nb];
            let og = &mut out[g * ROWS * n..(g + 1) * ROWS * n];
            let mut t = 0;
            while t < n {
                t += tile(wg, t, og);
            }
        }
        for r in groups * ROWS..rows {
            for t in 0..n {
                out[r * n + t] =
                    B::dot_scalar(&w[r * nb..(r + 1) * nb], &acts[t * nb..(t + 1) * nb]);
            }
        }
    }

    /// Sixteen rows (`wg`) against activations `t0..t0 + T`, into `og[row][t]` (`n` per row).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI; `wg` holds 16 rows of `nb` blocks and
    /// `acts` at least `t0 + T` activations.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const T: usize>(
        wg: &[BlockQ4_1],
        nb: usize,
        acts: &[BlockQ8],
        t0: usize,
        n: usize,
        og: &mut [f32],
    ) {
        assert!(wg.len() >= ROWS * nb && acts.len() >= (t0 + T) * nb && og.len() >= ROWS * n);
        let stride = (nb * std::mem::size_of::<BlockQ4_1>()) as i32;
        let lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        let offsets = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(stride));
        let low = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let blk = &wg[b];
            let base = (blk as *const BlockQ4_1).cast::<u8>();
            let d_ptr = std::ptr::addr_of!(blk.d).cast::<u8>();
            let m_ptr = std::ptr::addr_of!(blk.m).cast::<u8>();
            let q_ptr = blk.qs.as_ptr();
            debug_assert_eq!(d_ptr, base);
            // SAFETY: lane i reads row i's block b (byte offset i * stride from row 0's), which
            // lies inside `wg` by the assertion above.
            let (wd, wm, q) = unsafe {
                (
                    _mm512_i32gather_ps::<1>(offsets, d_ptr.cast()),
                    _mm512_i32gather_ps::<1>(offsets, m_ptr.cast()),
                    [
                        _mm512_i32gather_epi32::<1>(offsets, q_ptr.cast()),
                        _mm512_i32gather_epi32::<1>(offsets, q_ptr.add(4).cast()),
                        _mm512_i32gather_epi32::<1>(offsets, q_ptr.add(8).cast()),
                        _mm512_i32gather_epi32::<1>(offsets, q_ptr.add(12).cast()),
                    ],
                )
            };
            let mut lo = [_mm512_setzero_si512(); 4];
            let mut hi = [_mm512_setzero_si512(); 4];
            for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(q.iter()) {
                *l = _mm512_and_si512(v, low);
                *h = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
            }
            for (j, a) in acc.iter_mut().enumerate() {
                let y = &acts[(t0 + j) * nb + b];
                let yq = y.qs.as_ptr().cast::<i32>();
                let mut sum = _mm512_setzero_si512();
                for k in 0..4 {
                    // SAFETY: bytes 4k..4k + 4 and 16 + 4k..20 + 4k of the 32; unaligned reads.
                    let (pl, ph) =
                        unsafe { (yq.add(k).read_unaligned(), yq.add(k + 4).read_unaligned()) };
                    sum = _mm512_dpbusd_epi32(sum, lo[k], _mm512_set1_epi32(pl));
                    sum = _mm512_dpbusd_epi32(sum, hi[k], _mm512_set1_epi32(ph));
                }
                // sum += d * y.d * sumi + m * y.s, as the reference (no fused multiply-add).
                let scaled = _mm512_mul_ps(
                    _mm512_mul_ps(wd, _mm512_set1_ps(y.d)),
                    _mm512_cvtepi32_ps(sum),
                );
                let offset = _mm512_mul_ps(wm, _mm512_set1_ps(y.s));
                *a = _mm512_add_ps(*a, _mm512_add_ps(scaled, offset));
            }
        }
        for (j, a) in acc.iter().enumerate() {
            let mut v = [0.0f32; ROWS];
            // SAFETY: 16 floats into a 16-float array.
            unsafe { _mm512_storeu_ps(v.as_mut_ptr(), *a) };
            for (i, x) in v.iter().enumerate() {
                og[i * n + t0 + j] = *x;
            }
        }
    }

    /// Sixteen Q8_0 rows against activations `t0..t0 + T`. `vpdpbusd` wants unsigned bytes on
    /// one side: the weights' magnitudes, with their signs moved onto the activation bytes
    /// (which never hold -128, so negating them is exact).
    ///
    /// # Safety
    /// As [`tile`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_q8_0<const T: usize>(
        wg: &[BlockQ8_0],
        nb: usize,
        acts: &[BlockQ8],
        t0: usize,
        n: usize,
        og: &mut [f32],
    ) {
        assert!(wg.len() >= ROWS * nb && acts.len() >= (t0 + T) * nb && og.len() >= ROWS * n);
        let stride = (nb * std::mem::size_of::<BlockQ8_0>()) as i32;
        let lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        let offsets = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(stride));
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let blk = &wg[b];
            let d_ptr = std::ptr::addr_of!(blk.d).cast::<u8>();
            let q_ptr = blk.qs.as_ptr().cast::<u8>();
            // SAFETY: lane i reads row i's block b, inside `wg` by the assertion above.
            let wd = unsafe { _mm512_i32gather_ps::<1>(offsets, d_ptr.cast()) };
            let mut mag = [zero; 8];
            let mut neg = [0u64; 8];
            for k in 0..8 {
                // SAFETY: bytes 4k..4k + 4 of the 32 codes of each row's block b.
                let q = unsafe { _mm512_i32gather_epi32::<1>(offsets, q_ptr.add(4 * k).cast()) };
                mag[k] = _mm512_abs_epi8(q);
                neg[k] = _mm512_movepi8_mask(q);
            }
            for (j, a) in acc.iter_mut().enumerate() {
                let y = &acts[(t0 + j) * nb + b];
                let yq = y.qs.as_ptr().cast::<i32>();
                let mut sum = _mm512_setzero_si512();
                for k in 0..8 {
                    // SAFETY: bytes 4k..4k + 4 of the 32; unaligned read.
                    let p = _mm512_set1_epi32(unsafe { yq.add(k).read_unaligned() });
                    let signed = _mm512_mask_sub_epi8(p, neg[k], zero, p);
                    sum = _mm512_dpbusd_epi32(sum, mag[k], signed);
                }
                // sum += d * y.d * sumi, as the reference.
                let scaled = _mm512_mul_ps(
                    _mm512_mul_ps(wd, _mm512_set1_ps(y.d)),
                    _mm512_cvtepi32_ps(sum),
                );
                *a = _mm512_add_ps(*a, scaled);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            let mut v = [0.0f32; ROWS];
            // SAFETY: 16 floats into a 16-float array.
            unsafe { _mm512_storeu_ps(v.as_mut_ptr(), *a) };
            for (i, x) in v.iter().enumerate() {
                og[i * n + t0 + j] = *x;
            }
        }
    }
}

/// A weight matrix of `rows × cols` (each row one output), in the layout of its GGUF tensor.
pub enum QData {
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
}

pub struct QMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: QData,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QuantError(pub String);

/// Size in bytes of one block of a GGML type we read, by its GGML type id.
pub fn block_bytes(ggml_type: u32) -> Option<usize> {
    match ggml_type {
        3 => Some(20), // Q4_1
        8 => Some(34), // Q8_0
        _ => None,
    }
}

impl QMatrix {
    /// Read a GGUF tensor's raw bytes (GGML type id `ggml_type`, `rows × cols`).
    pub fn from_bytes(
        ggml_type: u32,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<QMatrix, QuantError> {
        if !cols.is_multiple_of(QK) {
            return Err(QuantError(format!(
                "{cols} columns is not a multiple of {QK}"
            )));
        }
        let blocks = rows * cols / QK;
        let size = block_bytes(ggml_type)
            .ok_or_else(|| QuantError(format!("GGML type {ggml_type} is not supported")))?;
        if bytes.len() != blocks * size {
            return Err(QuantError(format!(
                "{} bytes for {blocks} blocks of {size}",
                bytes.len()
            )));
        }
        let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let data = match ggml_type {
            3 => QData::Q4_1(
                bytes
                    .chunks_exact(20)
                    .map(|b| {
                        let mut qs = [0u8; 16];
                        qs.copy_from_slice(&b[4..20]);
                        BlockQ4_1 {
                            d: h2f(u16_at(b, 0)),
                            m: h2f(u16_at(b, 2)),
                            qs,
                        }
                    })
                    .collect(),
            ),
            _ => QData::Q8_0(
                bytes
                    .chunks_exact(34)
                    .map(|b| {
                        let mut qs = [0i8; 32];
                        for (q, &v) in qs.iter_mut().zip(&b[2..34]) {
                            *q = v as i8;
                        }
                        BlockQ8_0 {
                            d: h2f(u16_at(b, 0)),
                            qs,
                        }
                    })
                    .collect(),
            ),
        };
        Ok(QMatrix { rows, cols, data })
    }

    /// Stack matrices with the same column count and format into one (rows appended), so
    /// projections that share an input run as one matmul.
    pub fn concat(parts: Vec<QMatrix>) -> Result<QMatrix, QuantError> {
        let mut iter = parts.into_iter();
        let mut first = iter
            .next()
            .ok_or_else(|| QuantError("nothing to concatenate".into()))?;
        for m in iter {
            if m.cols != first.cols {
                return Err(QuantError("column counts differ".into()));
            }
            match (&mut first.data, m.data) {
                (QData::Q4_1(a), QData::Q4_1(b)) => a.extend(b),
                (QData::Q8_0(a), QData::Q8_0(b)) => a.extend(b),
                _ => return Err(QuantError("formats differ".into())),
            }
            first.rows += m.rows;
        }
        Ok(first)
    }

    pub fn blocks_per_row(&self) -> usize {
        self.cols / QK
    }

    /// Row `r` as f32 (an embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let nb = self.blocks_per_row();
        match &self.data {
            QData::Q4_1(b) => {
                for (blk, o) in b[r * nb..(r + 1) * nb].iter().zip(out.chunks_exact_mut(QK)) {
                    let (d, m) = (blk.d, blk.m);
                    for j in 0..16 {
                        o[j] = (blk.qs[j] & 0x0F) as f32 * d + m;
                        o[j + 16] = (blk.qs[j] >> 4) as f32 * d + m;
                    }
                }
            }
            QData::Q8_0(b) => {
                for (blk, o) in b[r * nb..(r + 1) * nb].iter().zip(out.chunks_exact_mut(QK)) {
                    let d = blk.d;
                    for (v, &q) in o.iter_mut().zip(&blk.qs) {
                        *v = q as f32 * d;
                    }
                }
            }
        }
    }

    /// `out[t][r] = row r · activation t` for the `n` activation rows in `acts`
    /// (`blocks_per_row` blocks each). `scratch` is reused between calls.
    pub fn matmul(
        &self,
        kernel: Kernel,
        acts: &[BlockQ8],
        n: usize,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let nb = self.blocks_per_row();
        let rows = self.rows;
        debug_assert_eq!(acts.len(), n * nb);
        debug_assert_eq!(out.len(), n * rows);
        // About 16 chunks of rows per matmul: enough for both cores to stay busy and for one to
        // take over the rest when the other is held up, few enough that scheduling is cheap.
        let group = kernel.row_group();
        let chunk = rows.div_ceil(16).max(4).div_ceil(group) * group;
        let dot_rows = |r0: usize, dst: &mut [f32]| {
            // dst is rows r0.. of the transposed result: [row][t]
            let r1 = r0 + dst.len() / n;
            match &self.data {
                QData::Q4_1(b) => kernel.gemm(&b[r0 * nb..r1 * nb], nb, acts, n, dst),
                QData::Q8_0(b) => kernel.gemm(&b[r0 * nb..r1 * nb], nb, acts, n, dst),
            }
        };
        if n == 1 {
            out.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(c, dst)| dot_rows(c * chunk, dst));
            return;
        }
        scratch.clear();
        scratch.resize(n * rows, 0.0);
        scratch
            .par_chunks_mut(chunk * n)
            .enumerate()
            .for_each(|(c, dst)| dot_rows(c * chunk, dst));
        for (r, col) in scratch.chunks_exact(n).enumerate() {
            for (t, &v) in col.iter().enumerate() {
                out[t * rows + r] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream in [-1, 1).
    fn noise(seed: u64, n: usize) -> Vec<f32> {
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

    /// The AVX-512 kernels equal the scalar reference bit for bit, for every number of
    /// activations (tiles of 8, 4, 2, 1) and for rows past the last group of sixteen.
    #[test]
    fn avx512_gemm_equals_the_reference_exactly() {
        #[cfg(target_arch = "x86_64")]
        let k = if avx512::available() {
            Kernel::Avx512
        } else {
            eprintln!("skipped: this CPU lacks AVX-512 F/BW/VNNI");
            return;
        };
        #[cfg(not(target_arch = "x86_64"))]
        let k = Kernel::Scalar;
        let (rows, cols) = (37, 96);
        let nb = cols / QK;
        let w = noise(11, rows * cols);
        for (ty, bytes) in [(3, q4_1_bytes(&w)), (8, q8_0_bytes(&w))] {
            let m = QMatrix::from_bytes(ty, rows, cols, &bytes).unwrap();
            for n in 1..=13 {
                let x: Vec<f32> = noise(20 + n as u64, n * cols)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * (1 + i % 7) as f32)
                    .collect();
                let mut a = vec![BlockQ8::default(); n * nb];
                for (xr, ar) in x.chunks_exact(cols).zip(a.chunks_exact_mut(nb)) {
                    quantize_row(xr, ar);
                }
                let mut out = vec![0.0; rows * n];
                let reference = |r: usize, t: usize| {
                    let at = &a[t * nb..(t + 1) * nb];
                    match &m.data {
                        QData::Q4_1(b) => dot_q4_1_scalar(&b[r * nb..(r + 1) * nb], at),
                        QData::Q8_0(b) => dot_q8_0_scalar(&b[r * nb..(r + 1) * nb], at),
                    }
                };
                match &m.data {
                    QData::Q4_1(b) => k.gemm(b, nb, &a, n, &mut out),
                    QData::Q8_0(b) => k.gemm(b, nb, &a, n, &mut out),
                }
                let mut mm = vec![0.0; n * rows];
                m.matmul(k, &a, n, &mut mm, &mut Vec::new());
                for (i, &got) in out.iter().enumerate() {
                    let (r, t) = (i / n, i % n);
                    let want = reference(r, t);
                    assert_eq!(got.to_bits(), want.to_bits(), "type {ty} n {n} r {r} t {t}");
                    assert_eq!(
                        mm[t * rows + r].to_bits(),
                        want.to_bits(),
                        "matmul {ty} n {n}"
                    );
                }
            }
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
        assert!(QMatrix::from_bytes(2, 1, 32, &[0; 18]).is_err());
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
}
