//! [`QMatrix`]: a weight matrix in its GGUF format, parsed from a tensor's bytes, and the
//! matmuls over its rows.

use rayon::prelude::*;

use super::formats::{parse_all, Dequantize};
use super::{
    Acts, Bf16, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ6K, BlockQ8_0, GgmlType,
    Kernel, QuantError, WeightBlock, F16,
};

/// A weight matrix's blocks, `rows × cols / block_elems` of them, row by row, in the layout of
/// its GGUF tensor (f16 scales widened to f32, K-quant scales unpacked).
#[allow(non_camel_case_types)]
pub enum QData {
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
    Q4_0(Vec<BlockQ4_0>),
    Q5_0(Vec<BlockQ5_0>),
    Q4_K(Vec<BlockQ4K>),
    Q5_K(Vec<BlockQ5K>),
    Q6_K(Vec<BlockQ6K>),
    F16(Vec<F16>),
    BF16(Vec<Bf16>),
    F32(Vec<f32>),
}

/// `$e` with `$b` bound to the blocks of whichever format `$data` holds.
macro_rules! each_format {
    ($data:expr, $b:ident => $e:expr) => {
        match $data {
            QData::Q4_1($b) => $e,
            QData::Q8_0($b) => $e,
            QData::Q4_0($b) => $e,
            QData::Q5_0($b) => $e,
            QData::Q4_K($b) => $e,
            QData::Q5_K($b) => $e,
            QData::Q6_K($b) => $e,
            QData::F16($b) => $e,
            QData::BF16($b) => $e,
            QData::F32($b) => $e,
        }
    };
}

impl QData {
    pub fn ggml_type(&self) -> GgmlType {
        match self {
            QData::Q4_1(_) => GgmlType::Q4_1,
            QData::Q8_0(_) => GgmlType::Q8_0,
            QData::Q4_0(_) => GgmlType::Q4_0,
            QData::Q5_0(_) => GgmlType::Q5_0,
            QData::Q4_K(_) => GgmlType::Q4_K,
            QData::Q5_K(_) => GgmlType::Q5_K,
            QData::Q6_K(_) => GgmlType::Q6_K,
            QData::F16(_) => GgmlType::F16,
            QData::BF16(_) => GgmlType::BF16,
            QData::F32(_) => GgmlType::F32,
        }
    }

    fn parse(ty: GgmlType, bytes: &[u8]) -> QData {
        let size = ty.block_bytes();
        match ty {
            GgmlType::Q4_1 => QData::Q4_1(parse_all(bytes, size)),
            GgmlType::Q8_0 => QData::Q8_0(parse_all(bytes, size)),
            GgmlType::Q4_0 => QData::Q4_0(parse_all(bytes, size)),
            GgmlType::Q5_0 => QData::Q5_0(parse_all(bytes, size)),
            GgmlType::Q4_K => QData::Q4_K(parse_all(bytes, size)),
            GgmlType::Q5_K => QData::Q5_K(parse_all(bytes, size)),
            GgmlType::Q6_K => QData::Q6_K(parse_all(bytes, size)),
            GgmlType::F16 => QData::F16(parse_all(bytes, size)),
            GgmlType::BF16 => QData::BF16(parse_all(bytes, size)),
            GgmlType::F32 => QData::F32(parse_all(bytes, size)),
        }
    }

    /// Bytes the blocks take in memory.
    pub fn size_bytes(&self) -> usize {
        each_format!(self, b => std::mem::size_of_val(b.as_slice()))
    }
}

/// A weight matrix of `rows × cols` (each row one output), in the layout of its GGUF tensor.
pub struct QMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: QData,
}

impl QMatrix {
    /// Read a GGUF tensor's raw bytes: type `ty`, `rows × cols` (`cols` a multiple of the
    /// type's block size, `bytes` exactly the tensor's size).
    pub fn from_type(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<QMatrix, QuantError> {
        let per = ty.block_elems();
        if !cols.is_multiple_of(per) {
            return Err(QuantError(format!(
                "{ty} tensor: {cols} columns is not a multiple of its block size {per}"
            )));
        }
        let size = ty.block_bytes();
        let want = rows
            .checked_mul(cols / per)
            .and_then(|blocks| blocks.checked_mul(size));
        if want != Some(bytes.len()) {
            return Err(QuantError(format!(
                "{ty} tensor of {rows} × {cols}: {} bytes, expected {} ({size} per {per} values)",
                bytes.len(),
                want.map_or("more than memory holds".into(), |w| w.to_string()),
            )));
        }
        Ok(QMatrix {
            rows,
            cols,
            data: QData::parse(ty, bytes),
        })
    }

    /// [`QMatrix::from_type`] by GGML type id.
    pub fn from_bytes(
        ggml_type: u32,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<QMatrix, QuantError> {
        let ty = GgmlType::from_id(ggml_type)
            .ok_or_else(|| QuantError(format!("GGML type {ggml_type} is not supported")))?;
        QMatrix::from_type(ty, rows, cols, bytes)
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.data.ggml_type()
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
                return Err(QuantError(format!(
                    "column counts differ: {} and {}",
                    first.cols, m.cols
                )));
            }
            let (a, b) = (first.ggml_type(), m.ggml_type());
            match (&mut first.data, m.data) {
                (QData::Q4_1(a), QData::Q4_1(b)) => a.extend(b),
                (QData::Q8_0(a), QData::Q8_0(b)) => a.extend(b),
                (QData::Q4_0(a), QData::Q4_0(b)) => a.extend(b),
                (QData::Q5_0(a), QData::Q5_0(b)) => a.extend(b),
                (QData::Q4_K(a), QData::Q4_K(b)) => a.extend(b),
                (QData::Q5_K(a), QData::Q5_K(b)) => a.extend(b),
                (QData::Q6_K(a), QData::Q6_K(b)) => a.extend(b),
                (QData::F16(a), QData::F16(b)) => a.extend(b),
                (QData::BF16(a), QData::BF16(b)) => a.extend(b),
                (QData::F32(a), QData::F32(b)) => a.extend(b),
                _ => return Err(QuantError(format!("formats differ: {a} and {b}"))),
            }
            first.rows += m.rows;
        }
        Ok(first)
    }

    /// Blocks per row (`cols` over the type's block size; `cols` for the float types).
    pub fn blocks_per_row(&self) -> usize {
        self.cols / self.ggml_type().block_elems()
    }

    /// Row `r` as f32 (an embedding lookup), with llama.cpp's dequantization arithmetic.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let nb = self.blocks_per_row();
        let per = self.ggml_type().block_elems();
        each_format!(&self.data, b => {
            for (blk, o) in b[r * nb..(r + 1) * nb].iter().zip(out.chunks_exact_mut(per)) {
                blk.dequantize(o);
            }
        })
    }

    /// `out[t * rows + r] = row r · activation t` for every activation loaded in `acts`
    /// (whose width must be `cols`), with `acts` quantized into the format this matrix's type
    /// multiplies the first time one asks for it. `scratch` is reused between calls.
    pub fn matmul_acts(
        &self,
        kernel: Kernel,
        acts: &mut Acts,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        assert_eq!(
            acts.width(),
            self.cols,
            "activation width vs matrix columns"
        );
        let n = acts.rows();
        match &self.data {
            QData::Q4_1(b) => self.run(kernel, b, acts.q8(), n, out, scratch),
            QData::Q8_0(b) => self.run(kernel, b, acts.q8(), n, out, scratch),
            QData::Q4_0(b) => self.run(kernel, b, acts.q8(), n, out, scratch),
            QData::Q5_0(b) => self.run(kernel, b, acts.q8(), n, out, scratch),
            QData::Q4_K(b) => self.run(kernel, b, acts.q8k(), n, out, scratch),
            QData::Q5_K(b) => self.run(kernel, b, acts.q8k(), n, out, scratch),
            QData::Q6_K(b) => self.run(kernel, b, acts.q8k(), n, out, scratch),
            QData::F16(b) => self.run(kernel, b, acts.f16(), n, out, scratch),
            QData::BF16(b) => self.run(kernel, b, acts.bf16(), n, out, scratch),
            QData::F32(b) => self.run(kernel, b, acts.f32s(), n, out, scratch),
        }
    }

    /// `out[t][r] = row r · activation t` for the `n` activation rows in `acts`, already
    /// quantized into blocks (`cols / 32` each): the tests' way to feed a Q4_0, Q4_1, Q5_0 or
    /// Q8_0 matrix chosen blocks. The model runs [`QMatrix::matmul_acts`].
    #[cfg(test)]
    pub(crate) fn matmul(
        &self,
        kernel: Kernel,
        acts: &[super::BlockQ8],
        n: usize,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        match &self.data {
            QData::Q4_1(b) => self.run(kernel, b, acts, n, out, scratch),
            QData::Q8_0(b) => self.run(kernel, b, acts, n, out, scratch),
            QData::Q4_0(b) => self.run(kernel, b, acts, n, out, scratch),
            QData::Q5_0(b) => self.run(kernel, b, acts, n, out, scratch),
            _ => panic!(
                "{} multiplies other activations than Q8 blocks",
                self.ggml_type()
            ),
        }
    }

    /// The matmul proper: rows split into chunks over the rayon pool, each through
    /// [`Kernel::gemm`].
    fn run<B: WeightBlock>(
        &self,
        kernel: Kernel,
        w: &[B],
        acts: &[B::Act],
        n: usize,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let nb = self.blocks_per_row();
        let rows = self.rows;
        assert!(
            acts.len() >= n * nb && out.len() >= n * rows,
            "matmul: {} activation blocks for {n} × {nb}, {} outputs for {n} × {rows}",
            acts.len(),
            out.len()
        );
        let out = &mut out[..n * rows];
        if out.is_empty() {
            return;
        }
        if nb == 0 {
            out.fill(0.0);
            return;
        }
        // About 16 chunks of rows per matmul: enough for both cores to stay busy and for one to
        // take over the rest when the other is held up, few enough that scheduling is cheap.
        let group = kernel.row_group();
        let chunk = rows.div_ceil(16).max(4).div_ceil(group) * group;
        let dot_rows = |r0: usize, dst: &mut [f32]| {
            // dst is rows r0.. of the transposed result: [row][t]
            let r1 = r0 + dst.len() / n;
            kernel.gemm(&w[r0 * nb..r1 * nb], nb, acts, n, dst);
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
