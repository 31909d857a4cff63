//! The GGML weight types we read: their ids and sizes ([`GgmlType`]), the in-memory blocks of
//! the formats beyond Q4_1 / Q8_0, how each is parsed from a GGUF tensor's bytes, and how each
//! is turned back into f32 (embedding lookups), with llama.cpp's `dequantize_row_*` arithmetic
//! (separate multiplies and adds: that code is built without FMA).
//!
//! Where the file's block has f16 scales they are widened to f32 at load (exact), and the
//! K-quants' twelve bytes of packed 6-bit scales and mins are unpacked to sixteen bytes, so the
//! kernels do neither per block. No format is expanded further: weights stay packed.

use super::{h2f, BlockQ4_1, BlockQ8_0, QK};

/// Elements per K-quant super-block (and per Q8_K activation block).
pub const QK_K: usize = 256;

/// A GGML tensor type this crate reads (GGML's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Every type, in GGML id order.
    pub const ALL: &'static [GgmlType] = &[
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::BF16,
    ];

    /// The type with GGML type id `id` (the `ggml_type` enum's value), if we read it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// The GGML type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// GGML's name for the type ("Q4_K", "BF16", ...).
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

    /// Elements per block: 1 for the float types, 32 or 256 for the quantized ones.
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 => QK,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => QK_K,
        }
    }

    /// Bytes per block in a GGUF file.
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
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Q4_0: 32 weights as 4-bit codes, value `d * (q - 8)`; the low nibble of `qs[j]` is element
/// `j`, the high one element `j + 16` (`d` widened from f16 at load).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: f32,
    pub qs: [u8; 16],
}

/// Q5_0: 32 weights as 5-bit codes, value `d * (q - 16)`: the low four bits as Q4_0's nibbles,
/// the fifth of element `j` bit `j` of `qh` (little-endian in the file).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: f32,
    pub qh: u32,
    pub qs: [u8; 16],
}

/// Q4_K: 256 weights in eight sub-blocks of 32, value `d * scales[s] * q - dmin * mins[s]`
/// with 4-bit `q`. Byte `32k + l` of `qs` holds element `64k + l` (low nibble) and
/// `64k + 32 + l` (high). The file packs the 6-bit scales and mins into 12 bytes; they are
/// unpacked at load.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: f32,
    pub dmin: f32,
    pub scales: [u8; 8],
    pub mins: [u8; 8],
    pub qs: [u8; 128],
}

/// Q5_K: Q4_K with a fifth bit: element `64k + l` takes bit `2k` of `qh[l]`, element
/// `64k + 32 + l` bit `2k + 1`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: f32,
    pub dmin: f32,
    pub scales: [u8; 8],
    pub mins: [u8; 8],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// Q6_K: 256 weights in sixteen sub-blocks of 16, value `d * scales[s] * (q - 32)` with 6-bit
/// `q`. In each half `h` (128 elements), element `128h + 32k + l` has its low four bits in
/// `ql[64h + l + 32 (k & 1)]` (low nibble for `k < 2`, high for `k >= 2`) and its top two in
/// bits `2k, 2k + 1` of `qh[32h + l]`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ6K {
    pub d: f32,
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
}

/// An IEEE half float, by its bits (F16 weights and the activations they multiply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct F16(pub u16);

/// A bfloat16, by its bits (BF16 weights and their activations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl F16 {
    /// The nearest half (ties to even), as F16C's `vcvtps2ph` with mode 0 gives it.
    pub fn from_f32(x: f32) -> F16 {
        F16(half::f16::from_f32(x).to_bits())
    }
    pub fn to_f32(self) -> f32 {
        h2f(self.0)
    }
}

impl Bf16 {
    /// The nearest bfloat16 (ties to even); a NaN stays a (quiet) NaN. GGML's rounding.
    pub fn from_f32(x: f32) -> Bf16 {
        let u = x.to_bits();
        if u & 0x7fff_ffff > 0x7f80_0000 {
            return Bf16(((u >> 16) | 64) as u16);
        }
        Bf16((u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16)
    }
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// The K-quants' 12 bytes of 6-bit scales and mins, unpacked: sub-blocks 0..4 have theirs in
/// the low six bits of bytes 0..4 (scales) and 4..8 (mins); sub-blocks 4..8 have their low four
/// bits in the nibbles of bytes 8..12 and their top two in the spare bits of bytes 0..8.
pub(crate) fn unpack_scales(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = q[j] & 63;
        m[j] = q[j + 4] & 63;
        sc[j + 4] = (q[j + 8] & 0x0F) | ((q[j] >> 6) << 4);
        m[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
    }
    (sc, m)
}

/// Parsing one file block (`bytes` is exactly [`GgmlType::block_bytes`] long).
pub(crate) trait FromBlock: Sized {
    fn parse(bytes: &[u8]) -> Self;
}

impl FromBlock for BlockQ4_1 {
    fn parse(b: &[u8]) -> Self {
        BlockQ4_1 {
            d: h2f(u16_at(b, 0)),
            m: h2f(u16_at(b, 2)),
            qs: array(&b[4..]),
        }
    }
}

impl FromBlock for BlockQ8_0 {
    fn parse(b: &[u8]) -> Self {
        BlockQ8_0 {
            d: h2f(u16_at(b, 0)),
            qs: array::<32>(&b[2..]).map(|v| v as i8),
        }
    }
}

impl FromBlock for BlockQ4_0 {
    fn parse(b: &[u8]) -> Self {
        BlockQ4_0 {
            d: h2f(u16_at(b, 0)),
            qs: array(&b[2..]),
        }
    }
}

impl FromBlock for BlockQ5_0 {
    fn parse(b: &[u8]) -> Self {
        BlockQ5_0 {
            d: h2f(u16_at(b, 0)),
            qh: u32::from_le_bytes(array(&b[2..])),
            qs: array(&b[6..]),
        }
    }
}

impl FromBlock for BlockQ4K {
    fn parse(b: &[u8]) -> Self {
        let (scales, mins) = unpack_scales(&b[4..16]);
        BlockQ4K {
            d: h2f(u16_at(b, 0)),
            dmin: h2f(u16_at(b, 2)),
            scales,
            mins,
            qs: array(&b[16..]),
        }
    }
}

impl FromBlock for BlockQ5K {
    fn parse(b: &[u8]) -> Self {
        let (scales, mins) = unpack_scales(&b[4..16]);
        BlockQ5K {
            d: h2f(u16_at(b, 0)),
            dmin: h2f(u16_at(b, 2)),
            scales,
            mins,
            qh: array(&b[16..]),
            qs: array(&b[48..]),
        }
    }
}

impl FromBlock for BlockQ6K {
    fn parse(b: &[u8]) -> Self {
        BlockQ6K {
            ql: array(b),
            qh: array(&b[128..]),
            scales: array::<16>(&b[192..]).map(|v| v as i8),
            d: h2f(u16_at(b, 208)),
        }
    }
}

impl FromBlock for F16 {
    fn parse(b: &[u8]) -> Self {
        F16(u16_at(b, 0))
    }
}

impl FromBlock for Bf16 {
    fn parse(b: &[u8]) -> Self {
        Bf16(u16_at(b, 0))
    }
}

impl FromBlock for f32 {
    fn parse(b: &[u8]) -> Self {
        f32::from_le_bytes(array(b))
    }
}

/// All blocks of a tensor's bytes (a whole number of `size`-byte blocks).
pub(crate) fn parse_all<B: FromBlock>(bytes: &[u8], size: usize) -> Vec<B> {
    bytes.chunks_exact(size).map(B::parse).collect()
}

/// Writing one block's elements as f32 (`out` is `block_elems` long).
pub(crate) trait Dequantize {
    fn dequantize(&self, out: &mut [f32]);
}

impl Dequantize for BlockQ4_1 {
    fn dequantize(&self, o: &mut [f32]) {
        for j in 0..16 {
            o[j] = (self.qs[j] & 0x0F) as f32 * self.d + self.m;
            o[j + 16] = (self.qs[j] >> 4) as f32 * self.d + self.m;
        }
    }
}

impl Dequantize for BlockQ8_0 {
    fn dequantize(&self, o: &mut [f32]) {
        for (v, &q) in o.iter_mut().zip(&self.qs) {
            *v = q as f32 * self.d;
        }
    }
}

impl Dequantize for BlockQ4_0 {
    fn dequantize(&self, o: &mut [f32]) {
        for j in 0..16 {
            o[j] = ((self.qs[j] & 0x0F) as i32 - 8) as f32 * self.d;
            o[j + 16] = ((self.qs[j] >> 4) as i32 - 8) as f32 * self.d;
        }
    }
}

impl Dequantize for BlockQ5_0 {
    fn dequantize(&self, o: &mut [f32]) {
        for j in 0..16 {
            let h0 = ((self.qh >> j) & 1) as i32;
            let h1 = ((self.qh >> (j + 16)) & 1) as i32;
            o[j] = (((self.qs[j] & 0x0F) as i32 | (h0 << 4)) - 16) as f32 * self.d;
            o[j + 16] = (((self.qs[j] >> 4) as i32 | (h1 << 4)) - 16) as f32 * self.d;
        }
    }
}

/// Q4_K and Q5_K: `(d · scale) · q - dmin · min` per sub-block, `q` from `code(element)`.
fn dequantize_k(
    d: f32,
    dmin: f32,
    scales: &[u8; 8],
    mins: &[u8; 8],
    o: &mut [f32],
    code: impl Fn(usize) -> u8,
) {
    for (s, sub) in o.chunks_exact_mut(32).enumerate() {
        let (d1, m1) = (d * scales[s] as f32, dmin * mins[s] as f32);
        for (l, v) in sub.iter_mut().enumerate() {
            *v = d1 * code(32 * s + l) as f32 - m1;
        }
    }
}

impl BlockQ4K {
    /// The 4-bit code of element `e`.
    pub fn code(&self, e: usize) -> u8 {
        let byte = self.qs[32 * (e / 64) + e % 32];
        if e % 64 < 32 {
            byte & 0x0F
        } else {
            byte >> 4
        }
    }
}

impl BlockQ5K {
    /// The 5-bit code of element `e`.
    pub fn code(&self, e: usize) -> u8 {
        let byte = self.qs[32 * (e / 64) + e % 32];
        let low = if e % 64 < 32 { byte & 0x0F } else { byte >> 4 };
        let high = (self.qh[e % 32] >> (e / 32)) & 1;
        low | (high << 4)
    }
}

impl BlockQ6K {
    /// The 6-bit code of element `e` (the value is `code - 32`).
    pub fn code(&self, e: usize) -> u8 {
        let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
        let byte = self.ql[64 * h + 32 * (k & 1) + l];
        let low = if k < 2 { byte & 0x0F } else { byte >> 4 };
        let high = (self.qh[32 * h + l] >> (2 * k)) & 3;
        low | (high << 4)
    }
}

impl Dequantize for BlockQ4K {
    fn dequantize(&self, o: &mut [f32]) {
        dequantize_k(self.d, self.dmin, &self.scales, &self.mins, o, |e| {
            self.code(e)
        });
    }
}

impl Dequantize for BlockQ5K {
    fn dequantize(&self, o: &mut [f32]) {
        dequantize_k(self.d, self.dmin, &self.scales, &self.mins, o, |e| {
            self.code(e)
        });
    }
}

impl Dequantize for BlockQ6K {
    fn dequantize(&self, o: &mut [f32]) {
        for (e, v) in o.iter_mut().enumerate() {
            let q = self.code(e) as i32 - 32;
            *v = self.d * self.scales[e / 16] as f32 * q as f32;
        }
    }
}

impl Dequantize for F16 {
    fn dequantize(&self, o: &mut [f32]) {
        o[0] = self.to_f32();
    }
}

impl Dequantize for Bf16 {
    fn dequantize(&self, o: &mut [f32]) {
        o[0] = self.to_f32();
    }
}

impl Dequantize for f32 {
    fn dequantize(&self, o: &mut [f32]) {
        o[0] = *self;
    }
}
