//! C = A B for f32 matrices with any strides, under the contract: every C[i, j] is ONE fused
//! multiply-add chain `acc = fma(A[i,k], B[k,j], acc)` for k = 0, 1, ..., K-1 starting from
//! acc = +0. Blocking over k carries the accumulator through C (it is stored and reloaded as
//! the same f32, never summed per block and added). SIMD runs across columns of C only; threads
//! split rows of C only; there is no split-k. So every path and every thread count gives the
//! same bits, and they depend on nothing but A and B.
//!
//! Layout: B is packed into panels of 16 columns (`[k][16]`, zero-padded), A into tiles of
//! 6 rows (`[k][6]`, zero-padded); a microkernel keeps a 6 x 16 tile of C in registers,
//! broadcasts A[i, k] and fmas it with B[k, j..j+16]. Padding only feeds rows and columns that
//! are thrown away.

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
    #[inline]
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
pub fn matmul_with(path: Path, a: MatRef, b: MatRef, c: &mut [f32], m: usize, n: usize, k: usize, parallel: bool) {
    assert_eq!(c.len(), m * n, "matmul: C has {} elements, want {m} x {n}", c.len());
    assert!(path.available(), "matmul: the {} path is not available on this CPU", path.name());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let bp = pack_b(b, n, k);
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

/// Pack B into ceil(n/16) panels of k x 16, zero-padded.
fn pack_b(b: MatRef, n: usize, k: usize) -> Vec<f32> {
    let panels = n.div_ceil(NR);
    let mut p = vec![0f32; panels * k * NR];
    for (pi, panel) in p.chunks_mut(k * NR).enumerate() {
        let j0 = pi * NR;
        let w = NR.min(n - j0);
        for kk in 0..k {
            let dst = &mut panel[kk * NR..kk * NR + w];
            for (jj, d) in dst.iter_mut().enumerate() {
                *d = b.at(kk, j0 + jj);
            }
        }
    }
    p
}

/// Rows r0..r0+mb of C.
#[allow(clippy::too_many_arguments)]
fn block(path: Path, a: MatRef, bp: &[f32], c: &mut [f32], r0: usize, mb: usize, n: usize, k: usize) {
    // Pack this block's rows of A into 6-row tiles of k x 6.
    let tiles = mb.div_ceil(MR);
    let mut ap = vec![0f32; tiles * k * MR];
    for (t, tile) in ap.chunks_mut(k * MR).enumerate() {
        let h = MR.min(mb - t * MR);
        for kk in 0..k {
            for r in 0..h {
                tile[kk * MR + r] = a.at(r0 + t * MR + r, kk);
            }
        }
    }
    let panels = n.div_ceil(NR);
    let mut acc = [0f32; MR * NR];
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        for p in 0..panels {
            let j0 = p * NR;
            let w = NR.min(n - j0);
            let bpanel = &bp[(p * k + k0) * NR..(p * k + k0 + kc) * NR];
            for t in 0..tiles {
                let i0 = t * MR;
                let h = MR.min(mb - i0);
                // The accumulator: +0 at k = 0, else the chain so far, stored in C.
                if k0 == 0 {
                    acc = [0f32; MR * NR];
                } else {
                    for r in 0..h {
                        acc[r * NR..r * NR + w].copy_from_slice(&c[(i0 + r) * n + j0..(i0 + r) * n + j0 + w]);
                    }
                }
                let atile = &ap[(t * k + k0) * MR..(t * k + k0 + kc) * MR];
                micro(path, kc, atile, bpanel, &mut acc);
                for r in 0..h {
                    c[(i0 + r) * n + j0..(i0 + r) * n + j0 + w].copy_from_slice(&acc[r * NR..r * NR + w]);
                }
            }
        }
        k0 += kc;
    }
}

#[inline]
fn micro(path: Path, kc: usize, a: &[f32], b: &[f32], acc: &mut [f32; MR * NR]) {
    debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul_with` checked that the CPU has AVX2 and FMA; the slices hold kc rows.
        Path::Avx2 => unsafe { micro_avx2(kc, a.as_ptr(), b.as_ptr(), acc) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `matmul_with` checked that the CPU has NEON; the slices hold kc rows.
        Path::Neon => unsafe { micro_neon(kc, a.as_ptr(), b.as_ptr(), acc) },
        _ => micro_scalar(kc, a, b, acc),
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

fn micro_scalar(kc: usize, a: &[f32], b: &[f32], acc: &mut [f32; MR * NR]) {
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
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2(kc: usize, a: *const f32, b: *const f32, acc: &mut [f32; MR * NR]) {
    use std::arch::x86_64::*;
    let p = acc.as_mut_ptr();
    let mut c00 = _mm256_loadu_ps(p);
    let mut c01 = _mm256_loadu_ps(p.add(8));
    let mut c10 = _mm256_loadu_ps(p.add(16));
    let mut c11 = _mm256_loadu_ps(p.add(24));
    let mut c20 = _mm256_loadu_ps(p.add(32));
    let mut c21 = _mm256_loadu_ps(p.add(40));
    let mut c30 = _mm256_loadu_ps(p.add(48));
    let mut c31 = _mm256_loadu_ps(p.add(56));
    let mut c40 = _mm256_loadu_ps(p.add(64));
    let mut c41 = _mm256_loadu_ps(p.add(72));
    let mut c50 = _mm256_loadu_ps(p.add(80));
    let mut c51 = _mm256_loadu_ps(p.add(88));
    for kk in 0..kc {
        let b0 = _mm256_loadu_ps(b.add(kk * NR));
        let b1 = _mm256_loadu_ps(b.add(kk * NR + 8));
        let ak = a.add(kk * MR);
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
    }
    _mm256_storeu_ps(p, c00);
    _mm256_storeu_ps(p.add(8), c01);
    _mm256_storeu_ps(p.add(16), c10);
    _mm256_storeu_ps(p.add(24), c11);
    _mm256_storeu_ps(p.add(32), c20);
    _mm256_storeu_ps(p.add(40), c21);
    _mm256_storeu_ps(p.add(48), c30);
    _mm256_storeu_ps(p.add(56), c31);
    _mm256_storeu_ps(p.add(64), c40);
    _mm256_storeu_ps(p.add(72), c41);
    _mm256_storeu_ps(p.add(80), c50);
    _mm256_storeu_ps(p.add(88), c51);
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn micro_neon(kc: usize, a: *const f32, b: *const f32, acc: &mut [f32; MR * NR]) {
    use std::arch::aarch64::*;
    let p = acc.as_mut_ptr();
    let mut c = [[vdupq_n_f32(0.0); 4]; MR];
    for (r, cr) in c.iter_mut().enumerate() {
        for (q, cq) in cr.iter_mut().enumerate() {
            *cq = vld1q_f32(p.add(r * NR + q * 4));
        }
    }
    for kk in 0..kc {
        let bk = b.add(kk * NR);
        let bv = [vld1q_f32(bk), vld1q_f32(bk.add(4)), vld1q_f32(bk.add(8)), vld1q_f32(bk.add(12))];
        for (r, cr) in c.iter_mut().enumerate() {
            let x = vdupq_n_f32(*a.add(kk * MR + r));
            for (q, cq) in cr.iter_mut().enumerate() {
                // vfmaq_f32(acc, x, b) = acc + x * b, fused: the same bits as fma(x, b, acc).
                *cq = vfmaq_f32(*cq, x, bv[q]);
            }
        }
    }
    for (r, cr) in c.iter().enumerate() {
        for (q, cq) in cr.iter().enumerate() {
            vst1q_f32(p.add(r * NR + q * 4), *cq);
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
                if s % 7 == 0 {
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
