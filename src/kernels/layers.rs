//! The arithmetic of every op of a Llama training step, forward and backward, on plain slices.
//! Two callers share these functions, so they cannot disagree on a bit: the candle custom ops
//! of `ops` (inference, evaluation, the autograd reference in tests) and the explicit training
//! step of `crate::engine`. Every output slice is fully overwritten; nothing needs zeroing.
//!
//! Shapes: N rows of width C, B batch, T time, H heads, Dh = C / H, F the MLP width, V the
//! vocabulary. Every loop over rows may run on any thread: a row's result never depends on the
//! split. Row reductions use `math::sum_map` (fixed 8-lane order); column reductions (the gain
//! gradient of RMSNorm) add rows sequentially in increasing row order.

use super::math::{self, exp, ln, sigmoid, sum_map, sum_map_f64};
use super::matmul::{matmul, matmul_packed, matmul_packed_serial, MatRef, PackedB};
use super::wide;
use rayon::prelude::*;

/// Row chunk for parallel loops over rows of width `c`: only the schedule depends on it.
fn rows_per_task(c: usize) -> usize {
    (16384 / c.max(1)).max(1)
}

// ---------------------------------------------------------------------------------------------
// linear: y = x w^T, x (M, K), w (N, K)

/// y (M, N) = x (M, K) w^T.
pub fn linear_fwd(x: &[f32], w: &[f32], y: &mut [f32], m: usize, n: usize, k: usize) {
    matmul(MatRef::rows(x, k), MatRef::t(w, k), y, m, n, k);
}

/// dX (M, K) = dY (M, N) W (N, K): the chain runs over n.
pub fn linear_dx(dy: &[f32], w: &[f32], dx: &mut [f32], m: usize, n: usize, k: usize) {
    matmul(MatRef::rows(dy, n), MatRef::rows(w, k), dx, m, k, n);
}

/// dW (N, K) = dY^T (N, M) X (M, K): one chain over all M = B*T rows.
pub fn linear_dw(dy: &[f32], x: &[f32], dw: &mut [f32], m: usize, n: usize, k: usize) {
    matmul(MatRef::t(dy, n), MatRef::rows(x, k), dw, n, k, m);
}

/// X (M, K) packed once as the B operand of `linear_dw_packed`, for the weight gradients of
/// several layers that read the same input (q, k and v; gate and up).
pub fn pack_dw_input<'a>(x: &[f32], m: usize, k: usize, buf: &'a mut Vec<f32>) -> PackedB<'a> {
    PackedB::new_par(MatRef::rows(x, k), k, m, buf)
}

/// `linear_dw` with X packed by `pack_dw_input`: the same bits.
pub fn linear_dw_packed(dy: &[f32], x: PackedB, dw: &mut [f32], m: usize, n: usize) {
    assert_eq!(x.rows(), m, "linear_dw_packed: X is packed with {} rows, want {m}", x.rows());
    matmul_packed(MatRef::t(dy, n), x, dw, n);
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = x * inv * w, inv = 1 / sqrt(sum(x^2) / C + eps)

pub fn rms_inv(row: &[f32], eps: f32) -> f32 {
    let ms = sum_map(row.len(), |i| row[i] * row[i]) / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// y = x * inv * w per row of width C = w.len(); `inv` (N) receives each row's inv for the
/// backward (the same value the backward would recompute).
pub fn rms_norm_fwd(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], inv: &mut [f32]) {
    let c = w.len();
    let rows = rows_per_task(c);
    y.par_chunks_mut(rows * c)
        .zip(x.par_chunks(rows * c))
        .zip(inv.par_chunks_mut(rows))
        .for_each(|((yb, xb), ib)| rms_rows_fwd(xb, w, eps, yb, ib));
}

wide! {
    fn rms_rows_fwd(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], inv: &mut [f32]) {
        let c = w.len();
        for ((yr, xr), iv) in y.chunks_mut(c).zip(x.chunks(c)).zip(inv.iter_mut()) {
            let r = rms_inv(xr, eps);
            *iv = r;
            for ((y, &x), &wi) in yr.iter_mut().zip(xr).zip(w) {
                *y = (x * r) * wi;
            }
        }
    }
}

wide! {
    fn rms_rows_bwd(x: &[f32], w: &[f32], inv: &[f32], dy: &[f32], dx: &mut [f32]) {
        let c = w.len();
        for (((dr, xr), gr), &iv) in dx.chunks_mut(c).zip(x.chunks(c)).zip(dy.chunks(c)).zip(inv) {
            let mu = sum_map(c, |i| (gr[i] * w[i]) * (xr[i] * iv)) / c as f32;
            for (((d, &x), &g), &wi) in dr.iter_mut().zip(xr).zip(gr).zip(w) {
                *d = ((g * wi) - (x * iv) * mu) * iv;
            }
        }
    }
}

wide! {
    /// dw[c0..c0 + dw.len()] of RMSNorm: each column a sum over the rows in order.
    fn rms_dw_cols(x: &[f32], dy: &[f32], inv: &[f32], c: usize, c0: usize, dw: &mut [f32]) {
        let w = dw.len();
        dw.fill(0.0);
        for ((xr, gr), &iv) in x.chunks(c).zip(dy.chunks(c)).zip(inv) {
            for ((d, &g), &x) in dw.iter_mut().zip(&gr[c0..c0 + w]).zip(&xr[c0..c0 + w]) {
                *d += g * (x * iv);
            }
        }
    }
}

/// The per-row inv of `rms_norm_fwd`, for callers that did not keep it.
pub fn rms_invs(x: &[f32], c: usize, eps: f32) -> Vec<f32> {
    x.par_chunks(c).map(|r| rms_inv(r, eps)).collect()
}

/// dx = (dxhat - xhat * mean(dxhat * xhat)) * inv with dxhat = dy * w, xhat = x * inv;
/// dw[i] = sum over rows, in increasing row order, of dy * xhat.
pub fn rms_norm_bwd(x: &[f32], w: &[f32], inv: &[f32], dy: &[f32], dx: &mut [f32], dw: &mut [f32]) {
    let c = w.len();
    let rows = rows_per_task(c);
    dx.par_chunks_mut(rows * c)
        .zip(x.par_chunks(rows * c))
        .zip(dy.par_chunks(rows * c))
        .zip(inv.par_chunks(rows))
        .for_each(|(((db, xb), gb), ib)| rms_rows_bwd(xb, w, ib, gb, db));
    // Columns are independent sums, so they may be split over threads; each runs over the rows
    // in order.
    const COLS: usize = 32;
    dw.par_chunks_mut(COLS).enumerate().for_each(|(blk, dwb)| rms_dw_cols(x, dy, inv, c, blk * COLS, dwb));
}

// ---------------------------------------------------------------------------------------------
// RoPE, HF's half-split layout: y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin per head.

/// cos and sin of pos * theta^(-2j/Dh) for pos < T, j < Dh/2, computed in f64 with libm (the
/// same bits everywhere) and rounded once to f32. HF's tables repeat these for j + Dh/2.
pub fn rope_tables(t: usize, hd: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = hd / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for pos in 0..t {
        for j in 0..half {
            let inv = 1.0 / libm::pow(theta, (2 * j) as f64 / hd as f64);
            let a = pos as f64 * inv;
            cos.push(libm::cos(a) as f32);
            sin.push(libm::sin(a) as f32);
        }
    }
    (cos, sin)
}

/// Rotate x (B, T, C) in place by the angle's (cos, sign * sin): sign -1 is the inverse, which
/// is also the transpose (the backward).
pub fn rope_apply(x: &mut [f32], t: usize, c: usize, n_head: usize, cos: &[f32], sin: &[f32], sign: f32) {
    let hd = c / n_head;
    let rows = rows_per_task(c);
    x.par_chunks_mut(rows * c)
        .enumerate()
        .for_each(|(blk, xb)| rope_rows(xb, blk * rows, t, c, hd, cos, sin, sign));
}

wide! {
    /// Rows row0.. of `rope_apply`.
    fn rope_rows(x: &mut [f32], row0: usize, t: usize, c: usize, hd: usize, cos: &[f32], sin: &[f32], sign: f32) {
        let half = hd / 2;
        for (r, xr) in x.chunks_mut(c).enumerate() {
            let pos = (row0 + r) % t;
            let (cs, sn) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
            for head in xr.chunks_exact_mut(hd) {
                let (x1s, x2s) = head.split_at_mut(half);
                for (((x1, x2), &cj), &sj) in x1s.iter_mut().zip(x2s.iter_mut()).zip(cs).zip(sn) {
                    let (a, b) = (*x1, *x2);
                    let s = sign * sj;
                    *x1 = a * cj - b * s;
                    *x2 = b * cj + a * s;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Causal self-attention: y = softmax(mask(q k^T * scale)) v per (batch, head), heads side by
// side in C (head h is columns h*Dh..(h+1)*Dh).
//
// The contract's chains run over all T positions, including the masked ones where P = 0 (and
// dS = 0). Those terms are skipped here without changing a bit: for finite v, fma(0, v, acc)
// is acc (the product is +-0, and acc is never -0 because a chain from +0 cannot produce -0),
// and zero terms before the first non-zero one leave the accumulator at +0. Rows are done in
// slabs of SLAB; a slab's chains stop at (or start from) the slab's edge, which covers every
// non-zero term of its rows. A non-finite v makes the loss non-finite, and such a step is
// refused before any weight changes.

/// Rows per slab of the triangular products.
const SLAB: usize = 24;

/// The geometry of attention over (B, T, C) with `n_head` heads.
#[derive(Debug, Clone, Copy)]
pub struct Attn {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub n_head: usize,
}

impl Attn {
    fn hd(&self) -> usize {
        self.c / self.n_head
    }
    fn scale(&self) -> f32 {
        (1.0 / (self.hd() as f64).sqrt()) as f32
    }
    /// Floats of the stored probabilities: (B, H, T, T).
    pub fn probs_len(&self) -> usize {
        self.b * self.n_head * self.t * self.t
    }
    /// Slabs of rows: (r0, r1).
    fn slabs(&self) -> impl Iterator<Item = (usize, usize)> {
        let t = self.t;
        (0..t.div_ceil(SLAB)).map(move |s| (s * SLAB, ((s + 1) * SLAB).min(t)))
    }
}

/// (T, Dh) rows of head `h` of one batch element's (T, C) block, from row `r0`.
fn head_rows(d: &[f32], g: Attn, h: usize, r0: usize) -> MatRef<'_> {
    MatRef { data: &d[r0 * g.c + h * g.hd()..], rs: g.c, cs: 1 }
}

/// The transpose (Dh, T) of head `h` of a (T, C) block, as a view.
fn head_cols(d: &[f32], g: Attn, h: usize) -> MatRef<'_> {
    MatRef { data: &d[h * g.hd()..], rs: 1, cs: g.c }
}

/// Copy a (rows, Dh) block into head `h` of a (T, C) block from row `r0`.
fn put_head(dst: &mut [f32], src: &[f32], g: Attn, h: usize, r0: usize) {
    let hd = g.hd();
    for (i, row) in src.chunks_exact(hd).enumerate() {
        let o = (r0 + i) * g.c + h * hd;
        dst[o..o + hd].copy_from_slice(row);
    }
}

wide! {
    /// row = softmax(src * scale), src and row of the same length.
    fn softmax(src: &[f32], row: &mut [f32], scale: f32) {
        for (x, &s) in row.iter_mut().zip(src) {
            *x = s * scale;
        }
        let m = math::max(row);
        for x in row.iter_mut() {
            *x = exp(*x - m);
        }
        let s = math::sum(row);
        for x in row.iter_mut() {
            *x /= s;
        }
    }
}

wide! {
    /// One row of dS: dr[j] = (p[j] * (dp[j] - sum_j p dp)) * scale over p's length.
    fn ds_row(p: &[f32], dp: &[f32], dr: &mut [f32], scale: f32) {
        let n = p.len();
        let rsum = sum_map(n, |j| p[j] * dp[j]);
        for ((d, &pj), &dpj) in dr.iter_mut().zip(p).zip(dp) {
            *d = (pj * (dpj - rsum)) * scale;
        }
    }
}

/// y (B, T, C) and the probabilities p (B, H, T, T) (zero above the diagonal) from q, k, v.
pub fn attention_fwd(q: &[f32], k: &[f32], v: &[f32], y: &mut [f32], p: &mut [f32], g: Attn) {
    let (t, c, hd) = (g.t, g.c, g.hd());
    let (tc, htt) = (t * c, g.n_head * t * t);
    y.par_chunks_mut(tc).zip(p.par_chunks_mut(htt)).enumerate().for_each(|(bi, (yb, pb))| {
        let (qb, kb, vb) =
            (&q[bi * tc..(bi + 1) * tc], &k[bi * tc..(bi + 1) * tc], &v[bi * tc..(bi + 1) * tc]);
        let mut s = vec![0f32; SLAB * t];
        let mut o = vec![0f32; SLAB * hd];
        let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
        for (h, ph) in pb.chunks_mut(t * t).enumerate() {
            // K^T (Dh, T) and V (T, Dh) of this head, packed once for all of its slabs.
            let kt = PackedB::new(head_cols(kb, g, h), t, hd, &mut kbuf);
            let vp = PackedB::new(head_rows(vb, g, h, 0), hd, t, &mut vbuf);
            for (r0, r1) in g.slabs() {
                let (rows, keff) = (r1 - r0, r1);
                // S (rows, keff) = Q[r0..r1] K[..keff]^T: every j <= i of these rows.
                let s = &mut s[..rows * keff];
                matmul_packed_serial(head_rows(qb, g, h, r0), kt.cols(keff), s, rows);
                for (ii, srow) in s.chunks(keff).enumerate() {
                    let i = r0 + ii;
                    let prow = &mut ph[i * t..(i + 1) * t];
                    softmax(&srow[..=i], &mut prow[..=i], g.scale());
                    prow[i + 1..].fill(0.0);
                }
                // Y[r0..r1] = P[r0..r1, ..keff] V[..keff]
                let o = &mut o[..rows * hd];
                let pa = MatRef { data: &ph[r0 * t..], rs: t, cs: 1 };
                matmul_packed_serial(pa, vp.sub_rows(0, keff), o, rows);
                put_head(yb, o, g, h, r0);
            }
        }
    });
}

/// dq, dk, dv (B, T, C) from q, k, v, the forward's p and dy.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: &[f32],
    dy: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    g: Attn,
) {
    let (t, c, hd) = (g.t, g.c, g.hd());
    let (tc, htt) = (t * c, g.n_head * t * t);
    dq.par_chunks_mut(tc).zip(dk.par_chunks_mut(tc)).zip(dv.par_chunks_mut(tc)).enumerate().for_each(
        |(bi, ((dqb, dkb), dvb))| {
            let r = bi * tc..(bi + 1) * tc;
            let (qb, kb, vb, dyb) = (&q[r.clone()], &k[r.clone()], &v[r.clone()], &dy[r]);
            let pb = &p[bi * htt..(bi + 1) * htt];
            let mut dp = vec![0f32; SLAB * t];
            let mut ds = vec![0f32; t * t];
            let mut o = vec![0f32; SLAB * hd];
            let mut bufs: [Vec<f32>; 4] = Default::default();
            for (h, ph) in pb.chunks(t * t).enumerate() {
                // V^T, K, dY and Q of this head, packed once for all of its slabs.
                let [vbuf, kbuf, dybuf, qbuf] = &mut bufs;
                let vt = PackedB::new(head_cols(vb, g, h), t, hd, vbuf);
                let kp = PackedB::new(head_rows(kb, g, h, 0), hd, t, kbuf);
                let dyp = PackedB::new(head_rows(dyb, g, h, 0), hd, t, dybuf);
                let qp = PackedB::new(head_rows(qb, g, h, 0), hd, t, qbuf);
                for (r0, r1) in g.slabs() {
                    let (rows, keff) = (r1 - r0, r1);
                    // dP (rows, keff) = dY[r0..r1] V[..keff]^T
                    let dp = &mut dp[..rows * keff];
                    matmul_packed_serial(head_rows(dyb, g, h, r0), vt.cols(keff), dp, rows);
                    // dS = P * (dP - sum_j P dP) * scale on j <= i, 0 above.
                    for (ii, dpr) in dp.chunks(keff).enumerate() {
                        let i = r0 + ii;
                        let pr = &ph[i * t..i * t + i + 1];
                        let dr = &mut ds[i * t..i * t + keff];
                        ds_row(pr, &dpr[..=i], &mut dr[..=i], g.scale());
                        dr[i + 1..].fill(0.0);
                    }
                    // dQ[r0..r1] = dS[r0..r1, ..keff] K[..keff]
                    let o = &mut o[..rows * hd];
                    let dsa = MatRef { data: &ds[r0 * t..], rs: t, cs: 1 };
                    matmul_packed_serial(dsa, kp.sub_rows(0, keff), o, rows);
                    put_head(dqb, o, g, h, r0);
                }
                // Column slabs j0..j1 need the rows i >= j0 of P and dS, all written above.
                for (j0, j1) in g.slabs() {
                    let rows = j1 - j0;
                    let o = &mut o[..rows * hd];
                    // dV[j0..j1] = P[j0.., j0..j1]^T dY[j0..]
                    let pt = MatRef { data: &ph[j0 * t + j0..], rs: 1, cs: t };
                    matmul_packed_serial(pt, dyp.sub_rows(j0, t - j0), o, rows);
                    put_head(dvb, o, g, h, j0);
                    // dK[j0..j1] = dS[j0.., j0..j1]^T Q[j0..]
                    let dst = MatRef { data: &ds[j0 * t + j0..], rs: 1, cs: t };
                    matmul_packed_serial(dst, qp.sub_rows(j0, t - j0), o, rows);
                    put_head(dkb, o, g, h, j0);
                }
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: y = silu(g) * u, silu(g) = g * sigmoid(g)

const ELEMS: usize = 16384;

pub fn swiglu_fwd(g: &[f32], u: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(ELEMS)
        .zip(g.par_chunks(ELEMS))
        .zip(u.par_chunks(ELEMS))
        .for_each(|((yb, gb), ub)| swiglu_chunk(gb, ub, yb));
}

wide! {
    fn swiglu_chunk(g: &[f32], u: &[f32], y: &mut [f32]) {
        for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
            *y = (g * sigmoid(g)) * u;
        }
    }
}

wide! {
    fn swiglu_bwd_chunk(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        for ((((dg, du), &x), &u), &d) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(dy) {
            let s = sigmoid(x);
            // silu'(x) = s (1 + x (1 - s))
            *dg = (d * u) * (s * (1.0 + x * (1.0 - s)));
            *du = d * (x * s);
        }
    }
}

pub fn swiglu_bwd(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
    dg.par_chunks_mut(ELEMS)
        .zip(du.par_chunks_mut(ELEMS))
        .zip(g.par_chunks(ELEMS))
        .zip(u.par_chunks(ELEMS))
        .zip(dy.par_chunks(ELEMS))
        .for_each(|((((dgb, dub), gb), ub), dyb)| swiglu_bwd_chunk(gb, ub, dyb, dgb, dub));
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy: per row ln(sum_j e^(x_j - m)) - (x_t - m), m = max_j x_j

/// One row's loss, and its exps (into `e`) and their sum.
#[inline(always)]
fn ce_row(row: &[f32], target: usize, e: &mut [f32]) -> (f32, f32) {
    let m = math::max(row);
    for (ej, &x) in e.iter_mut().zip(row) {
        *ej = exp(x - m);
    }
    let s = math::sum(e);
    (ln(s) - (row[target] - m), s)
}

wide! {
    fn ce_row_loss(row: &[f32], target: usize, e: &mut [f32]) -> f32 {
        ce_row(row, target, e).0
    }
}

wide! {
    /// One row's loss, and its gradient (p - [j = t]) * k into `dr`.
    fn ce_row_grad(row: &[f32], t: usize, k: f32, dr: &mut [f32]) -> f32 {
        let (l, s) = ce_row(row, t, dr);
        let et = dr[t];
        for d in dr.iter_mut() {
            *d = (*d / s) * k;
        }
        // The target's term is (p - 1) * k, from the same p = e / s.
        dr[t] = ((et / s) - 1.0) * k;
        l
    }
}

/// Per-row losses of logits x (N, V) against targets (N), each < V.
pub fn ce_losses(x: &[f32], tg: &[u32], v: usize, out: &mut [f32]) {
    out.par_iter_mut().enumerate().for_each_init(
        || vec![0f32; v],
        |e, (i, o)| *o = ce_row_loss(&x[i * v..(i + 1) * v], tg[i] as usize, e),
    );
}

/// The mean loss: the 8-lane sum in f64, divided by N, rounded once to f32.
pub fn ce_mean(losses: &[f32]) -> f32 {
    let n = losses.len();
    (sum_map_f64(n, |i| losses[i] as f64) / n.max(1) as f64) as f32
}

/// d loss / d x_ij = (p_ij - [j = t_i]) * k, with k = (upstream gradient) / N; also each
/// row's loss into `losses` (the same bits as `ce_losses`).
pub fn ce_fwd_bwd(x: &[f32], tg: &[u32], v: usize, k: f32, dx: &mut [f32], losses: &mut [f32]) {
    dx.par_chunks_mut(v).zip(losses.par_iter_mut()).enumerate().for_each(|(i, (dr, loss))| {
        *loss = ce_row_grad(&x[i * v..(i + 1) * v], tg[i] as usize, k, dr);
    });
}
