//! The reference dot products, one per weight format, in portable Rust.
//!
//! Each sums in the order of llama.cpp's AVX2 kernel for its format (as GCC builds it with
//! `-march=native`), which is also the order of our SIMD kernels, so those equal these bit for
//! bit: the integer products of each 32-value group are summed per group of four bytes into
//! eight lanes (the eight i32 lanes of a ymm register; integer sums are exact in any order),
//! each lane is converted to f32 and fused-multiply-added (`mul_add`, one rounding, as
//! `vfmadd`) with the block's scale into its own f32 accumulator, and the eight accumulators
//! are reduced as `hsum_float_8` reduces them.

use super::acts::BlockQ8K;
use super::formats::{Bf16, BlockQ4K, BlockQ4_0, BlockQ5K, BlockQ5_0, BlockQ6K, F16};
use super::{BlockQ4_1, BlockQ8, BlockQ8_0};

/// llama.cpp's `hsum_float_8`: halves added lane for lane, then pairs, then the two left.
#[inline(always)]
pub(crate) fn hsum8(v: &[f32; 8]) -> f32 {
    ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
}

/// The sums of four consecutive products of a 32-value block (`x(i)` times `y[i]`): what
/// `maddubs` + `madd` (or `vpdpbusd`) leave in each of the eight i32 lanes.
#[inline(always)]
fn lanes32(x: impl Fn(usize) -> i32, y: &[i8]) -> [i32; 8] {
    let mut s = [0i32; 8];
    for (i, &q) in y[..32].iter().enumerate() {
        s[i / 4] += x(i) * q as i32;
    }
    s
}

/// `acc[l] = fma(d, lanes[l], acc[l])` for the eight lanes.
#[inline(always)]
fn fma8(acc: &mut [f32; 8], d: f32, lanes: &[i32; 8]) {
    for (a, &s) in acc.iter_mut().zip(lanes) {
        *a = d.mul_add(s as f32, *a);
    }
}

/// The reference Q4_1 · Q8_1 dot product: the integer part by lanes, and the `m · s` offsets
/// summed in block order (multiply, then add, as our AVX2 and AVX-512 kernels do; llama.cpp as
/// built by GCC fuses that multiply-add, to the same bits since `m · s` is exact).
pub fn dot_q4_1_scalar(w: &[BlockQ4_1], a: &[BlockQ8]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut offsets = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let lanes = lanes32(|i| ((x.qs[i % 16] >> (4 * (i / 16))) & 0x0F) as i32, &y.qs);
        fma8(&mut acc, x.d * y.d, &lanes);
        offsets += x.m * y.s;
    }
    hsum8(&acc) + offsets
}

/// The reference Q8_0 · Q8_0 dot product.
pub fn dot_q8_0_scalar(w: &[BlockQ8_0], a: &[BlockQ8]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in w.iter().zip(a) {
        fma8(&mut acc, x.d * y.d, &lanes32(|i| x.qs[i] as i32, &y.qs));
    }
    hsum8(&acc)
}

/// The reference Q4_0 · Q8_0 dot product.
pub fn dot_q4_0_scalar(w: &[BlockQ4_0], a: &[BlockQ8]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in w.iter().zip(a) {
        let lanes = lanes32(
            |i| ((x.qs[i % 16] >> (4 * (i / 16))) & 0x0F) as i32 - 8,
            &y.qs,
        );
        fma8(&mut acc, x.d * y.d, &lanes);
    }
    hsum8(&acc)
}

/// The reference Q5_0 · Q8_0 dot product.
pub fn dot_q5_0_scalar(w: &[BlockQ5_0], a: &[BlockQ8]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in w.iter().zip(a) {
        let code = |i: usize| {
            let low = ((x.qs[i % 16] >> (4 * (i / 16))) & 0x0F) as i32;
            (low | (((x.qh >> i) & 1) << 4) as i32) - 16
        };
        fma8(&mut acc, x.d * y.d, &lanes32(code, &y.qs));
    }
    hsum8(&acc)
}

/// The sums of activation codes over each sub-block of 32, from the sixteen `bsums`.
#[inline(always)]
fn sums32(y: &BlockQ8K) -> [i32; 8] {
    std::array::from_fn(|k| y.bsums[2 * k] as i32 + y.bsums[2 * k + 1] as i32)
}

/// Q4_K and Q5_K's integer lanes: `Σ scale · code · y` by lane (a 32-value sub-block's byte
/// `b` falls in lane `b / 4`).
#[inline(always)]
fn k_lanes(scales: &[u8; 8], code: impl Fn(usize) -> u8, y: &BlockQ8K) -> [i32; 8] {
    let mut s = [0i32; 8];
    for (e, &q) in y.qs.iter().enumerate() {
        s[(e % 32) / 4] += scales[e / 32] as i32 * code(e) as i32 * q as i32;
    }
    s
}

/// The reference Q4_K · Q8_K dot product. The mins enter through four lanes of their own
/// (`mins[2j] · sum_2j + mins[2j+1] · sum_2j+1`, fused-multiply-added with `-y.d · dmin`),
/// reduced pairwise and added at the end, as in llama.cpp's AVX2 kernel.
pub fn dot_q4_k_scalar(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut acc_m = [0.0f32; 4];
    for (x, y) in w.iter().zip(a) {
        let d = y.d * x.d;
        let dmin = -y.d * x.dmin;
        let s = sums32(y);
        for (j, m) in acc_m.iter_mut().enumerate() {
            let p = x.mins[2 * j] as i32 * s[2 * j] + x.mins[2 * j + 1] as i32 * s[2 * j + 1];
            *m = dmin.mul_add(p as f32, *m);
        }
        fma8(&mut acc, d, &k_lanes(&x.scales, |e| x.code(e), y));
    }
    hsum8(&acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
}

/// The reference Q5_K · Q8_K dot product. The mins' integer total of each block is
/// fused-multiply-added with `-y.d · dmin` into one running sum, added at the end.
pub fn dot_q5_k_scalar(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut mins = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let d = y.d * x.d;
        let dmin = -y.d * x.dmin;
        let s = sums32(y);
        let total: i32 = (0..8).map(|k| x.mins[k] as i32 * s[k]).sum();
        mins = dmin.mul_add(total as f32, mins);
        fma8(&mut acc, d, &k_lanes(&x.scales, |e| x.code(e), y));
    }
    hsum8(&acc) + mins
}

/// The reference Q6_K · Q8_K dot product: codes taken as unsigned (0..64) by lane, and
/// `32 · Σ scale · bsum` taken off lane `m` for the bsums `2m, 2m + 1`.
pub fn dot_q6_k_scalar(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (x, y) in w.iter().zip(a) {
        let d = y.d * x.d;
        let mut s = [0i32; 8];
        for (e, &q) in y.qs.iter().enumerate() {
            s[(e % 32) / 4] += x.scales[e / 16] as i32 * x.code(e) as i32 * q as i32;
        }
        for (m, v) in s.iter_mut().enumerate() {
            let b = y.bsums[2 * m] as i32 * x.scales[2 * m] as i32
                + y.bsums[2 * m + 1] as i32 * x.scales[2 * m + 1] as i32;
            *v -= b << 5;
        }
        fma8(&mut acc, d, &s);
    }
    hsum8(&acc)
}

/// GGML's AVX2 float reduction of four 8-lane accumulators: `(s0 + s2) + (s1 + s3)` lane for
/// lane, then the halves added, then two rounds of `hadd`.
#[inline(always)]
pub(crate) fn reduce4(s: &[[f32; 8]; 4]) -> f32 {
    let v: [f32; 8] = std::array::from_fn(|l| (s[0][l] + s[2][l]) + (s[1][l] + s[3][l]));
    let t: [f32; 4] = std::array::from_fn(|k| v[k] + v[k + 4]);
    (t[0] + t[1]) + (t[2] + t[3])
}

/// Four 8-lane accumulators over runs of 32 values, `fma(x, y, s[j])` for the `j`-th 8.
#[inline(always)]
fn fma_runs(n: usize, x: impl Fn(usize) -> f32, y: impl Fn(usize) -> f32) -> [[f32; 8]; 4] {
    let mut s = [[0.0f32; 8]; 4];
    for i in (0..n & !31).step_by(32) {
        for (j, sj) in s.iter_mut().enumerate() {
            for (l, v) in sj.iter_mut().enumerate() {
                let k = i + 8 * j + l;
                *v = x(k).mul_add(y(k), *v);
            }
        }
    }
    s
}

/// The reference F16 · F16 dot product (`ggml_vec_dot_f16`'s AVX2 path): runs of 32 through
/// [`reduce4`], the rest as f32 products summed in f64, the total rounded to f32.
pub fn dot_f16_scalar(w: &[F16], a: &[F16]) -> f32 {
    let n = w.len().min(a.len());
    let s = fma_runs(n, |k| w[k].to_f32(), |k| a[k].to_f32());
    let mut sum = reduce4(&s) as f64;
    for k in n & !31..n {
        sum += (w[k].to_f32() * a[k].to_f32()) as f64;
    }
    sum as f32
}

/// `ggml_vec_dot_f32`'s leftover values `from..n` added to `sum` one by one in f32, as GCC 12
/// vectorizes that loop: products by eights and then by fours (multiply, then add), the last
/// `(n - from) % 4` fused.
#[inline(always)]
pub(crate) fn f32_tail(
    mut sum: f32,
    from: usize,
    n: usize,
    pair: impl Fn(usize) -> (f32, f32),
) -> f32 {
    let fused = n - (n - from) % 4;
    for k in from..n {
        let (x, y) = pair(k);
        sum = if k < fused {
            sum + x * y
        } else {
            x.mul_add(y, sum)
        };
    }
    sum
}

/// The reference F32 · F32 dot product (`ggml_vec_dot_f32`'s AVX2 path): as F16's, but the
/// leftover products are summed in f32 ([`f32_tail`]).
pub fn dot_f32_scalar(w: &[f32], a: &[f32]) -> f32 {
    let n = w.len().min(a.len());
    let s = fma_runs(n, |k| w[k], |k| a[k]);
    f32_tail(reduce4(&s), n & !31, n, |k| (w[k], a[k]))
}

/// The reference BF16 · BF16 dot product (`ggml_vec_dot_bf16`'s AVX2 path, whose multiply
/// and add GCC fuses): four accumulators over runs of 32 combined as `(c1 + c3) + (c2 + c4)`
/// and reduced as [`hsum8`], the rest as f32 products summed in f64.
pub fn dot_bf16_scalar(w: &[Bf16], a: &[Bf16]) -> f32 {
    let n = w.len().min(a.len());
    let s = fma_runs(n, |k| w[k].to_f32(), |k| a[k].to_f32());
    let c: [f32; 8] = std::array::from_fn(|l| (s[0][l] + s[2][l]) + (s[1][l] + s[3][l]));
    let mut sum = hsum8(&c) as f64;
    for k in n & !31..n {
        sum += (w[k].to_f32() * a[k].to_f32()) as f64;
    }
    sum as f32
}
