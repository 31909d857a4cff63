//! Activations: Q8_K quantization (the K-quants' activation format) and [`Acts`], one matmul
//! input quantized lazily into each format the matrices reading it need.

use rayon::prelude::*;

use super::formats::{Bf16, F16, QK_K};
use super::{quantize_row, BlockQ8, QK};

/// A Q8_K activation block: 256 values `d * q`, and the sums of `q` over each 16 (`bsums`).
/// `d` is a plain f32 (and may be negative: see [`quantize_row_q8k`]).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        Self {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }
    }
}

/// GGML's `nearest_int`: adding 1.5 · 2²³ leaves the integer in the low mantissa bits, rounded
/// as the addition rounds (to nearest, ties to even). Exact for |x| < 2²².
fn nearest_int(x: f32) -> i32 {
    let bits = (x + 12_582_912.0f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// Quantize one row (length a multiple of 256) to Q8_K as llama.cpp does on x86 (its reference
/// routine): the first value of largest magnitude, `max`, sets `iscale = -127 / max` (so it
/// becomes -127 and `d = 1 / iscale` takes its sign), each code is `min(127,
/// nearest_int(iscale · x))`. An all-zero block gets `d = 0` and zero codes.
pub fn quantize_row_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    for (xb, yb) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (mut max, mut amax) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *yb = BlockQ8K::default();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, g) in yb.bsums.iter_mut().zip(yb.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        yb.d = 1.0 / iscale;
    }
}

/// One matmul input (`rows` activations of `width` values), quantized lazily into the formats
/// the matrices that read it need: BlockQ8 (Q8_1 style, whose `d` also serves as Q8_0's) for
/// Q4_0, Q4_1, Q5_0 and Q8_0 weights; Q8_K for the K-quants; f16 / bf16 for F16 / BF16
/// weights (llama.cpp's `vec_dot_type`s); F32 weights read the values as they are. Each format
/// is made once per [`Acts::load`] and reused by every matrix after the first.
#[derive(Default)]
pub struct Acts {
    x: Vec<f32>,
    width: usize,
    n: usize,
    q8: Vec<BlockQ8>,
    q8k: Vec<BlockQ8K>,
    f16: Vec<F16>,
    bf16: Vec<Bf16>,
    ready: Ready,
    made: usize,
}

/// Which formats hold the current input.
#[derive(Default, Clone, Copy)]
struct Ready {
    q8: bool,
    q8k: bool,
    f16: bool,
    bf16: bool,
}

impl Acts {
    /// Take `x` as `x.len() / width` activations of `width` values, dropping the quantizations
    /// of the previous input (their buffers are kept for reuse).
    pub fn load(&mut self, x: &[f32], width: usize) {
        self.n = x.len().checked_div(width).unwrap_or(0);
        self.width = width;
        self.x.clear();
        self.x.extend_from_slice(&x[..self.n * width]);
        self.ready = Ready::default();
        self.made = 0;
    }

    /// How many formats the current input has been converted into (each once at most).
    pub fn conversions(&self) -> usize {
        self.made
    }

    /// How many activations are loaded.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Values per activation.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The activations as loaded.
    pub fn f32s(&self) -> &[f32] {
        &self.x
    }

    /// As BlockQ8 (`width` a multiple of 32), `width / 32` blocks per activation.
    pub fn q8(&mut self) -> &[BlockQ8] {
        if !self.ready.q8 {
            let w = self.width;
            fill(&self.x, w, w / QK, &mut self.q8, quantize_row);
            self.ready.q8 = true;
            self.made += 1;
        }
        &self.q8
    }

    /// As Q8_K (`width` a multiple of 256), `width / 256` blocks per activation.
    pub fn q8k(&mut self) -> &[BlockQ8K] {
        if !self.ready.q8k {
            let w = self.width;
            fill(&self.x, w, w / QK_K, &mut self.q8k, quantize_row_q8k);
            self.ready.q8k = true;
            self.made += 1;
        }
        &self.q8k
    }

    /// Rounded to f16 (to nearest, ties to even).
    pub fn f16(&mut self) -> &[F16] {
        if !self.ready.f16 {
            let w = self.width;
            fill(&self.x, w, w, &mut self.f16, |x, o| {
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = F16::from_f32(v);
                }
            });
            self.ready.f16 = true;
            self.made += 1;
        }
        &self.f16
    }

    /// Rounded to bf16 (to nearest, ties to even).
    pub fn bf16(&mut self) -> &[Bf16] {
        if !self.ready.bf16 {
            let w = self.width;
            fill(&self.x, w, w, &mut self.bf16, |x, o| {
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = Bf16::from_f32(v);
                }
            });
            self.ready.bf16 = true;
            self.made += 1;
        }
        &self.bf16
    }
}

/// `out` = each `width`-value row of `x` converted by `f` into `per_row` items; rows in
/// parallel when there are several.
fn fill<T: Copy + Default + Send>(
    x: &[f32],
    width: usize,
    per_row: usize,
    out: &mut Vec<T>,
    f: impl Fn(&[f32], &mut [T]) + Sync,
) {
    let n = x.len().checked_div(width).unwrap_or(0);
    out.clear();
    out.resize(n * per_row, T::default());
    if n <= 1 || per_row == 0 {
        if n == 1 {
            f(x, out);
        }
        return;
    }
    x.par_chunks_exact(width)
        .zip(out.par_chunks_exact_mut(per_row))
        .for_each(|(xr, or)| f(xr, or));
}
