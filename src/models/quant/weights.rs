//! [`WeightBlock`]: a weight format with the activation format it multiplies and its dot
//! products (scalar reference, AVX2 one-row and four-row, AVX-512 gemm), implemented for every
//! format.

#[cfg(target_arch = "x86_64")]
use super::{avx2, avx2_float, avx2_k, avx512};
use super::{
    scalar, Bf16, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ6K, BlockQ8, BlockQ8K,
    BlockQ8_0, F16,
};

/// A weight block format and its dot products with its activation blocks.
pub trait WeightBlock: Copy + Send + Sync {
    /// The activation block it multiplies (llama.cpp's `vec_dot_type`).
    type Act: Copy + Send + Sync;
    fn dot_scalar(w: &[Self], a: &[Self::Act]) -> f32;
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_avx2(w: &[Self], a: &[Self::Act]) -> f32;
    /// One row against four activations, each weight block read once.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot4_avx2(w: &[Self], a: [&[Self::Act]; 4]) -> [f32; 4];
    /// [`super::Kernel::gemm`] on CPUs with AVX-512 F, BW and VNNI (and AVX2, FMA, F16C).
    /// Formats without AVX-512 kernels of their own (the K-quants and the float types) run
    /// the AVX2 gemm here, which gives the same results.
    ///
    /// # Safety
    /// The CPU must support all of those.
    #[cfg(target_arch = "x86_64")]
    unsafe fn gemm_avx512(w: &[Self], nb: usize, acts: &[Self::Act], n: usize, out: &mut [f32]) {
        // SAFETY: the caller's promise covers AVX2, FMA and F16C.
        unsafe { avx2::gemm(w, nb, acts, n, out) }
    }
}

/// `impl WeightBlock`: the block type, its activation type, its scalar dot, its AVX2 one-row
/// and four-row dots (as `|w, a| expression`), and `avx512` where [`avx512::gemm`] takes it.
macro_rules! weight_block {
    ($t:ty, $act:ty, $scalar:path, |$w:ident, $a:ident| $one:expr, |$w4:ident, $a4:ident| $four:expr $(, $avx512:ident)?) => {
        impl WeightBlock for $t {
            type Act = $act;
            fn dot_scalar(w: &[Self], a: &[$act]) -> f32 {
                $scalar(w, a)
            }
            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            unsafe fn dot_avx2($w: &[Self], $a: &[$act]) -> f32 {
                // SAFETY: the caller's promise.
                unsafe { $one }
            }
            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            unsafe fn dot4_avx2($w4: &[Self], $a4: [&[$act]; 4]) -> [f32; 4] {
                // SAFETY: the caller's promise.
                unsafe { $four }
            }
            $(
            #[cfg(target_arch = "x86_64")]
            unsafe fn gemm_avx512(w: &[Self], nb: usize, acts: &[$act], n: usize, out: &mut [f32]) {
                // SAFETY: the caller's promise.
                unsafe { $avx512::gemm(w, nb, acts, n, out) }
            }
            )?
        }
    };
}

weight_block!(
    BlockQ4_1,
    BlockQ8,
    scalar::dot_q4_1_scalar,
    |w, a| avx2::dot_q4_1(w, a),
    |w, a| avx2::dot_q4_1_x4(w, a),
    avx512
);
weight_block!(
    BlockQ8_0,
    BlockQ8,
    scalar::dot_q8_0_scalar,
    |w, a| avx2::dot_signed(w, a),
    |w, a| avx2::dot_signed_x4(w, a),
    avx512
);
weight_block!(
    BlockQ4_0,
    BlockQ8,
    scalar::dot_q4_0_scalar,
    |w, a| avx2::dot_signed(w, a),
    |w, a| avx2::dot_signed_x4(w, a),
    avx512
);
weight_block!(
    BlockQ5_0,
    BlockQ8,
    scalar::dot_q5_0_scalar,
    |w, a| avx2::dot_signed(w, a),
    |w, a| avx2::dot_signed_x4(w, a),
    avx512
);
weight_block!(
    BlockQ4K,
    BlockQ8K,
    scalar::dot_q4_k_scalar,
    |w, a| avx2_k::dot_k(w, [a])[0],
    |w, a| avx2_k::dot_k(w, a)
);
weight_block!(
    BlockQ5K,
    BlockQ8K,
    scalar::dot_q5_k_scalar,
    |w, a| avx2_k::dot_k(w, [a])[0],
    |w, a| avx2_k::dot_k(w, a)
);
weight_block!(
    BlockQ6K,
    BlockQ8K,
    scalar::dot_q6_k_scalar,
    |w, a| avx2_k::dot_q6_k(w, [a])[0],
    |w, a| avx2_k::dot_q6_k(w, a)
);
weight_block!(
    F16,
    F16,
    scalar::dot_f16_scalar,
    |w, a| avx2_float::dot_float(w, [a])[0],
    |w, a| avx2_float::dot_float(w, a)
);
weight_block!(
    Bf16,
    Bf16,
    scalar::dot_bf16_scalar,
    |w, a| avx2_float::dot_float(w, [a])[0],
    |w, a| avx2_float::dot_float(w, a)
);
weight_block!(
    f32,
    f32,
    scalar::dot_f32_scalar,
    |w, a| avx2_float::dot_float(w, [a])[0],
    |w, a| avx2_float::dot_float(w, a)
);
