//! `x Wᵀ` for f32 linear layers whose weight is packed once, at load: the BERT encoder's
//! projections (`bert_fast`).
//!
//! candle's gemm packs the right-hand side again on every call and, on stable Rust, runs its
//! AVX2 micro-kernels even on AVX-512 machines. For a sentence or two (a few dozen rows against a
//! 384 × 1536 weight) that repacking is most of the work. Here the weight `[out, in]` is stored
//! as panels of 32 output columns, `in` rows of 32 contiguous floats each, so the micro-kernel
//! reads it front to back; it keeps a 12 × 32 block of outputs in 24 of the 32 AVX-512 registers and
//! broadcasts one input value per row and step. The panels are shared out among the rayon pool's
//! threads (each writes its own columns), so a small batch uses both cores and reads each
//! weight once.
//!
//! Each output is one sequential fused multiply-add chain over `in`, so results do not depend on
//! the batch, the threads or the row's position in the batch. Without AVX-512 F the layer keeps
//! candle's matmul (see [`PackedLinear::new`]).

use candle_core::Tensor;
use rayon::prelude::*;

/// Output columns per panel: two AVX-512 registers of f32.
const NR: usize = 32;
/// Rows per micro-kernel call.
const MR: usize = 12;
/// Most floats of packed input a thread keeps between calls (4 MiB).
const KEEP_PACKED_X: usize = 1 << 20;
/// Below this many multiply-adds a call stays on the calling thread.
const PARALLEL_MACS: usize = 1 << 18;

/// Whether this CPU runs the packed kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A linear layer's weight, packed for [`available`] CPUs, else candle's transposed view.
pub enum PackedLinear {
    Packed {
        /// `[panels][inp][NR]`, zero-padded past `out`.
        panels: Vec<f32>,
        out: usize,
        inp: usize,
    },
    Candle(Tensor),
}

impl PackedLinear {
    /// From a `[out, in]` weight; packed when `pack` and the CPU has AVX-512 F.
    pub fn new(w: &Tensor, pack: bool) -> candle_core::Result<Self> {
        let (out, inp) = w.dims2()?;
        if !(pack && available()) {
            return Ok(Self::Candle(w.t()?));
        }
        let flat: Vec<f32> = w.flatten_all()?.to_vec1()?;
        Ok(Self::Packed {
            panels: pack_panels(&flat, out, inp),
            out,
            inp,
        })
    }

    pub fn is_packed(&self) -> bool {
        matches!(self, Self::Packed { .. })
    }
}

/// `[out, in]` row-major → `[ceil(out / NR)][in][NR]`, zero-padded.
fn pack_panels(w: &[f32], out: usize, inp: usize) -> Vec<f32> {
    let panels = out.div_ceil(NR);
    let mut p = vec![0.0f32; panels * inp * NR];
    for o in 0..out {
        let (panel, j) = (o / NR, o % NR);
        let base = panel * inp * NR + j;
        for (k, &v) in w[o * inp..(o + 1) * inp].iter().enumerate() {
            p[base + k * NR] = v;
        }
    }
    p
}

/// The output rows, shared by the threads that write disjoint columns of them.
struct Out(*mut f32);
// SAFETY: every task writes only the columns of its own panels (see `matmul_packed`), and the
// buffer outlives the parallel loop.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// (A method, so closures capture the whole `Out`, not its raw pointer field.)
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `out[m, n] = x[m, k] · Wᵀ` with `W` packed by [`pack_panels`]; `x` and `out` row-major.
pub fn matmul_packed(x: &[f32], m: usize, panels: &[f32], n: usize, k: usize, out: &mut [f32]) {
    assert_eq!(x.len(), m * k, "x is [m, k]");
    assert_eq!(out.len(), m * n, "out is [m, n]");
    assert_eq!(panels.len(), n.div_ceil(NR) * k * NR, "packed weight shape");
    assert!(available(), "matmul_packed needs AVX-512 F");
    if m == 0 || n == 0 {
        return;
    }
    // x as row blocks of MR rows, `[k][MR]` each (zero-padded): the micro-kernel then reads
    // every step's MR inputs from one place instead of MR rows apart.
    // The buffer is the calling thread's, kept between calls: a fresh one of this size would be
    // a new mapping (and page faults) on every call.
    thread_local! {
        static PACKED_X: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    PACKED_X.with_borrow_mut(|xp| {
        let blocks = m.div_ceil(MR);
        xp.clear();
        xp.resize(blocks * k * MR, 0.0);
        for (r, row) in x.chunks_exact(k).enumerate() {
            let (b, i) = (r / MR, r % MR);
            let base = b * k * MR + i;
            for (kk, &v) in row.iter().enumerate() {
                xp[base + kk * MR] = v;
            }
        }
        run_blocks(xp, m, panels, n, k, out);
        // A big batch's buffer is not kept (it would stay in the RSS for good); next to the
        // compute of such a batch a fresh allocation costs nothing.
        if xp.capacity() > KEEP_PACKED_X {
            *xp = Vec::new();
        }
    });
}

fn run_blocks(xp: &[f32], m: usize, panels: &[f32], n: usize, k: usize, out: &mut [f32]) {
    let n_panels = n.div_ceil(NR);
    let dst = Out(out.as_mut_ptr());
    let run = |p: usize| {
        let cols = (n - p * NR).min(NR);
        let w = &panels[p * k * NR..(p + 1) * k * NR];
        let mut r = 0;
        while r < m {
            let rows = (m - r).min(MR);
            let a = &xp[(r / MR) * k * MR..(r / MR + 1) * k * MR];
            // SAFETY: AVX-512 F is present (asserted above); `a` holds k × MR values, `w`
            // k × NR, and the output block rows r..r+rows, columns p*NR..p*NR+cols lies inside
            // `out` (m × n), written by this panel's task only.
            unsafe {
                let o = dst.at(r * n + p * NR);
                avx512::block(rows, a.as_ptr(), k, w.as_ptr(), o, n, cols);
            }
            r += rows;
        }
    };
    if m * n * k < PARALLEL_MACS || rayon::current_num_threads() < 2 {
        (0..n_panels).for_each(run);
    } else {
        (0..n_panels).into_par_iter().for_each(run);
    }
}

/// `x[m, k] · Wᵀ` as a `[m, out]` tensor.
pub fn linear(x: &Tensor, w: &PackedLinear) -> candle_core::Result<Tensor> {
    match w {
        PackedLinear::Candle(w_t) => x.matmul(w_t),
        PackedLinear::Packed { panels, out, inp } => {
            let (m, k) = x.dims2()?;
            if k != *inp {
                candle_core::bail!("linear: input has {k} columns, the weight {inp}");
            }
            let x = x.contiguous()?;
            let mut o = vec![0.0f32; m * out];
            {
                let (s, l) = x.storage_and_layout();
                let candle_core::Storage::Cpu(c) = &*s else {
                    candle_core::bail!("linear: packed weights run on the CPU only");
                };
                let all = c.as_slice::<f32>()?;
                let Some((a, b)) = l.contiguous_offsets() else {
                    candle_core::bail!("linear: input is not contiguous");
                };
                matmul_packed(&all[a..b], m, panels, *out, k, &mut o);
            }
            Tensor::from_vec(o, (m, *out), x.device())
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// The first `rows` (≤ MR) rows of a packed row block `x` (`[k][MR]`) against one packed
    /// panel, into `cols` (≤ NR) columns of `out` (row stride `ldo`).
    ///
    /// # Safety
    /// AVX-512 F; `x` readable for `k * MR` values, `w` for `k * NR`, `out` writable for
    /// `rows` rows of `cols`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block(
        rows: usize,
        x: *const f32,
        k: usize,
        w: *const f32,
        out: *mut f32,
        ldo: usize,
        cols: usize,
    ) {
        // SAFETY (all arms): the caller's contract, passed on.
        unsafe {
            match rows {
                12 => kernel::<12>(x, k, w, out, ldo, cols),
                11 => kernel::<11>(x, k, w, out, ldo, cols),
                10 => kernel::<10>(x, k, w, out, ldo, cols),
                9 => kernel::<9>(x, k, w, out, ldo, cols),
                8 => kernel::<8>(x, k, w, out, ldo, cols),
                7 => kernel::<7>(x, k, w, out, ldo, cols),
                6 => kernel::<6>(x, k, w, out, ldo, cols),
                5 => kernel::<5>(x, k, w, out, ldo, cols),
                4 => kernel::<4>(x, k, w, out, ldo, cols),
                3 => kernel::<3>(x, k, w, out, ldo, cols),
                2 => kernel::<2>(x, k, w, out, ldo, cols),
                1 => kernel::<1>(x, k, w, out, ldo, cols),
                _ => unreachable!("at most MR rows per block"),
            }
        }
        const _: () = assert!(MR == 12 && NR == 32);
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn kernel<const R: usize>(
        x: *const f32,
        k: usize,
        w: *const f32,
        out: *mut f32,
        ldo: usize,
        cols: usize,
    ) {
        // SAFETY: the bounds of `block`'s contract; loads and stores are unaligned.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for kk in 0..k {
                let b0 = _mm512_loadu_ps(w.add(kk * NR));
                let b1 = _mm512_loadu_ps(w.add(kk * NR + 16));
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*x.add(kk * MR + r));
                    a[0] = _mm512_fmadd_ps(xv, b0, a[0]);
                    a[1] = _mm512_fmadd_ps(xv, b1, a[1]);
                }
            }
            if cols == NR {
                for (r, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.add(r * ldo), a[0]);
                    _mm512_storeu_ps(out.add(r * ldo + 16), a[1]);
                }
            } else {
                let m0: __mmask16 = if cols >= 16 {
                    0xffff
                } else {
                    (1u16 << cols) - 1
                };
                let m1: __mmask16 = if cols <= 16 {
                    0
                } else {
                    ((1u32 << (cols - 16)) - 1) as u16
                };
                for (r, a) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(out.add(r * ldo), m0, a[0]);
                    _mm512_mask_storeu_ps(out.add(r * ldo + 16), m1, a[1]);
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    pub unsafe fn block(
        _: usize,
        _: *const f32,
        _: usize,
        _: *const f32,
        _: *mut f32,
        _: usize,
        _: usize,
    ) {
        unreachable!("available() is false off x86_64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn naive(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let mut o = vec![0.0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let mut s = 0.0f64;
                for i in 0..k {
                    s += x[r * k + i] as f64 * w[c * k + i] as f64;
                }
                o[r * n + c] = s as f32;
            }
        }
        o
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn packing_puts_each_weight_in_its_panel_slot() {
        let (out, inp) = (35, 3);
        let w: Vec<f32> = (0..out * inp).map(|i| i as f32).collect();
        let p = pack_panels(&w, out, inp);
        assert_eq!(p.len(), 2 * inp * NR);
        // column o, input k sits at panel o/NR, row k, slot o%NR; padding is zero
        assert_eq!(p[2 * NR + 5], w[5 * inp + 2]);
        assert_eq!(p[inp * NR + NR + 2], w[34 * inp + 1]);
        assert_eq!(p[inp * NR + 3], 0.0);
    }

    #[test]
    fn packed_matmul_matches_a_naive_one_on_every_edge() {
        let dev = Device::Cpu;
        // rows below, at and past a block; columns below, at and past a panel; both thread paths
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 17, 5),
            (8, 32, 16),
            (9, 33, 31),
            (28, 384, 384),
            (61, 100, 77),
            (130, 1536, 384),
        ] {
            let x = values(m * k, m as u64 + 1);
            let w = values(n * k, n as u64 + 7);
            let want = naive(&x, m, &w, n, k);
            let wt = Tensor::from_vec(w.clone(), (n, k), &dev).unwrap();
            let xt = Tensor::from_vec(x.clone(), (m, k), &dev).unwrap();
            for pack in [true, false] {
                let lin = PackedLinear::new(&wt, pack).unwrap();
                assert_eq!(lin.is_packed(), pack && available());
                let got: Vec<f32> = linear(&xt, &lin)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                    .fold(0.0f32, f32::max);
                assert!(worst < 1e-5, "{m}x{n}x{k} pack={pack}: {worst}");
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_and_in_a_batch() {
        if !available() {
            eprintln!("no AVX-512 F here: the packed kernel is not run");
            return;
        }
        let (m, n, k) = (37, 96, 64);
        let x = values(m * k, 3);
        let w = values(n * k, 4);
        let p = pack_panels(&w, n, k);
        let mut all = vec![0.0; m * n];
        matmul_packed(&x, m, &p, n, k, &mut all);
        for r in [0, 7, 8, 36] {
            let mut one = vec![0.0; n];
            matmul_packed(&x[r * k..(r + 1) * k], 1, &p, n, k, &mut one);
            assert_eq!(one, all[r * n..(r + 1) * n]);
        }
    }
}
