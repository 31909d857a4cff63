//! Quantized matrix kernels for the GGUF formats our models use: Q4_1 and Q8_0 weights times
//! activations quantized on the fly to Q8_1 / Q8_0, the way llama.cpp does it (so greedy
//! outputs match it).
//!
//! Each format has a scalar reference dot product and, on x86-64 with AVX2 + FMA + F16C
//! (detected at run time), a SIMD one that sums in llama.cpp's AVX2 order; tests check that
//! both agree. Where the CPU also has AVX-512 F/BW/VNNI, kernels that take two rows per register
//! and equal the AVX2 ones bit for bit run instead (see [`Kernel::detect`]). [`QMatrix::matmul`] splits
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
    /// AVX2, FMA and F16C: a row at a time, summed as llama.cpp's AVX2 kernels sum it.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VNNI: rows two to a register, summed in the AVX2 kernel's (and so
    /// llama.cpp's) order, so the results equal [`Kernel::Avx2`]'s bit for bit (see [`avx512`]).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// The fastest this CPU supports: [`Kernel::Avx512`] where it has AVX-512 F/BW/VNNI (and
    /// AVX2, FMA, F16C), else [`Kernel::Avx2`], else [`Kernel::Scalar`]. `ANYA_KERNEL=avx2` or
    /// `ANYA_KERNEL=scalar` picks a slower one (a name this CPU cannot run is ignored). The two
    /// SIMD kernels give the same results bit for bit, so the choice only changes the speed.
    pub fn detect() -> Kernel {
        let wanted = std::env::var("ANYA_KERNEL").ok();
        Kernel::pick(wanted.as_deref())
    }

    /// [`Kernel::detect`] with `wanted` in place of `ANYA_KERNEL`'s value.
    pub fn pick(wanted: Option<&str>) -> Kernel {
        if wanted == Some("scalar") {
            return Kernel::Scalar;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                if wanted != Some("avx2") && avx512::available() {
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
        unsafe { avx512::gemm(w, nb, acts, n, out) }
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
        unsafe { avx512::gemm(w, nb, acts, n, out) }
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

/// Q4_1 × Q8_1 and Q8_0 × Q8_0 with AVX-512 VNNI, summing every row exactly as [`avx2`] does
/// (which is llama.cpp's AVX2 order), so the results equal the AVX2 kernels' bit for bit.
///
/// A zmm register holds two rows side by side: row `r`'s block `b` unpacked to the 32 bytes
/// AVX2 multiplies (for Q4_1 the sixteen low nibbles, then the sixteen high ones) in its low
/// half, row `r + 1`'s in its high half. The activation block's 32 bytes go to both halves, and
/// one `vpdpbusd` gives each half the eight 4-byte-group sums that AVX2's
/// `maddubs` + `madd` give (exact integers either way). Those are converted to f32 and
/// `fmadd`ed with the scale `[x_r.d · y.d ×8 | x_{r+1}.d · y.d ×8]` into the pair's accumulator,
/// whose halves are then, lane for lane, the two rows' AVX2 accumulators; each half is reduced
/// with the same horizontal sum. Q4_1's `x.m · y.s` terms are summed per row in the same
/// sequential order (multiply, then add: not fused), eight activations to a half. Each unpacked
/// pair serves up to eight activations; a last odd row goes through [`avx2`] itself.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BlockQ4_1, BlockQ8, BlockQ8_0, WeightBlock};
    use std::arch::x86_64::*;

    /// Rows per matmul work item (eight pairs: what one activation runs against at once).
    pub const ROWS: usize = 16;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// A weight format as the pair kernels see it.
    pub trait PairBlock: WeightBlock {
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
            // SAFETY: 16 bytes each; unaligned loads.
            let (p0, p1) = unsafe {
                (
                    _mm_loadu_si128(x0.qs.as_ptr().cast()),
                    _mm_loadu_si128(x1.qs.as_ptr().cast()),
                )
            };
            // [p0, p0, p1, p1] by 128-bit lanes; the second copy of each shifted to its high
            // nibbles.
            let both =
                _mm512_shuffle_i64x2::<0>(_mm512_castsi128_si512(p0), _mm512_castsi128_si512(p1));
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
            let q = _mm512_and_si512(_mm512_srlv_epi16(both, shifts), _mm512_set1_epi8(0x0F));
            (q, _mm512_setzero_si512())
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
            let bias = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(-128), q);
            (q, _mm512_sub_epi32(_mm512_setzero_si512(), bias))
        }
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn dot(start: __m512i, w: __m512i, y: __m512i) -> __m512i {
            _mm512_dpbusd_epi32(start, _mm512_xor_si512(y, _mm512_set1_epi8(-128)), w)
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
    pub unsafe fn gemm<B: PairBlock>(
        w: &[B],
        nb: usize,
        acts: &[BlockQ8],
        n: usize,
        out: &mut [f32],
    ) {
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
                let halves = |a: f32, b: f32| {
                    _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b))
                };
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
