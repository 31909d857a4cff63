//! Quantized matrix kernels for the GGUF weight types models ship with: Q4_0, Q4_1, Q5_0 and
//! Q8_0 weights times activations quantized on the fly to Q8_1 / Q8_0 ([`BlockQ8`]), the
//! K-quants Q4_K, Q5_K and Q6_K times Q8_K activations ([`BlockQ8K`]), and F16, BF16 and F32
//! weights times activations rounded to the same type, the way llama.cpp does it (so greedy
//! outputs match it).
//!
//! Each format has a scalar reference dot product ([`scalar`]) and, on x86-64 with AVX2 + FMA +
//! F16C (detected at run time), a SIMD one that sums in llama.cpp's AVX2 order; tests check that
//! both agree bit for bit. Where the CPU also has AVX-512 F/BW/VNNI, kernels that take two rows
//! per register and equal the AVX2 ones bit for bit run instead for Q4_0, Q4_1, Q5_0 and Q8_0
//! (see [`Kernel::detect`]); the other formats run their AVX2 kernels there.
//! [`QMatrix::matmul_acts`] quantizes an [`Acts`] input into what the matrix needs (once per
//! input, however many matrices read it) and splits the weight rows into many small chunks on a
//! rayon pool, so a core taken by something else slows the step down instead of stalling it.
//!
//! Where llama.cpp's order is a compiler's choice: GCC (`-std=gnu11`) contracts a multiply and
//! an add written apart into one FMA. Its Q5_K kernel's `summs += dmin * sum` and its BF16 AVX2
//! loop are fused that way, and so are ours; its F32 dot's leftover values (a row length not a
//! multiple of 32) are summed as GCC 12 vectorizes that loop (see [`scalar`]). Its Q4_1
//! kernel's `summs += m * s` is fused too, but `m · s`, a product of two f16 values, is exact in
//! f32, so our multiply-then-add gives the same bits. Checked against this machine's GCC 12
//! build of llama.cpp's `ggml_vec_dot_*` (AVX2 flags) and `quantize_row_q8_K`: equal bit for
//! bit for every type. llama.cpp's own build on an AVX-512 CPU takes 16-lane paths for F16 /
//! BF16 / F32 rows (another order), and by default repacks Q4_0 and Q4_K weights for kernels of
//! another order; what we match is its AVX2 `vec_dot`.

use half::f16;

mod acts;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_float;
#[cfg(target_arch = "x86_64")]
mod avx2_k;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod formats;
mod matrix;
pub mod scalar;
mod weights;

pub use acts::{quantize_row_q8k, Acts, BlockQ8K};
pub use formats::{Bf16, BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ5_0, BlockQ6K, GgmlType, F16, QK_K};
pub use matrix::{QData, QMatrix};
pub use scalar::{dot_q4_1_scalar, dot_q8_0_scalar};
pub use weights::WeightBlock;

/// Elements per block of Q4_0, Q4_1, Q5_0, Q8_0 and [`BlockQ8`].
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

pub(crate) fn h2f(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Round to the nearest f16 and back.
pub fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Quantize one row (length a multiple of 32) into `out` (one block per 32 values), as
/// llama.cpp's x86 `quantize_row_q8_0` / `q8_1` do: the inverse scale is `127 / max|x|` (not
/// `1 / d`), codes rounded to nearest with ties to even.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in yb.qs.iter_mut().zip(xb) {
            let r = ((v * id).round_ties_even() as i32).clamp(-128, 127);
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
        acts: &[B::Act],
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
    pub(crate) fn row_group(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::ROWS,
            _ => 4,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QuantError(pub String);

/// Size in bytes of one block of a GGML type we read, by its GGML type id.
pub fn block_bytes(ggml_type: u32) -> Option<usize> {
    GgmlType::from_id(ggml_type).map(GgmlType::block_bytes)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_formats;
