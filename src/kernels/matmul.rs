//! C = A B for f32 matrices with any strides, under the contract: every C[i, j] is ONE fused
//! multiply-add chain `acc = fma(A[i,k], B[k,j], acc)` for k = 0, 1, ..., K-1 starting from
//! acc = +0. Blocking over k carries the accumulator through C (it is stored and reloaded as
//! the same f32, never summed per block and added). SIMD runs across columns of C only; threads
//! split rows of C only; there is no split-k. So every path and every thread count gives the
//! same bits, and they depend on nothing but A and B.
//!
//! Layout: a microkernel keeps a 6 x 16 tile of C in registers, broadcasts A[i, k] and fmas it
//! with B[k, j..j+16]. B is always packed into contiguous `[k][16]` panels and A, per k-block,
//! into contiguous `[k][6]` tiles (both zero-padded), so the microkernel reads both with
//! constant strides. Padding only feeds rows and columns that are thrown away.

use super::Path;
use rayon::prelude::*;

const MR: usize = 6;
const NR: usize = 16;
/// k-block length: a 16-column panel block (16 KiB) and a 6-row tile block stay in L1/L2.
const KC: usize = 256;

/// A read-only matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// Row-major with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        MatRef { data, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub fn t(data: &'a [f32], cols: usize) -> Self {
        MatRef { data, rs: 1, cs: cols }
    }
    #[cfg(test)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// C (m x n, row-major, overwritten) = A (m x k) B (k x n), on the configured path, with row
/// blocks spread over the rayon pool.
pub fn matmul(a: MatRef, b: MatRef, c: &mut [f32], m: usize, n: usize, k: usize) {
    matmul_with(super::path(), a, b, c, m, n, k, true)
}

/// As `matmul`, on one thread (for callers that already run in parallel).
pub fn matmul_serial(a: MatRef, b: MatRef, c: &mut [f32], m: usize, n: usize, k: usize) {
    matmul_with(super::path(), a, b, c, m, n, k, false)
}

/// As `matmul` on an explicit path (tests compare the paths).
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    path: Path,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    parallel: bool,
) {
    assert_eq!(c.len(), m * n, "matmul: C has {} elements, want {m} x {n}", c.len());
    assert!(path.available(), "matmul: the {} path is not available on this CPU", path.name());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let bp = Panels::new(b, n, k, parallel && rayon::current_num_threads() > 1);
    // Row blocks: a multiple of MR, about 4 per thread. Only the schedule depends on it.
    let threads = if parallel { rayon::current_num_threads().max(1) } else { 1 };
    let tiles = m.div_ceil(MR);
    let rows = tiles.div_ceil(threads * 4).max(1) * MR;
    let work = |(blk, cblk): (usize, &mut [f32])| {
        let r0 = blk * rows;
        let mb = cblk.len() / n;
        block(path, a, &bp, cblk, r0, mb, n, k);
    };
    if parallel && threads > 1 && m > rows {
        c.par_chunks_mut(rows * n).enumerate().for_each(work);
    } else {
        c.chunks_mut(rows * n).enumerate().for_each(work);
    }
}

/// Where the microkernel reads B: a packed copy of every k x 16 panel, zero-padded.
struct Panels {
    packed: Vec<f32>,
    k: usize,
}

impl Panels {
    /// Packs every panel (a strided panel read in place thrashes L1: a row stride of 4 KiB
    /// puts all of its k rows in one cache set). Copies only; the panels are split over the
    /// pool when `parallel`.
    fn new(b: MatRef, n: usize, k: usize, parallel: bool) -> Panels {
        let panels = n.div_ceil(NR);
        let mut packed = vec![0f32; panels * k * NR];
        let pack = |(pi, panel): (usize, &mut [f32])| {
            let j0 = pi * NR;
            let w = NR.min(n - j0);
            if b.cs == 1 {
                if w == NR {
                    // A fixed-length copy: inline moves, not a memcpy call per 16 floats.
                    for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                        let src: &[f32; NR] = b.data[kk * b.rs + j0..kk * b.rs + j0 + NR].try_into().unwrap();
                        let dst: &mut [f32; NR] = dst.try_into().unwrap();
                        *dst = *src;
                    }
                } else {
                    for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                        dst[..w].copy_from_slice(&b.data[kk * b.rs + j0..kk * b.rs + j0 + w]);
                    }
                }
            } else {
                for jj in 0..w {
                    let col = (j0 + jj) * b.cs;
                    for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                        dst[jj] = b.data[col + kk * b.rs];
                    }
                }
            }
        };
        if parallel && panels > 1 && k * n >= 1 << 16 {
            packed.par_chunks_mut(k * NR).enumerate().for_each(pack);
        } else {
            packed.chunks_mut(k * NR).enumerate().for_each(pack);
        }
        Panels { packed, k }
    }

    /// Panel p from k0 on (`[k][16]`).
    fn get(&self, p: usize, k0: usize) -> &[f32] {
        &self.packed[(p * self.k + k0) * NR..]
    }
}

/// Pack rows r0..r0+h (h <= 6), k0..k0+kc of A into a kc x 6 tile, zero-padded.
fn pack_a(a: MatRef, r0: usize, h: usize, k0: usize, kc: usize, tile: &mut [f32]) {
    if h < MR {
        tile.fill(0.0);
    }
    if a.rs == 1 && h == MR {
        // A fixed-length copy: inline moves, not a memcpy call per 6 floats.
        for (kk, dst) in tile.chunks_exact_mut(MR).take(kc).enumerate() {
            let o = (k0 + kk) * a.cs + r0;
            let src: &[f32; MR] = a.data[o..o + MR].try_into().unwrap();
            let dst: &mut [f32; MR] = dst.try_into().unwrap();
            *dst = *src;
        }
    } else if a.rs == 1 {
        for (kk, dst) in tile.chunks_exact_mut(MR).take(kc).enumerate() {
            let o = (k0 + kk) * a.cs + r0;
            for (d, s) in dst.iter_mut().zip(&a.data[o..o + h]) {
                *d = *s;
            }
        }
    } else {
        for r in 0..h {
            let row = (r0 + r) * a.rs;
            for (kk, dst) in tile.chunks_exact_mut(MR).take(kc).enumerate() {
                dst[r] = a.data[row + (k0 + kk) * a.cs];
            }
        }
    }
}

/// Rows r0..r0+mb of C. Per k-block, every 6-row tile of A is packed into a contiguous
/// `[k][6]` tile (zero-padded) that every column panel reuses.
#[allow(clippy::too_many_arguments)]
fn block(path: Path, a: MatRef, bp: &Panels, c: &mut [f32], r0: usize, mb: usize, n: usize, k: usize) {
    let tiles = mb.div_ceil(MR);
    let panels = n.div_ceil(NR);
    let mut ap = vec![0f32; tiles * KC.min(k) * MR];
    let mut edge = [0f32; MR * NR];
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        // The accumulator starts at +0 for the first k-block, then carries the chain in C.
        let load = k0 > 0;
        for t in 0..tiles {
            let tile = &mut ap[t * kc * MR..(t + 1) * kc * MR];
            pack_a(a, r0 + t * MR, MR.min(mb - t * MR), k0, kc, tile);
        }
        for p in 0..panels {
            let j0 = p * NR;
            let w = NR.min(n - j0);
            let bpanel = bp.get(p, k0);
            for t in 0..tiles {
                let i0 = t * MR;
                let h = MR.min(mb - i0);
                let atile = &ap[t * kc * MR..(t + 1) * kc * MR];
                if h == MR && w == NR {
                    let cs = &mut c[i0 * n + j0..(i0 + MR - 1) * n + j0 + NR];
                    micro(path, kc, atile, bpanel, cs, n, load);
                } else {
                    for r in 0..h {
                        edge[r * NR..r * NR + w]
                            .copy_from_slice(&c[(i0 + r) * n + j0..(i0 + r) * n + j0 + w]);
                    }
                    micro(path, kc, atile, bpanel, &mut edge, NR, load);
                    for r in 0..h {
                        c[(i0 + r) * n + j0..(i0 + r) * n + j0 + w]
                            .copy_from_slice(&edge[r * NR..r * NR + w]);
                    }
                }
            }
        }
        k0 += kc;
    }
}

/// The 6 x 16 tile at `c` (row stride `ldc`), from a packed A tile `a` (`[k][6]`) and a packed
/// B panel `b` (`[k][16]`):
/// acc = load ? c : +0; for k in 0..kc: acc[r][j] = fma(a[k][r], b[k][j], acc[r][j]); c = acc.
#[inline]
fn micro(path: Path, kc: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize, load: bool) {
    assert!(kc > 0 && a.len() >= kc * MR && b.len() >= kc * NR);
    assert!(c.len() > (MR - 1) * ldc + NR - 1);
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul_with` checked that the CPU has AVX2 and FMA; the bounds are asserted.
        Path::Avx2 => unsafe { micro_avx2(kc, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), ldc, load) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `matmul_with` checked that the CPU has NEON; the bounds are asserted.
        Path::Neon => unsafe { micro_neon(kc, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), ldc, load) },
        _ => micro_scalar(kc, a, b, c, ldc, load),
    }
}

/// An exactly rounded a * b + c: the hardware instruction where the build targets one,
/// else libm's correctly rounded software fmaf (pure Rust, the same on every platform).
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(any(target_arch = "aarch64", target_feature = "fma"))]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(any(target_arch = "aarch64", target_feature = "fma")))]
    {
        libm::fmaf(a, b, c)
    }
}

fn micro_scalar(kc: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize, load: bool) {
    let mut acc = [0f32; MR * NR];
    if load {
        for r in 0..MR {
            acc[r * NR..(r + 1) * NR].copy_from_slice(&c[r * ldc..r * ldc + NR]);
        }
    }
    for kk in 0..kc {
        let bk = &b[kk * NR..kk * NR + NR];
        for r in 0..MR {
            let av = a[kk * MR + r];
            let row = &mut acc[r * NR..r * NR + NR];
            for (cj, &bj) in row.iter_mut().zip(bk) {
                *cj = fma(av, bj, *cj);
            }
        }
    }
    for r in 0..MR {
        c[r * ldc..r * ldc + NR].copy_from_slice(&acc[r * NR..(r + 1) * NR]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    if load {
        for (r, ar) in acc.iter_mut().enumerate() {
            ar[0] = _mm256_loadu_ps(c.add(r * ldc));
            ar[1] = _mm256_loadu_ps(c.add(r * ldc + 8));
        }
    }
    let [mut c00, mut c01] = acc[0];
    let [mut c10, mut c11] = acc[1];
    let [mut c20, mut c21] = acc[2];
    let [mut c30, mut c31] = acc[3];
    let [mut c40, mut c41] = acc[4];
    let [mut c50, mut c51] = acc[5];
    // One k step. A and B advance by constant strides (6 and 16 floats), so every load is a
    // base pointer plus an immediate offset.
    macro_rules! step {
        ($ak:expr, $bk:expr) => {{
            let (ak, bk) = ($ak, $bk);
            let b0 = _mm256_loadu_ps(bk);
            let b1 = _mm256_loadu_ps(bk.add(8));
            let x = _mm256_broadcast_ss(&*ak);
            c00 = _mm256_fmadd_ps(x, b0, c00);
            c01 = _mm256_fmadd_ps(x, b1, c01);
            let x = _mm256_broadcast_ss(&*ak.add(1));
            c10 = _mm256_fmadd_ps(x, b0, c10);
            c11 = _mm256_fmadd_ps(x, b1, c11);
            let x = _mm256_broadcast_ss(&*ak.add(2));
            c20 = _mm256_fmadd_ps(x, b0, c20);
            c21 = _mm256_fmadd_ps(x, b1, c21);
            let x = _mm256_broadcast_ss(&*ak.add(3));
            c30 = _mm256_fmadd_ps(x, b0, c30);
            c31 = _mm256_fmadd_ps(x, b1, c31);
            let x = _mm256_broadcast_ss(&*ak.add(4));
            c40 = _mm256_fmadd_ps(x, b0, c40);
            c41 = _mm256_fmadd_ps(x, b1, c41);
            let x = _mm256_broadcast_ss(&*ak.add(5));
            c50 = _mm256_fmadd_ps(x, b0, c50);
            c51 = _mm256_fmadd_ps(x, b1, c51);
        }};
    }
    let (mut ak, mut bk) = (a, b);
    // Four k steps per iteration (the same steps in the same order), then the rest.
    for _ in 0..kc / 4 {
        step!(ak, bk);
        step!(ak.add(MR), bk.add(NR));
        step!(ak.add(2 * MR), bk.add(2 * NR));
        step!(ak.add(3 * MR), bk.add(3 * NR));
        ak = ak.add(4 * MR);
        bk = bk.add(4 * NR);
    }
    for _ in 0..kc % 4 {
        step!(ak, bk);
        ak = ak.add(MR);
        bk = bk.add(NR);
    }
    let out = [[c00, c01], [c10, c11], [c20, c21], [c30, c31], [c40, c41], [c50, c51]];
    for (r, or) in out.iter().enumerate() {
        _mm256_storeu_ps(c.add(r * ldc), or[0]);
        _mm256_storeu_ps(c.add(r * ldc + 8), or[1]);
    }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_neon(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, load: bool) {
    use std::arch::aarch64::*;
    let mut acc = [[vdupq_n_f32(0.0); 4]; MR];
    if load {
        for (r, ar) in acc.iter_mut().enumerate() {
            for (q, aq) in ar.iter_mut().enumerate() {
                *aq = vld1q_f32(c.add(r * ldc + q * 4));
            }
        }
    }
    for kk in 0..kc {
        let bk = b.add(kk * NR);
        let bv = [vld1q_f32(bk), vld1q_f32(bk.add(4)), vld1q_f32(bk.add(8)), vld1q_f32(bk.add(12))];
        for (r, ar) in acc.iter_mut().enumerate() {
            let x = vdupq_n_f32(*a.add(kk * MR + r));
            for (q, aq) in ar.iter_mut().enumerate() {
                // vfmaq_f32(acc, x, b) = acc + x * b, fused: the same bits as fma(x, b, acc).
                *aq = vfmaq_f32(*aq, x, bv[q]);
            }
        }
    }
    for (r, ar) in acc.iter().enumerate() {
        for (q, aq) in ar.iter().enumerate() {
            vst1q_f32(c.add(r * ldc + q * 4), *aq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        // Values of mixed magnitude so that summation order shows in the bits.
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let u = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                if s.is_multiple_of(7) {
                    u * 1000.0
                } else {
                    u
                }
            })
            .collect()
    }

    const SHAPES: &[(usize, usize, usize)] = &[
        (1, 1, 1),
        (1, 37, 5),
        (29, 1, 13),
        (7, 17, 3),
        (6, 16, 256),
        (12, 32, 513),
        (48, 64, 40),
        (13, 33, 257),
        (50, 45, 600),
        (5, 19, 1030),
        (64, 48, 2048),
        (3, 3, 0),
    ];

    #[test]
    fn every_path_and_thread_split_gives_the_same_bits_as_one_fma_chain() {
        for &(m, n, k) in SHAPES {
            for trans in 0..4 {
                let ad = data(m * k, (m * 31 + k) as u32);
                let bd = data(k * n, (n * 17 + k) as u32);
                let a = if trans & 1 == 0 { MatRef::rows(&ad, k) } else { MatRef::t(&ad, m) };
                let b = if trans & 2 == 0 { MatRef::rows(&bd, n) } else { MatRef::t(&bd, k) };
                // The contract, written as plainly as possible: one exactly rounded fma chain per
                // element, k increasing, from +0.
                let mut want = vec![0f32; m * n];
                for i in 0..m {
                    for j in 0..n {
                        let mut acc = 0f32;
                        for kk in 0..k {
                            acc = libm::fmaf(a.at(i, kk), b.at(kk, j), acc);
                        }
                        want[i * n + j] = acc;
                    }
                }
                for path in Path::all_available() {
                    for parallel in [false, true] {
                        let mut c = vec![f32::NAN; m * n];
                        matmul_with(path, a, b, &mut c, m, n, k, parallel);
                        let same = c.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same, "{} ({m}, {n}, {k}) trans {trans} parallel {parallel}", path.name());
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_is_close_to_an_f64_product() {
        let (m, n, k) = (9, 23, 700);
        let ad = data(m * k, 1);
        let bd = data(k * n, 2);
        let mut c = vec![0f32; m * n];
        matmul(MatRef::rows(&ad, k), MatRef::rows(&bd, n), &mut c, m, n, k);
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k).map(|kk| ad[i * k + kk] as f64 * bd[kk * n + j] as f64).sum();
                let mag: f64 = (0..k).map(|kk| (ad[i * k + kk] as f64 * bd[kk * n + j] as f64).abs()).sum();
                assert!((c[i * n + j] as f64 - exact).abs() <= 1e-5 * mag + 1e-6, "({i}, {j})");
            }
        }
    }
}
