//! C = A B for f32 matrices with any strides, under the contract: every C[i, j] is ONE fused
//! multiply-add chain `acc = fma(A[i,k], B[k,j], acc)` for k = 0, 1, ..., K-1 starting from
//! acc = +0. Blocking over k carries the accumulator through C (it is stored and reloaded as
//! the same f32, never summed per block and added). SIMD runs across columns of C only; threads
//! split C into disjoint blocks (rows, and columns when C has few rows); there is no split-k.
//! So every path and every thread count gives the same bits, and they depend on nothing but A
//! and B.
//!
//! Layout: a microkernel keeps a 6 x 16 tile of C in registers, broadcasts A[i, k] and fmas it
//! with B[k, j..j+16]. B is always packed once per call into contiguous `[k][16]` panels
//! (zero-padded, in a reused per-thread buffer). C is cut into tasks of (row block of at most
//! `MC_TILES` 6-row tiles) x (group of panels); a task runs over k-blocks of `KC`, and within
//! one, every panel of its group sweeps past the task's A block, which stays in L2 while each
//! k x 16 panel block stays in L1 for all the tiles. A is packed per k-block into `[k][6]`
//! tiles, zero-padded, so the microkernel reads A and B with constant strides. Padding only
//! feeds rows and columns that are thrown away.

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

/// C (m x n, row-major, overwritten) = A (m x k) B (k x n), on the configured path, with
/// blocks of C spread over the rayon pool.
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
    assert_eq!(Some(c.len()), m.checked_mul(n), "matmul: C has {} elements, want {m} x {n}", c.len());
    assert!(path.available(), "matmul: the {} path is not available on this CPU", path.name());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    // Every element read below is some A(i, kk) / B(kk, j) with i < m, j < n, kk < k; these
    // two checks make the microkernels' raw reads of A in place safe.
    assert!(inside(a, m, k), "matmul: A is too short");
    assert!(inside(b, k, n), "matmul: B is too short");
    let threads = if parallel { rayon::current_num_threads().max(1) } else { 1 };
    let mut bbuf = take(&PACKED_B);
    let bp = pack_b(b, n, k, threads > 1, &mut bbuf);
    // SAFETY: A was checked above; `bp` is B packed, k x n.
    unsafe { run(path, a, bp, c, m, threads) };
    put(&PACKED_B, bbuf);
}

/// B (k x n) packed once into 16-column panels, each `[k][16]` and zero-padded, for several
/// products that share it: the attention products of one head reuse one packing of K, V, Q
/// or dY for all their row slabs. `sub_rows` and `cols` take sub-matrices without copying.
#[derive(Clone, Copy)]
pub struct PackedB<'a> {
    data: &'a [f32],
    /// Rows per panel in `data`: the k of the packed matrix.
    ktot: usize,
    /// First row of this view.
    k0: usize,
    k: usize,
    n: usize,
}

impl<'a> PackedB<'a> {
    /// Pack B (k x n) into `buf`, on this thread.
    pub fn new(b: MatRef, n: usize, k: usize, buf: &'a mut Vec<f32>) -> PackedB<'a> {
        Self::packed(b, n, k, false, buf)
    }
    /// Pack B (k x n) into `buf`, its panels split over the rayon pool.
    pub fn new_par(b: MatRef, n: usize, k: usize, buf: &'a mut Vec<f32>) -> PackedB<'a> {
        Self::packed(b, n, k, true, buf)
    }
    fn packed(b: MatRef, n: usize, k: usize, parallel: bool, buf: &'a mut Vec<f32>) -> PackedB<'a> {
        if n == 0 || k == 0 {
            return PackedB { data: &[], ktot: k, k0: 0, k, n };
        }
        assert!(inside(b, k, n), "matmul: B is too short");
        pack_b(b, n, k, parallel, buf)
    }
    /// Rows (the k of a product) of this view.
    pub fn rows(&self) -> usize {
        self.k
    }
    /// Rows k0..k0+k of this view.
    pub fn sub_rows(self, k0: usize, k: usize) -> PackedB<'a> {
        assert!(
            k0.checked_add(k).is_some_and(|end| end <= self.k),
            "matmul: rows {k0}..{k0}+{k} of a packed B of {} rows",
            self.k
        );
        PackedB { k0: self.k0 + k0, k, ..self }
    }
    /// The first n columns of this view.
    pub fn cols(self, n: usize) -> PackedB<'a> {
        assert!(n <= self.n, "matmul: {n} columns of a packed B of {}", self.n);
        PackedB { n, ..self }
    }
    /// Rows k0.. of panel p (of this view).
    fn panel(&self, p: usize, k0: usize) -> *const f32 {
        self.data[(p * self.ktot + self.k0 + k0) * NR..].as_ptr()
    }
}

/// C (m x n, overwritten) = A (m x k) B on this thread, with B packed beforehand (n and k are
/// B's): the same bits as `matmul`.
pub fn matmul_packed_serial(a: MatRef, b: PackedB, c: &mut [f32], m: usize) {
    matmul_packed_with(a, b, c, m, 1)
}

/// As `matmul_packed_serial`, with blocks of C spread over the rayon pool.
pub fn matmul_packed(a: MatRef, b: PackedB, c: &mut [f32], m: usize) {
    matmul_packed_with(a, b, c, m, rayon::current_num_threads().max(1))
}

fn matmul_packed_with(a: MatRef, b: PackedB, c: &mut [f32], m: usize, threads: usize) {
    let (n, k) = (b.n, b.k);
    assert_eq!(Some(c.len()), m.checked_mul(n), "matmul: C has {} elements, want {m} x {n}", c.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    assert!(inside(a, m, k), "matmul: A is too short");
    // SAFETY: A was checked above; B's view lies inside its packing (`sub_rows`, `cols`).
    unsafe { run(super::path(), a, b, c, m, threads) };
}

/// C = A B over the tasks of a `Plan` for `threads` threads.
///
/// SAFETY: `path` must be available; A must hold every (i, kk) of an m x b.k view; c.len()
/// must be m x b.n; m, b.n and b.k must be > 0.
unsafe fn run(path: Path, a: MatRef, bp: PackedB, c: &mut [f32], m: usize, threads: usize) {
    let n = bp.n;
    let plan = Plan::new(m, n, threads);
    let cp = SharedC(c.as_mut_ptr());
    let task = |task: usize| {
        let (t0, t1, p0, p1) = plan.task(task);
        let mut abuf = take(&PACKED_A);
        // SAFETY: the tasks of `plan` cover disjoint rectangles of C (rows of tiles t0..t1,
        // columns of panels p0..p1), all inside the m x n of `c`; A and B were checked by the
        // caller.
        unsafe { block(path, a, bp, cp, m, t0, t1, p0, p1, &mut abuf) };
        put(&PACKED_A, abuf);
    };
    if threads > 1 && plan.tasks() > 1 {
        (0..plan.tasks()).into_par_iter().for_each(task);
    } else {
        (0..plan.tasks()).for_each(task);
    }
}

/// Rows of 6-row tiles of A packed per k-block: at most this many tiles per row block, so the
/// packed A block (MC_TILES x KC x 6 floats = 192 KiB) stays in L2 while every panel of B
/// sweeps past it.
const MC_TILES: usize = 32;
/// Fewest tiles in a row block when a parallel call also splits columns: each k x 16 panel
/// block of B is then reused by at least this many microkernel calls while it is in L1.
const MIN_TILES: usize = 8;
/// Fewest 16-column panels in a column group (each group packs its own copy of its A block).
const MIN_GROUP_PANELS: usize = 4;
/// Blocks per thread, so that rayon's work stealing evens out a core that is also busy with
/// another process.
const BLOCKS_PER_THREAD: usize = 4;

/// How C is cut into tasks: row blocks of `rb` tiles times `groups` groups of panels. Only
/// the schedule depends on it, never the bits.
struct Plan {
    tiles: usize,
    panels: usize,
    rb: usize,
    rows: usize,
    groups: usize,
}

impl Plan {
    fn new(m: usize, n: usize, threads: usize) -> Plan {
        let tiles = m.div_ceil(MR);
        let panels = n.div_ceil(NR);
        let want = if threads > 1 { threads * BLOCKS_PER_THREAD } else { 1 };
        let mut rb = tiles.div_ceil(want);
        let mut groups = 1;
        if rb < MIN_TILES && panels >= 2 * MIN_GROUP_PANELS {
            // Few rows (dW of a narrow layer): taller row blocks, and split the columns too.
            rb = MIN_TILES.min(tiles);
            groups = want.div_ceil(tiles.div_ceil(rb)).min(panels / MIN_GROUP_PANELS).max(1);
        }
        let mut rb = rb.clamp(1, MC_TILES);
        if threads > 1 && groups == 1 {
            // As many row blocks as a multiple of the threads, so that they end together
            // (11 blocks on 2 threads left one thread idle for a block's time).
            let rows = tiles.div_ceil(rb).next_multiple_of(threads).min(tiles);
            rb = tiles.div_ceil(rows);
        }
        if rb > 1 {
            // An even number of tiles, so the 12-row kernels of a path that has them cover
            // every block without a lone 6-row tile.
            rb = rb.next_multiple_of(2).min(MC_TILES);
        }
        Plan { tiles, panels, rb, rows: tiles.div_ceil(rb), groups }
    }
    fn tasks(&self) -> usize {
        self.rows * self.groups
    }
    /// Task i: tiles t0..t1 and panels p0..p1. Column-group-major, so a thread's share of the
    /// tasks (rayon splits the range in halves) reads about 1/threads of B.
    fn task(&self, i: usize) -> (usize, usize, usize, usize) {
        let (g, r) = (i / self.rows, i % self.rows);
        let t0 = r * self.rb;
        let p0 = g * self.panels / self.groups;
        let p1 = (g + 1) * self.panels / self.groups;
        (t0, (t0 + self.rb).min(self.tiles), p0, p1)
    }
}

thread_local! {
    /// Reused packing buffers: a fresh multi-MB Vec per call costs a calloc memset or page
    /// faults. Taken out while in use, so a nested call just allocates its own.
    static PACKED_B: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static PACKED_A: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

fn take(buf: &'static std::thread::LocalKey<std::cell::Cell<Vec<f32>>>) -> Vec<f32> {
    buf.with(|b| b.take())
}

fn put(buf: &'static std::thread::LocalKey<std::cell::Cell<Vec<f32>>>, v: Vec<f32>) {
    buf.with(|b| b.set(v))
}

/// C's base pointer, shared by tasks that write disjoint rectangles of it.
#[derive(Clone, Copy)]
struct SharedC(*mut f32);
// SAFETY: only used by `matmul_with`, whose tasks write disjoint parts of C.
unsafe impl Send for SharedC {}
// SAFETY: as above.
unsafe impl Sync for SharedC {}

/// Every element (i, j), i < rows, j < cols, of `x` lies inside its data: the largest index
/// `(rows - 1) rs + (cols - 1) cs` is computed with checked arithmetic, since these are the
/// checks that make the microkernels' raw reads sound, and a wrapped product would pass them.
fn inside(x: MatRef, rows: usize, cols: usize) -> bool {
    let last = (rows.max(1) - 1)
        .checked_mul(x.rs)
        .and_then(|r| (cols.max(1) - 1).checked_mul(x.cs).and_then(|c| r.checked_add(c)));
    last.is_some_and(|l| l < x.data.len())
}

/// Rows copied at a time when a row-major B is packed a group of panels at a time: each panel
/// then receives 4 consecutive lines (256 bytes). Measured on a 2-core AVX-512 Xeon, in one
/// process, alternating: packing a 2048 x 1376 B took 2.3-2.8 ms this way (groups of half the
/// row, 1 or 4 rows) against 4.1 ms panel by panel, and 2048 x 512 took 0.7 ms against 1.8.
const ROW_GROUP_ROWS: usize = 4;

/// Packs every k x 16 panel of B into `buf` as contiguous `[k][16]`, zero-padded (a strided
/// panel read in place thrashes L1: a row stride of 4 KiB puts all of its k rows in one cache
/// set). Copies only; the panels are split over the pool when `parallel`.
fn pack_b<'a>(b: MatRef, n: usize, k: usize, parallel: bool, buf: &'a mut Vec<f32>) -> PackedB<'a> {
    let panels = n.div_ceil(NR);
    assert!(
        panels.checked_mul(k).and_then(|x| x.checked_mul(NR)).is_some(),
        "matmul: a packed B of {k} x {n} does not fit in memory"
    );
    if buf.len() < panels * k * NR {
        buf.resize(panels * k * NR, 0.0);
    }
    let packed = &mut buf[..panels * k * NR];
    let pack = |(pi, panel): (usize, &mut [f32])| {
        let j0 = pi * NR;
        let w = NR.min(n - j0);
        if w < NR {
            panel.fill(0.0);
        }
        if b.cs == 1 {
            for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                dst[..w].copy_from_slice(&b.data[kk * b.rs + j0..kk * b.rs + j0 + w]);
            }
        } else if b.rs == 1 && w == NR && transpose_avx2() {
            // SAFETY: AVX2 is available; B is k x n with rs = 1 (checked by every caller with
            // `inside`), and columns j0..j0+16 are inside it; `panel` holds k x 16 floats.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                pack_panel_t_avx2(b.data[j0 * b.cs..].as_ptr(), b.cs, k, panel.as_mut_ptr())
            };
        } else {
            for jj in 0..w {
                let col = (j0 + jj) * b.cs;
                for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                    dst[jj] = b.data[col + kk * b.rs];
                }
            }
        }
    };
    // A row-major B is copied a group of full panels at a time, a few rows at a time: each row
    // of the group is one long contiguous read. Panel by panel, the reads stride down the rows
    // 64 bytes at a time, a page apart or more, where the prefetcher does not follow. A group
    // is half of the full panels per thread (two tasks a thread, for a core that is busy).
    let full = if b.cs == 1 { n / NR } else { 0 };
    let threads =
        if parallel && panels > 1 && k * n >= 1 << 16 { rayon::current_num_threads().max(1) } else { 1 };
    let group = full.div_ceil(2 * threads).max(1);
    let pack_rows = |(gi, dst): (usize, &mut [f32])| {
        let j0 = gi * group * NR;
        let np = dst.len() / (k * NR);
        let mut k0 = 0;
        while k0 < k {
            let k1 = (k0 + ROW_GROUP_ROWS).min(k);
            for p in 0..np {
                for kk in k0..k1 {
                    let o = kk * b.rs + j0 + p * NR;
                    let d: &mut [f32; NR] =
                        (&mut dst[(p * k + kk) * NR..(p * k + kk + 1) * NR]).try_into().unwrap();
                    *d = b.data[o..o + NR].try_into().unwrap();
                }
            }
            k0 = k1;
        }
    };
    let (head, tail) = packed.split_at_mut(full * k * NR);
    if threads > 1 {
        head.par_chunks_mut(group * k * NR).enumerate().for_each(pack_rows);
        tail.par_chunks_mut(k * NR).enumerate().for_each(|(i, p)| pack((full + i, p)));
    } else {
        head.chunks_mut(group * k * NR).enumerate().for_each(pack_rows);
        tail.chunks_mut(k * NR).enumerate().for_each(|(i, p)| pack((full + i, p)));
    }
    PackedB { data: packed, ktot: k, k0: 0, k, n }
}

/// Whether `pack_b` may transpose with AVX2 (the copies are the same on every path).
fn transpose_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
/// One full 16-column panel of a B whose columns are contiguous (`x Wᵀ`, and Kᵀ, Vᵀ of a
/// head): dst[kk][jj] = src[jj * cs + kk], eight columns and eight k at a time through an 8 x 8
/// transpose in registers, instead of a scalar store per float. Copies only.
///
/// SAFETY: src[jj * cs + kk] must be readable for jj < 16, kk < k; dst must hold k x 16 floats.
unsafe fn pack_panel_t_avx2(src: *const f32, cs: usize, k: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    let k8 = k / 8 * 8;
    for half in 0..2 {
        let base = src.add(half * 8 * cs);
        let out = dst.add(half * 8);
        let mut kk = 0;
        while kk < k8 {
            let r = [0, 1, 2, 3, 4, 5, 6, 7].map(|j| _mm256_loadu_ps(base.add(j * cs + kk)));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let cols = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (i, v) in cols.into_iter().enumerate() {
                _mm256_storeu_ps(out.add((kk + i) * NR), v);
            }
            kk += 8;
        }
        for kk in k8..k {
            for j in 0..8 {
                *out.add(kk * NR + j) = *base.add(j * cs + kk);
            }
        }
    }
}

/// Pack tiles t0..t1 (rows t0*6.., at most m) of A, columns k0..k0+kc, into `buf` as
/// consecutive kc x 6 tiles, zero-padded. Copies only: the layout never changes a bit.
fn pack_a_block(a: MatRef, m: usize, t0: usize, t1: usize, k0: usize, kc: usize, buf: &mut [f32]) {
    if a.rs == 1 {
        // A's columns are contiguous (A is a transpose): a tile reads 6 floats from each of kc
        // rows far apart, which would thrash L1 if each tile walked all kc of them. Walk KB rows
        // at a time for every tile instead, so those rows stay in L1 and each is read once.
        const KB: usize = 8;
        let mut kb0 = 0;
        while kb0 < kc {
            let kb = KB.min(kc - kb0);
            // The next KB rows, while these are copied: the copies wait on those loads (dY
            // left the caches while the rest of the backward ran).
            #[cfg(target_arch = "x86_64")]
            prefetch_rows(a, k0 + kb0 + kb, KB.min(kc - kb0 - kb), t0 * MR, (t1 * MR).min(m));
            for t in t0..t1 {
                let (i0, h) = (t * MR, MR.min(m - t * MR));
                let tile = &mut buf[((t - t0) * kc + kb0) * MR..((t - t0) * kc + kb0 + kb) * MR];
                for (kk, dst) in tile.chunks_exact_mut(MR).enumerate() {
                    let o = (k0 + kb0 + kk) * a.cs + i0;
                    if h == MR {
                        // A fixed-length copy: inline moves, not a memcpy call per 6 floats.
                        let src: &[f32; MR] = a.data[o..o + MR].try_into().unwrap();
                        let dst: &mut [f32; MR] = dst.try_into().unwrap();
                        *dst = *src;
                    } else {
                        dst[..h].copy_from_slice(&a.data[o..o + h]);
                        dst[h..].fill(0.0);
                    }
                }
            }
            kb0 += kb;
        }
        return;
    }
    for t in t0..t1 {
        let tile = &mut buf[(t - t0) * kc * MR..(t - t0 + 1) * kc * MR];
        pack_a(a, t * MR, MR.min(m - t * MR), k0, kc, tile);
    }
}

/// Asks the cache for columns i0..i1 of A's rows k..k+n (an A with rs == 1 stores them
/// contiguously, cs apart): the next k-rows a transposed pack reads.
#[cfg(target_arch = "x86_64")]
fn prefetch_rows(a: MatRef, k: usize, n: usize, i0: usize, i1: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for kk in k..k + n {
        let (lo, hi) = (kk * a.cs + i0, (kk * a.cs + i1).min(a.data.len()));
        let mut o = lo;
        while o < hi {
            // SAFETY: o < a.data.len(); a prefetch reads nothing architecturally.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(a.data.as_ptr().add(o).cast()) };
            o += 16;
        }
    }
}

/// Pack rows r0..r0+h (h <= 6), k0..k0+kc of A into a kc x 6 tile, zero-padded.
fn pack_a(a: MatRef, r0: usize, h: usize, k0: usize, kc: usize, tile: &mut [f32]) {
    if a.cs == 1 && h == MR {
        // Row-major A: the six rows are read side by side and interleaved, one k at a time.
        let row = |r: usize| &a.data[(r0 + r) * a.rs + k0..(r0 + r) * a.rs + k0 + kc];
        let (x0, x1, x2, x3, x4, x5) = (row(0), row(1), row(2), row(3), row(4), row(5));
        let cols = x0.iter().zip(x1).zip(x2).zip(x3).zip(x4).zip(x5);
        for (dst, (((((&v0, &v1), &v2), &v3), &v4), &v5)) in tile.chunks_exact_mut(MR).zip(cols) {
            let dst: &mut [f32; MR] = dst.try_into().unwrap();
            *dst = [v0, v1, v2, v3, v4, v5];
        }
        return;
    }
    if h < MR {
        tile.fill(0.0);
    }
    for r in 0..h {
        let row = (r0 + r) * a.rs;
        for (kk, dst) in tile.chunks_exact_mut(MR).take(kc).enumerate() {
            dst[r] = a.data[row + (k0 + kk) * a.cs];
        }
    }
}

/// A microkernel: `micro(kc, a, ars, acs, b, bs, c, ldc, load)` computes the 6 x 16 tile at
/// `c` (row stride `ldc`): acc = load ? c : +0; for k in 0..kc: acc[r][j] = fma(A[r][k],
/// B[k][j], acc[r][j]); c = acc. A[r][k] is `a[r * ars + k * acs]`, B[k][j] is `b[k * bs + j]`.
/// The caller guarantees that every one of those addresses is in bounds.
type Micro = unsafe fn(usize, *const f32, usize, usize, *const f32, usize, *mut f32, usize, bool);

/// A microkernel over two adjacent panels: `micro2(kc, a, ars, acs, b0, b1, c, ldc, load)`
/// computes the 6 x 32 tile at `c` as `Micro` would its two 6 x 16 halves, with columns 0..16
/// from the packed `[k][16]` panel at `b0` and columns 16..32 from the one at `b1`: each C[r][j]
/// is the same fma chain, 16 lanes of one register doing what 8 lanes of two did.
type Micro2 = unsafe fn(usize, *const f32, usize, usize, *const f32, *const f32, *mut f32, usize, bool);

/// A microkernel over two packed A tiles and two panels: `micro4(kc, a0, a1, b0, b1, c, ldc,
/// load)` computes the 12 x 32 tile at `c` as `Micro2` would its two 6 x 32 halves, rows 0..6
/// from the packed `[k][6]` tile at `a0` and rows 6..12 from the one at `a1`.
type Micro4 = unsafe fn(usize, *const f32, *const f32, *const f32, *const f32, *mut f32, usize, bool);

/// A microkernel over 12 rows of A read in place and two panels: `micro4s(kc, a, ars, acs, b0,
/// b1, c, ldc, load)` computes the 12 x 32 tile at `c` as `Micro2` would its two 6 x 32 halves
/// (rows 0..6 at `a`, rows 6..12 at `a + 6 ars`).
type Micro4s = Micro2;

/// The microkernels of a path: one for a packed `[k][6]` A tile (ars = 1, acs = 6, which it
/// may assume), one for A read in place with any strides; both take a packed `[k][16]` B panel.
/// A path with `pair` kernels (AVX-512) runs them on panels two at a time, and the single ones
/// on an odd last panel.
struct Kernels {
    packed: Micro,
    strided: Micro,
    pair: Option<(Micro2, Micro2)>,
    quad: Option<Micro4>,
    /// The 12 x 32 kernel for A read in place.
    quad_strided: Option<Micro4s>,
    /// The k-block length.
    kc: usize,
    /// The k-block length of a task whose A is packed and that has two tiles or more, where the
    /// `quad` kernel does most of the work (`kc` on paths without one).
    kc_quad: usize,
}

/// The k-block length of the pair kernels: a pair of panels is twice as wide, so its k-blocks
/// are half as long and a pair block (KC2 x 32 floats) fits in L1 like a single panel block.
/// A fixed constant per path, and only the schedule: the chain is carried through C.
const KC2: usize = 128;
/// The k-block length of the 12 x 32 kernel: it streams its A tiles (12 floats a k step) from
/// L2 and keeps only the 32-wide pair block in L1, so that block (KCQ x 32 floats = 32 KiB) may
/// be twice as long as the 6 x 32 kernel's, halving how often each C tile is stored and
/// reloaded. Measured on a 2-core AVX-512 Xeon (L1d 48 KiB): 3-8% faster linear products than
/// 128, with 384 and 512 no better within the noise.
const KCQ: usize = 256;

fn kernels_of(path: Path) -> Kernels {
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => Kernels {
            packed: micro_avx2_packed,
            strided: micro_avx2_strided,
            pair: None,
            quad: None,
            quad_strided: None,
            kc: KC,
            kc_quad: KC,
        },
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 => Kernels {
            packed: micro_avx2_packed,
            strided: micro_avx2_strided,
            pair: Some((micro_avx512_packed, micro_avx512_strided)),
            quad: Some(micro_avx512_packed12),
            quad_strided: Some(micro_avx512_strided12),
            kc: KC2,
            kc_quad: KCQ,
        },
        #[cfg(target_arch = "aarch64")]
        Path::Neon => Kernels {
            packed: micro_neon,
            strided: micro_neon,
            pair: None,
            quad: None,
            quad_strided: None,
            kc: KC,
            kc_quad: KC,
        },
        _ => Kernels {
            packed: micro_scalar,
            strided: micro_scalar,
            pair: None,
            quad: None,
            quad_strided: None,
            kc: KC,
            kc_quad: KC,
        },
    }
}

/// The k-block length for a product of depth k with blocks of at most `max`: the fewest blocks,
/// of equal length rounded up to a multiple of 4 (the kernels' unrolling), so that k = 384 runs
/// as 192 + 192 rather than 256 + 128. A function of k and a constant only: the schedule, never
/// the bits (the chain is carried through C).
fn even_blocks(k: usize, max: usize) -> usize {
    let blocks = k.div_ceil(max).max(1);
    k.div_ceil(blocks).next_multiple_of(4).min(max)
}

/// A is packed only when a task has more than this many panels to reuse it; with fewer (the
/// attention products of 32- and 64-wide heads), the copy costs more than constant-stride
/// reads save, and full 6-row tiles are read in place.
const INPLACE_MAX_PANELS: usize = 4;
/// A is also read in place, on a path with a 12-row in-place kernel, when the whole depth is at
/// most this: its 12 rows (6 KiB) then stay in L1 for every panel pair, and the copy (one float
/// moved for every 2n flops) is not worth it. Measured on a 2-core AVX-512 Xeon, in one
/// process, alternating, two threads: 2048 x 128 x 128 (tiny's C -> C linears) forward and dX
/// 5-8% faster, 2048 x 352 x 128 equal, and k = 256 or more 3-12% slower, hence this bound.
const INPLACE_MAX_K: usize = 128;

/// Tiles t0..t1 (rows of C) times panels p0..p1 (columns of C), for all k. A is packed per
/// k-block into `abuf` (or read in place when few panels use it, or k is short), and each k-block of A is
/// reused by every panel of the group.
///
/// SAFETY: `path` must be available; A must hold every (i, kk) of an m x bp.k view; `bp` must
/// be a view of `pack_b`'s panels; C must point to m x bp.n floats, of which this call alone
/// writes the rectangle given.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    path: Path,
    a: MatRef,
    bp: PackedB,
    c: SharedC,
    m: usize,
    t0: usize,
    t1: usize,
    p0: usize,
    p1: usize,
    abuf: &mut Vec<f32>,
) {
    let (n, k) = (bp.n, bp.k);
    let kern = kernels_of(path);
    let in_place = p1 - p0 <= INPLACE_MAX_PANELS || (kern.quad_strided.is_some() && k <= INPLACE_MAX_K);
    let tiles = t1 - t0;
    let kcb = even_blocks(k, if !in_place && tiles >= 2 { kern.kc_quad } else { kern.kc });
    let need = tiles * kcb.min(k) * MR;
    if abuf.len() < need {
        abuf.resize(need, 0.0);
    }
    let mut edge = [0f32; MR * 2 * NR];
    let mut k0 = 0;
    while k0 < k {
        let kc = kcb.min(k - k0);
        // The accumulator starts at +0 for the first k-block, then carries the chain in C.
        let load = k0 > 0;
        if in_place {
            // Only a partial last tile is packed (zero-padded rows keep the reads in bounds).
            if MR.min(m - (t1 - 1) * MR) < MR {
                pack_a_block(a, m, t1 - 1, t1, k0, kc, &mut abuf[(tiles - 1) * kc * MR..]);
            }
        } else {
            pack_a_block(a, m, t0, t1, k0, kc, abuf);
        }
        let mut p = p0;
        while p < p1 {
            // Two panels at once where the path has pair kernels and two are left.
            let pair = kern.pair.filter(|_| p + 1 < p1);
            let np = if pair.is_some() { 2 } else { 1 };
            let j0 = p * NR;
            let w = (np * NR).min(n - j0);
            let (b0, b1) = (bp.panel(p, k0), if np == 2 { bp.panel(p + 1, k0) } else { std::ptr::null() });
            let mut t = t0;
            while t < t1 {
                let i0 = t * MR;
                // Two full packed tiles at once where the path has a 12 x 32 kernel.
                let two_tiles = t + 2 <= t1 && m - i0 >= 2 * MR;
                if let Some(quad) = kern.quad.filter(|_| !in_place && np == 2 && w == 2 * NR && two_tiles) {
                    let a0 = abuf[(t - t0) * kc * MR..].as_ptr();
                    quad(kc, a0, a0.add(kc * MR), b0, b1, c.0.add(i0 * n + j0), n, load);
                    t += 2;
                    continue;
                }
                if let Some(quad) =
                    kern.quad_strided.filter(|_| in_place && np == 2 && w == 2 * NR && two_tiles)
                {
                    let ap = a.data[i0 * a.rs + k0 * a.cs..].as_ptr();
                    quad(kc, ap, a.rs, a.cs, b0, b1, c.0.add(i0 * n + j0), n, load);
                    t += 2;
                    continue;
                }
                let h = MR.min(m - i0);
                let strided = in_place && h == MR;
                let (ap, ars, acs) = if strided {
                    (a.data[i0 * a.rs + k0 * a.cs..].as_ptr(), a.rs, a.cs)
                } else {
                    (abuf[(t - t0) * kc * MR..].as_ptr(), 1, MR)
                };
                let call = |c: *mut f32, ldc: usize| match pair {
                    Some((packed2, strided2)) => {
                        let micro2 = if strided { strided2 } else { packed2 };
                        micro2(kc, ap, ars, acs, b0, b1, c, ldc, load)
                    }
                    None => {
                        let micro = if strided { kern.strided } else { kern.packed };
                        micro(kc, ap, ars, acs, b0, NR, c, ldc, load)
                    }
                };
                let c0 = c.0.add(i0 * n + j0);
                if h == MR && w == np * NR {
                    call(c0, n);
                } else {
                    let ldc = np * NR;
                    for r in 0..h {
                        std::ptr::copy_nonoverlapping(c0.add(r * n), edge[r * ldc..].as_mut_ptr(), w);
                    }
                    call(edge.as_mut_ptr(), ldc);
                    for r in 0..h {
                        std::ptr::copy_nonoverlapping(edge[r * ldc..].as_ptr(), c0.add(r * n), w);
                    }
                }
                t += 1;
            }
            p += np;
        }
        k0 += kc;
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

/// The portable microkernel (see `Micro`).
///
/// SAFETY: every address of A, B and the C tile that `Micro` names must be in bounds.
#[allow(clippy::too_many_arguments)]
unsafe fn micro_scalar(
    kc: usize,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    bs: usize,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    let mut acc = [0f32; MR * NR];
    if load {
        for r in 0..MR {
            std::ptr::copy_nonoverlapping(c.add(r * ldc), acc[r * NR..].as_mut_ptr(), NR);
        }
    }
    for kk in 0..kc {
        let bk = std::slice::from_raw_parts(b.add(kk * bs), NR);
        for r in 0..MR {
            let av = *a.add(r * ars + kk * acs);
            let row = &mut acc[r * NR..r * NR + NR];
            for (cj, &bj) in row.iter_mut().zip(bk) {
                *cj = fma(av, bj, *cj);
            }
        }
    }
    for r in 0..MR {
        std::ptr::copy_nonoverlapping(acc[r * NR..].as_ptr(), c.add(r * ldc), NR);
    }
}

/// The 6 x 16 C tile of an AVX2 microkernel as 12 accumulators: C's values when `load`, else
/// +0.
#[cfg(target_arch = "x86_64")]
macro_rules! avx2_load_tile {
    ($c:expr, $ldc:expr, $load:expr) => {{
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        if $load {
            for (r, ar) in acc.iter_mut().enumerate() {
                ar[0] = _mm256_loadu_ps($c.add(r * $ldc));
                ar[1] = _mm256_loadu_ps($c.add(r * $ldc + 8));
            }
        }
        acc
    }};
}

/// One k step of an AVX2 microkernel: B[k][0..16] from `$b`, then for each row r,
/// acc[r] = fma(A[r][k] (read at `$a[r]`), B[k], acc[r]).
#[cfg(target_arch = "x86_64")]
macro_rules! avx2_step {
    ($b:expr, [$($a:expr),*], [$(($lo:ident, $hi:ident)),*]) => {{
        let bk = $b;
        let b0 = _mm256_loadu_ps(bk);
        let b1 = _mm256_loadu_ps(bk.add(8));
        $(
            let x = _mm256_broadcast_ss(&*$a);
            $lo = _mm256_fmadd_ps(x, b0, $lo);
            $hi = _mm256_fmadd_ps(x, b1, $hi);
        )*
    }};
}

/// Store the 12 accumulators of an AVX2 microkernel into the C tile.
#[cfg(target_arch = "x86_64")]
macro_rules! avx2_store_tile {
    ($c:expr, $ldc:expr, $out:expr) => {
        for (r, or) in $out.iter().enumerate() {
            _mm256_storeu_ps($c.add(r * $ldc), or[0]);
            _mm256_storeu_ps($c.add(r * $ldc + 8), or[1]);
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
/// The AVX2 microkernel for a packed A tile (`[k][6]`) and a packed B panel (`[k][16]`): every
/// load is a base pointer plus an immediate, four k steps per loop iteration (the same fma
/// steps in the same order). `ars`, `acs` and `bs` are implied (1, 6, 16).
#[allow(clippy::too_many_arguments)]
unsafe fn micro_avx2_packed(
    kc: usize,
    a: *const f32,
    _ars: usize,
    _acs: usize,
    b: *const f32,
    _bs: usize,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    use std::arch::x86_64::*;
    let [[mut c00, mut c01], [mut c10, mut c11], [mut c20, mut c21], [mut c30, mut c31], [mut c40, mut c41], [mut c50, mut c51]] =
        avx2_load_tile!(c, ldc, load);
    // One k step. A and B advance by constant strides (6 and 16 floats), so every load is a
    // base pointer plus an immediate offset.
    macro_rules! step {
        ($ak:expr, $bk:expr) => {{
            let ak = $ak;
            avx2_step!(
                $bk,
                [ak, ak.add(1), ak.add(2), ak.add(3), ak.add(4), ak.add(5)],
                [(c00, c01), (c10, c11), (c20, c21), (c30, c31), (c40, c41), (c50, c51)]
            );
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
    avx2_store_tile!(c, ldc, [[c00, c01], [c10, c11], [c20, c21], [c30, c31], [c40, c41], [c50, c51]]);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
/// The AVX2 microkernel for A read in place (any `ars`, `acs`) and a packed B panel (`[k][16]`,
/// `bs` implied): the same fma steps in the same order as `micro_avx2_packed`.
#[allow(clippy::too_many_arguments)]
unsafe fn micro_avx2_strided(
    kc: usize,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    _bs: usize,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    use std::arch::x86_64::*;
    let [[mut c00, mut c01], [mut c10, mut c11], [mut c20, mut c21], [mut c30, mut c31], [mut c40, mut c41], [mut c50, mut c51]] =
        avx2_load_tile!(c, ldc, load);
    let mut rows = [a, a.add(ars), a.add(2 * ars), a.add(3 * ars), a.add(4 * ars), a.add(5 * ars)];
    let mut bk = b;
    for _ in 0..kc {
        let [a0, a1, a2, a3, a4, a5] = rows;
        avx2_step!(
            bk,
            [a0, a1, a2, a3, a4, a5],
            [(c00, c01), (c10, c11), (c20, c21), (c30, c31), (c40, c41), (c50, c51)]
        );
        for r in rows.iter_mut() {
            *r = r.add(acs);
        }
        bk = bk.add(NR);
    }
    avx2_store_tile!(c, ldc, [[c00, c01], [c10, c11], [c20, c21], [c30, c31], [c40, c41], [c50, c51]]);
}

/// One k step of an AVX-512 microkernel: B[k][0..16] from `$b0` and B[k][16..32] from `$b1`,
/// then for each row r, (lo, hi)[r] = fma(A[r][k] (read at `$a[r]`), B[k], (lo, hi)[r]).
#[cfg(target_arch = "x86_64")]
macro_rules! avx512_step {
    ($b0:expr, $b1:expr, [$($a:expr),*], [$(($lo:ident, $hi:ident)),*]) => {{
        let x0 = _mm512_loadu_ps($b0);
        let x1 = _mm512_loadu_ps($b1);
        $(
            let x = _mm512_set1_ps(*$a);
            $lo = _mm512_fmadd_ps(x, x0, $lo);
            $hi = _mm512_fmadd_ps(x, x1, $hi);
        )*
    }};
}

/// The 6 x 32 C tile of an AVX-512 microkernel as 12 accumulators: C's values when `load`,
/// else +0.
#[cfg(target_arch = "x86_64")]
macro_rules! avx512_load_tile {
    ($c:expr, $ldc:expr, $load:expr) => {{
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        if $load {
            for (r, ar) in acc.iter_mut().enumerate() {
                ar[0] = _mm512_loadu_ps($c.add(r * $ldc));
                ar[1] = _mm512_loadu_ps($c.add(r * $ldc + NR));
            }
        }
        acc
    }};
}

/// Store the 12 accumulators of an AVX-512 microkernel into the C tile.
#[cfg(target_arch = "x86_64")]
macro_rules! avx512_store_tile {
    ($c:expr, $ldc:expr, $out:expr) => {
        for (r, or) in $out.iter().enumerate() {
            _mm512_storeu_ps($c.add(r * $ldc), or[0]);
            _mm512_storeu_ps($c.add(r * $ldc + NR), or[1]);
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
/// The AVX-512 pair microkernel (`Micro2`) for a packed A tile (`[k][6]`, `ars` and `acs`
/// implied): 12 zmm accumulators, four k steps per loop iteration (the same fma steps in the
/// same order as one at a time).
#[allow(clippy::too_many_arguments)]
unsafe fn micro_avx512_packed(
    kc: usize,
    a: *const f32,
    _ars: usize,
    _acs: usize,
    b0: *const f32,
    b1: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    use std::arch::x86_64::*;
    let [[mut c00, mut c01], [mut c10, mut c11], [mut c20, mut c21], [mut c30, mut c31], [mut c40, mut c41], [mut c50, mut c51]] =
        avx512_load_tile!(c, ldc, load);
    // Declared before `step!` so that the macro's `b0` and `b1` are these moving pointers.
    let (mut ak, mut b0, mut b1) = (a, b0, b1);
    macro_rules! step {
        ($ak:expr, $off:expr) => {{
            let ak = $ak;
            avx512_step!(
                b0.add($off),
                b1.add($off),
                [ak, ak.add(1), ak.add(2), ak.add(3), ak.add(4), ak.add(5)],
                [(c00, c01), (c10, c11), (c20, c21), (c30, c31), (c40, c41), (c50, c51)]
            );
        }};
    }
    for _ in 0..kc / 4 {
        step!(ak, 0);
        step!(ak.add(MR), NR);
        step!(ak.add(2 * MR), 2 * NR);
        step!(ak.add(3 * MR), 3 * NR);
        ak = ak.add(4 * MR);
        b0 = b0.add(4 * NR);
        b1 = b1.add(4 * NR);
    }
    for _ in 0..kc % 4 {
        step!(ak, 0);
        ak = ak.add(MR);
        b0 = b0.add(NR);
        b1 = b1.add(NR);
    }
    avx512_store_tile!(c, ldc, [[c00, c01], [c10, c11], [c20, c21], [c30, c31], [c40, c41], [c50, c51]]);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
/// The AVX-512 12 x 32 microkernel (`Micro4`) for two packed A tiles: 24 zmm accumulators, so
/// each B load feeds 12 fmas (twice the 6 x 32 kernel's reuse); two k steps per loop
/// iteration, the same fma steps in the same order as one at a time.
#[allow(clippy::too_many_arguments)]
unsafe fn micro_avx512_packed12(
    kc: usize,
    a0: *const f32,
    a1: *const f32,
    b0: *const f32,
    b1: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    use std::arch::x86_64::*;
    let [[mut c00, mut c01], [mut c10, mut c11], [mut c20, mut c21], [mut c30, mut c31], [mut c40, mut c41], [mut c50, mut c51]] =
        avx512_load_tile!(c, ldc, load);
    let c6 = c.add(MR * ldc);
    let [[mut c60, mut c61], [mut c70, mut c71], [mut c80, mut c81], [mut c90, mut c91], [mut ca0, mut ca1], [mut cb0, mut cb1]] =
        avx512_load_tile!(c6, ldc, load);
    // Declared before `step!` so that the macro's pointers are these moving ones.
    let (mut p0, mut p1, mut q0, mut q1) = (a0, a1, b0, b1);
    macro_rules! step {
        ($off:expr) => {{
            let (x, y) = (p0.add($off * MR), p1.add($off * MR));
            avx512_step!(
                q0.add($off * NR),
                q1.add($off * NR),
                [
                    x,
                    x.add(1),
                    x.add(2),
                    x.add(3),
                    x.add(4),
                    x.add(5),
                    y,
                    y.add(1),
                    y.add(2),
                    y.add(3),
                    y.add(4),
                    y.add(5)
                ],
                [
                    (c00, c01),
                    (c10, c11),
                    (c20, c21),
                    (c30, c31),
                    (c40, c41),
                    (c50, c51),
                    (c60, c61),
                    (c70, c71),
                    (c80, c81),
                    (c90, c91),
                    (ca0, ca1),
                    (cb0, cb1)
                ]
            );
        }};
    }
    for _ in 0..kc / 2 {
        step!(0);
        step!(1);
        p0 = p0.add(2 * MR);
        p1 = p1.add(2 * MR);
        q0 = q0.add(2 * NR);
        q1 = q1.add(2 * NR);
    }
    if kc % 2 == 1 {
        step!(0);
    }
    avx512_store_tile!(c, ldc, [[c00, c01], [c10, c11], [c20, c21], [c30, c31], [c40, c41], [c50, c51]]);
    avx512_store_tile!(c6, ldc, [[c60, c61], [c70, c71], [c80, c81], [c90, c91], [ca0, ca1], [cb0, cb1]]);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
/// The AVX-512 pair microkernel (`Micro2`) for A read in place (any `ars`, `acs`): the same fma
/// steps in the same order as `micro_avx512_packed`.
#[allow(clippy::too_many_arguments)]
unsafe fn micro_avx512_strided(
    kc: usize,
    a: *const f32,
    ars: usize,
    acs: usize,
    b0: *const f32,
    b1: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    use std::arch::x86_64::*;
    let [[mut c00, mut c01], [mut c10, mut c11], [mut c20, mut c21], [mut c30, mut c31], [mut c40, mut c41], [mut c50, mut c51]] =
        avx512_load_tile!(c, ldc, load);
    let mut rows = [a, a.add(ars), a.add(2 * ars), a.add(3 * ars), a.add(4 * ars), a.add(5 * ars)];
    let (mut b0, mut b1) = (b0, b1);
    for _ in 0..kc {
        let [a0, a1, a2, a3, a4, a5] = rows;
        avx512_step!(
            b0,
            b1,
            [a0, a1, a2, a3, a4, a5],
            [(c00, c01), (c10, c11), (c20, c21), (c30, c31), (c40, c41), (c50, c51)]
        );
        for r in rows.iter_mut() {
            *r = r.add(acs);
        }
        b0 = b0.add(NR);
        b1 = b1.add(NR);
    }
    avx512_store_tile!(c, ldc, [[c00, c01], [c10, c11], [c20, c21], [c30, c31], [c40, c41], [c50, c51]]);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
/// The AVX-512 12 x 32 microkernel (`Micro4s`) for 12 rows of A read in place (any `ars`,
/// `acs`): 24 zmm accumulators, the same fma steps in the same order as two calls of
/// `micro_avx512_strided` (the attention products, whose A is a head's rows).
#[allow(clippy::too_many_arguments)]
unsafe fn micro_avx512_strided12(
    kc: usize,
    a: *const f32,
    ars: usize,
    acs: usize,
    b0: *const f32,
    b1: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    use std::arch::x86_64::*;
    let [[mut c00, mut c01], [mut c10, mut c11], [mut c20, mut c21], [mut c30, mut c31], [mut c40, mut c41], [mut c50, mut c51]] =
        avx512_load_tile!(c, ldc, load);
    let c6 = c.add(MR * ldc);
    let [[mut c60, mut c61], [mut c70, mut c71], [mut c80, mut c81], [mut c90, mut c91], [mut ca0, mut ca1], [mut cb0, mut cb1]] =
        avx512_load_tile!(c6, ldc, load);
    // Four moving bases (rows 0, 3, 6, 9); the other rows are a base plus ars or 2 ars, which
    // x86 addressing folds into the loads, so the loop needs few registers for A.
    let mut bases = [a, a.add(3 * ars), a.add(6 * ars), a.add(9 * ars)];
    let (mut b0, mut b1) = (b0, b1);
    for _ in 0..kc {
        let [p0, p3, p6, p9] = bases;
        let (x0, x1, x2, x3, x4, x5) = (p0, p0.add(ars), p0.add(2 * ars), p3, p3.add(ars), p3.add(2 * ars));
        let (y0, y1, y2, y3, y4, y5) = (p6, p6.add(ars), p6.add(2 * ars), p9, p9.add(ars), p9.add(2 * ars));
        avx512_step!(
            b0,
            b1,
            [x0, x1, x2, x3, x4, x5, y0, y1, y2, y3, y4, y5],
            [
                (c00, c01),
                (c10, c11),
                (c20, c21),
                (c30, c31),
                (c40, c41),
                (c50, c51),
                (c60, c61),
                (c70, c71),
                (c80, c81),
                (c90, c91),
                (ca0, ca1),
                (cb0, cb1)
            ]
        );
        for p in bases.iter_mut() {
            *p = p.add(acs);
        }
        b0 = b0.add(NR);
        b1 = b1.add(NR);
    }
    avx512_store_tile!(c, ldc, [[c00, c01], [c10, c11], [c20, c21], [c30, c31], [c40, c41], [c50, c51]]);
    avx512_store_tile!(c6, ldc, [[c60, c61], [c70, c71], [c80, c81], [c90, c91], [ca0, ca1], [cb0, cb1]]);
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_neon(
    kc: usize,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    bs: usize,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
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
        let bk = b.add(kk * bs);
        let bv = [vld1q_f32(bk), vld1q_f32(bk.add(4)), vld1q_f32(bk.add(8)), vld1q_f32(bk.add(12))];
        for (r, ar) in acc.iter_mut().enumerate() {
            let x = vdupq_n_f32(*a.add(r * ars + kk * acs));
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

    /// K1 (review 2026-12-02): strides whose products wrap around usize passed the bounds
    /// checks and the microkernels then read far outside A (a segfault from safe code). Each
    /// case must now be refused with a panic before any raw read.
    #[test]
    fn wrapping_strides_are_refused_not_read() {
        let a_data = [1f32; 8];
        let b_data = [1f32; 16];
        let wrap = (1u128 << 64).div_ceil(5); // (m - 1) * rs wraps to 4 for m = 6
        let rs = wrap as usize;
        for path in [Path::Scalar, super::super::path()] {
            let r = std::panic::catch_unwind(|| {
                let mut c = vec![0f32; 6 * 16];
                let a = MatRef { data: &a_data, rs, cs: 1 };
                matmul_with(path, a, MatRef::rows(&b_data, 16), &mut c, 6, 16, 1, false);
            });
            let msg = r.expect_err("wrapped A strides were accepted");
            let msg =
                msg.downcast_ref::<&str>().map(|s| s.to_string()).or(msg.downcast_ref::<String>().cloned());
            assert!(msg.unwrap_or_default().contains("A is too short"));
            let r = std::panic::catch_unwind(|| {
                let mut c = vec![0f32; 16];
                let b = MatRef { data: &b_data, rs: 1, cs: usize::MAX / 8 };
                matmul_with(path, MatRef::rows(&a_data, 1), b, &mut c, 1, 16, 1, false);
            });
            assert!(r.is_err(), "wrapped B strides were accepted");
        }
        // m * n that wraps to the length of C.
        let r = std::panic::catch_unwind(|| {
            let mut c = vec![0f32; 0];
            let big = 1usize << 33;
            matmul_with(
                Path::Scalar,
                MatRef::rows(&a_data, 1),
                MatRef::rows(&b_data, 1),
                &mut c,
                big,
                big,
                1,
                false,
            );
        });
        assert!(r.is_err(), "an m x n that wraps to 0 was accepted");
        // Packed sub-views whose end wraps.
        let mut buf = Vec::new();
        let p = PackedB::new(MatRef::rows(&b_data, 16), 16, 1, &mut buf);
        assert!(std::panic::catch_unwind(|| p.sub_rows(1, usize::MAX)).is_err());
    }

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
        // Few rows, many panels: parallel calls split columns into groups (n % 16 != 0 too).
        (20, 200, 300),
        (61, 135, 520),
        (9, 256, 17),
        // More rows than one row block of MC_TILES tiles holds, serial and parallel.
        (200, 70, 33),
        (397, 129, 260),
        // Few panels: full tiles of A read in place, a partial last tile packed.
        (24, 32, 100),
        (31, 64, 300),
        (40, 80, 7),
    ];

    /// The contract, written as plainly as possible: one exactly rounded fma chain per element,
    /// k increasing, from +0.
    fn reference(a: MatRef, b: MatRef, m: usize, n: usize, k: usize) -> Vec<f32> {
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
        want
    }

    fn same_bits(x: &[f32], y: &[f32]) -> bool {
        x.len() == y.len() && x.iter().zip(y).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    #[test]
    fn every_path_and_thread_split_gives_the_same_bits_as_one_fma_chain() {
        for &(m, n, k) in SHAPES {
            for trans in 0..4 {
                let ad = data(m * k, (m * 31 + k) as u32);
                let bd = data(k * n, (n * 17 + k) as u32);
                let a = if trans & 1 == 0 { MatRef::rows(&ad, k) } else { MatRef::t(&ad, m) };
                let b = if trans & 2 == 0 { MatRef::rows(&bd, n) } else { MatRef::t(&bd, k) };
                let want = reference(a, b, m, n, k);
                for path in Path::all_available() {
                    // Serial, then parallel on pools of several sizes (the split depends on it).
                    for threads in [0, 1, 2, 3, 5] {
                        let mut c = vec![f32::NAN; m * n];
                        if threads == 0 {
                            matmul_with(path, a, b, &mut c, m, n, k, false);
                        } else {
                            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                            pool.install(|| matmul_with(path, a, b, &mut c, m, n, k, true));
                        }
                        let same = same_bits(&c, &want);
                        assert!(same, "{} ({m}, {n}, {k}) trans {trans} threads {threads}", path.name());
                    }
                }
            }
        }
    }

    #[test]
    fn views_of_a_packed_b_give_the_bits_of_the_same_submatrix_unpacked() {
        // As attention uses them: one packing, then row ranges (a prefix or a suffix of k) and
        // column prefixes (not multiples of 16) for products with several A.
        let (kt, nt) = (77, 45);
        let bd = data(kt * nt, 5);
        for trans in [false, true] {
            let b = if trans { MatRef::t(&bd, kt) } else { MatRef::rows(&bd, nt) };
            let mut buf = Vec::new();
            let packed =
                if trans { PackedB::new(b, nt, kt, &mut buf) } else { PackedB::new_par(b, nt, kt, &mut buf) };
            for &(k0, k, n) in &[(0, 77, 45), (0, 30, 45), (20, 57, 17), (76, 1, 45), (5, 40, 1), (0, 0, 9)] {
                for (m, a_trans) in [(1, false), (13, false), (24, true), (30, true)] {
                    let ad = data(m * k.max(1), (m + k) as u32);
                    let a = if a_trans { MatRef::t(&ad, m) } else { MatRef::rows(&ad, k.max(1)) };
                    let sub = MatRef { data: &b.data[k0 * b.rs..], ..b };
                    let want = reference(a, sub, m, n, k);
                    for threads in [1, 3] {
                        let mut c = vec![f32::NAN; m * n];
                        let view = packed.sub_rows(k0, k).cols(n);
                        if threads == 1 {
                            matmul_packed_serial(a, view, &mut c, m);
                        } else {
                            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                            pool.install(|| matmul_packed(a, view, &mut c, m));
                        }
                        let what =
                            format!("rows {k0}+{k}, cols {n}, m {m}, trans {trans} {a_trans}, {threads}t");
                        assert!(same_bits(&c, &want), "{what}");
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
