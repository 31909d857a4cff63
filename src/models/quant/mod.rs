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

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

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
mod tests;

// ---- interim API (replaced by the k-quant work): the types, `Acts` and `matmul_acts` ----

/// A GGML tensor type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl GgmlType {
    pub const ALL: &'static [GgmlType] = &[GgmlType::Q4_1, GgmlType::Q8_0];

    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            _ => return None,
        })
    }

    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 => 32,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => 256,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
        }
    }
}

/// Activations for one matmul input.
#[derive(Default)]
pub struct Acts {
    q8: Vec<BlockQ8>,
    n: usize,
}

impl Acts {
    pub fn load(&mut self, x: &[f32], width: usize) {
        self.n = x.len() / width;
        self.q8.resize(x.len() / QK, BlockQ8::default());
        for (xr, or) in x
            .chunks_exact(width)
            .zip(self.q8.chunks_exact_mut(width / QK))
        {
            quantize_row(xr, or);
        }
    }

    pub fn rows(&self) -> usize {
        self.n
    }
}

impl QMatrix {
    pub fn from_type(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<QMatrix, QuantError> {
        let id = match ty {
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            other => return Err(QuantError(format!("{} is not supported", other.name()))),
        };
        QMatrix::from_bytes(id, rows, cols, bytes)
    }

    pub fn ggml_type(&self) -> GgmlType {
        match self.data {
            QData::Q4_1(_) => GgmlType::Q4_1,
            QData::Q8_0(_) => GgmlType::Q8_0,
        }
    }

    pub fn matmul_acts(
        &self,
        kernel: Kernel,
        acts: &mut Acts,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let n = acts.n;
        self.matmul(kernel, &acts.q8, n, out, scratch);
    }
}
