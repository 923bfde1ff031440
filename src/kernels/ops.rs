//! The fused ops of a Llama training step as candle custom ops, each with a hand-written
//! backward that itself runs only our kernels. candle keeps the graph, autograd and files; the
//! arithmetic is ours. Shapes: N rows of width C, B batch, T time, H heads, Dh = C / H.
//!
//! Every loop over rows may run on any thread: a row's result never depends on the split.
//! Row reductions use `math::sum_map` (fixed 8-lane order); column reductions (the gain
//! gradient of RMSNorm) add rows sequentially in increasing row order.

use super::math::{self, exp, ln, sigmoid, sum_map, sum_map_f64};
use super::matmul::{matmul, matmul_serial, MatRef};
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage,
    StorageRef, Tensor,
};
use rayon::prelude::*;
use std::sync::Arc;

/// The contiguous f32 data of a custom op's input.
fn f32s<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { bail!("{op}: expected an f32 tensor") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{op}: input must be contiguous"),
    }
}

/// The data of a contiguous f32 CPU tensor, borrowed (no copy) while the view lives.
pub struct View<'a> {
    guard: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl View<'_> {
    pub fn data(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.end],
            _ => &[],
        }
    }
}

/// A view of `t`, which must be a contiguous f32 CPU tensor (call `.contiguous()` first).
pub fn view(t: &Tensor) -> Result<View<'_>> {
    let (guard, l) = t.storage_and_layout();
    if !matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))) {
        bail!("kernels: want an f32 CPU tensor, got {:?}", t.dtype());
    }
    let Some((start, end)) = l.contiguous_offsets() else { bail!("kernels: tensor is not contiguous") };
    Ok(View { guard, start, end })
}

/// A tensor's f32 values in row-major order (a copy).
pub fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

fn tensor(v: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Row chunk for parallel loops over rows of width `c`: only the schedule depends on it.
fn rows_per_task(c: usize) -> usize {
    (16384 / c.max(1)).max(1)
}

// ---------------------------------------------------------------------------------------------
// linear: y = x w^T

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "tinylm-linear"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32s(self.name(), s1, l1)?, f32s(self.name(), s2, l2)?);
        let dims = l1.dims();
        let k = *dims.last().unwrap_or(&0);
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            bail!("linear: x {:?} and w {:?} disagree on the inner size", dims, l2.dims());
        }
        let m = x.len() / k.max(1);
        let mut y = vec![0f32; m * n];
        matmul(MatRef::rows(x, k), MatRef::t(w, k), &mut y, m, n, k);
        let mut out = dims.to_vec();
        *out.last_mut().unwrap_or(&mut 0) = n;
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, k) = w.dims2()?;
        let (x, w, dy) = (x.contiguous()?, w.contiguous()?, dy.contiguous()?);
        let (xv, wv, dyv) = (view(&x)?, view(&w)?, view(&dy)?);
        let (xs, ws, dys) = (xv.data(), wv.data(), dyv.data());
        let m = xs.len() / k;
        // dX (M, K) = dY (M, N) W (N, K): the chain runs over n.
        let mut dx = vec![0f32; m * k];
        matmul(MatRef::rows(dys, n), MatRef::rows(ws, k), &mut dx, m, k, n);
        // dW (N, K) = dY^T (N, M) X (M, K): the chain runs over all M = B*T rows, one chain.
        let mut dw = vec![0f32; n * k];
        matmul(MatRef::t(dys, n), MatRef::rows(xs, k), &mut dw, n, k, m);
        Ok((Some(tensor(dx, x.dims())?), Some(tensor(dw, w.dims())?)))
    }
}

/// x (..., K) w (N, K)^T -> (..., N).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = x * inv * w, inv = 1 / sqrt(sum(x^2) / C + eps)

struct RmsNorm {
    eps: f32,
}

fn rms_inv(row: &[f32], eps: f32) -> f32 {
    let ms = sum_map(row.len(), |i| row[i] * row[i]) / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "tinylm-rms-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32s(self.name(), s1, l1)?, f32s(self.name(), s2, l2)?);
        let c = w.len();
        if l1.dims().last() != Some(&c) {
            bail!("rms_norm: x {:?} and gain {:?} disagree", l1.dims(), l2.dims());
        }
        let mut y = vec![0f32; x.len()];
        let rows = rows_per_task(c);
        y.par_chunks_mut(rows * c).zip(x.par_chunks(rows * c)).for_each(|(yb, xb)| {
            for (yr, xr) in yb.chunks_mut(c).zip(xb.chunks(c)) {
                let inv = rms_inv(xr, self.eps);
                for i in 0..c {
                    yr[i] = (xr[i] * inv) * w[i];
                }
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, dy) = (x.contiguous()?, w.contiguous()?, dy.contiguous()?);
        let (xv, wv, dyv) = (view(&x)?, view(&w)?, view(&dy)?);
        let (xs, ws, dys) = (xv.data(), wv.data(), dyv.data());
        let c = ws.len();
        let eps = self.eps;
        // dx = (dxhat - xhat * mean(dxhat * xhat)) * inv, with dxhat = dy * w, xhat = x * inv.
        let mut dx = vec![0f32; xs.len()];
        let rows = rows_per_task(c);
        dx.par_chunks_mut(rows * c).zip(xs.par_chunks(rows * c)).zip(dys.par_chunks(rows * c)).for_each(
            |((db, xb), gb)| {
                for ((dr, xr), gr) in db.chunks_mut(c).zip(xb.chunks(c)).zip(gb.chunks(c)) {
                    let inv = rms_inv(xr, eps);
                    let mu = sum_map(c, |i| (gr[i] * ws[i]) * (xr[i] * inv)) / c as f32;
                    for i in 0..c {
                        dr[i] = ((gr[i] * ws[i]) - (xr[i] * inv) * mu) * inv;
                    }
                }
            },
        );
        // dw[i] = sum over rows, in increasing row order, of dy * xhat.
        let mut dw = vec![0f32; c];
        for (xr, gr) in xs.chunks(c).zip(dys.chunks(c)) {
            let inv = rms_inv(xr, eps);
            for i in 0..c {
                dw[i] += gr[i] * (xr[i] * inv);
            }
        }
        Ok((Some(tensor(dx, x.dims())?), Some(tensor(dw, w.dims())?)))
    }
}

/// RMSNorm over the last dim with gain w (C).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
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

struct Rope {
    n_head: usize,
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
}

impl Rope {
    /// Rotate x (B, T, C) by the angle's (cos, sign * sin): sign -1 is the inverse (backward).
    fn rotate(&self, x: &[f32], t: usize, c: usize, sign: f32) -> Vec<f32> {
        let hd = c / self.n_head;
        let half = hd / 2;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(c).zip(x.par_chunks(c)).enumerate().for_each(|(row, (yr, xr))| {
            let pos = row % t;
            let (cs, sn) = (&self.cos[pos * half..(pos + 1) * half], &self.sin[pos * half..(pos + 1) * half]);
            for h in 0..self.n_head {
                let o = h * hd;
                for j in 0..half {
                    let (x1, x2) = (xr[o + j], xr[o + half + j]);
                    let s = sign * sn[j];
                    yr[o + j] = x1 * cs[j] - x2 * s;
                    yr[o + half + j] = x2 * cs[j] + x1 * s;
                }
            }
        });
        y
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "tinylm-rope"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(self.name(), s, l)?;
        let (_, t, c) = l.shape().dims3()?;
        Ok((CpuStorage::F32(self.rotate(x, t, c, 1.0)), l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (_, t, c) = x.dims3()?;
        // The rotation is orthogonal: its transpose is the rotation by -angle.
        let dy = dy.contiguous()?;
        let dyv = view(&dy)?;
        Ok(Some(tensor(self.rotate(dyv.data(), t, c, -1.0), x.dims())?))
    }
}

/// Rotary embedding of x (B, T, C) with `n_head` heads of Dh = C / n_head, positions 0..T.
pub fn rope(x: &Tensor, n_head: usize, theta: f64) -> Result<Tensor> {
    let (_, t, c) = x.dims3()?;
    if !c.is_multiple_of(n_head) || !(c / n_head).is_multiple_of(2) {
        bail!("rope: width {c} is not n_head {n_head} heads of even size");
    }
    let (cos, sin) = rope_tables(t, c / n_head, theta);
    x.contiguous()?.apply_op1(Rope { n_head, cos: Arc::new(cos), sin: Arc::new(sin) })
}

// ---------------------------------------------------------------------------------------------
// Causal self-attention: y = softmax(mask(q k^T * scale)) v per (batch, head).

struct Attention {
    n_head: usize,
}

/// Geometry of one (batch, head): its offset into (B, T, C) data.
#[derive(Clone, Copy)]
struct Head {
    t: usize,
    c: usize,
    hd: usize,
    scale: f32,
}

impl Head {
    fn base(&self, bh: usize, n_head: usize) -> usize {
        (bh / n_head) * self.t * self.c + (bh % n_head) * self.hd
    }
    /// (T, Dh) rows of a (B, T, C) tensor from `base`.
    fn rows<'a>(&self, d: &'a [f32], base: usize) -> MatRef<'a> {
        MatRef { data: &d[base..], rs: self.c, cs: 1 }
    }
    /// The transpose (Dh, T) of `rows`.
    fn cols<'a>(&self, d: &'a [f32], base: usize) -> MatRef<'a> {
        MatRef { data: &d[base..], rs: 1, cs: self.c }
    }

    /// P (T, T): row i is softmax over j <= i of (q_i . k_j) * scale, zero for j > i.
    fn probs(&self, q: &[f32], k: &[f32], base: usize) -> Vec<f32> {
        let t = self.t;
        let mut p = vec![0f32; t * t];
        matmul_serial(self.rows(q, base), self.cols(k, base), &mut p, t, t, self.hd);
        for (i, row) in p.chunks_mut(t).enumerate() {
            softmax_prefix(row, i + 1, self.scale);
        }
        p
    }
}

/// In place: row[..len] = softmax(row[..len] * scale), row[len..] = 0.
fn softmax_prefix(row: &mut [f32], len: usize, scale: f32) {
    for x in row[..len].iter_mut() {
        *x *= scale;
    }
    let m = math::max(&row[..len]);
    for x in row[..len].iter_mut() {
        *x = exp(*x - m);
    }
    let s = math::sum(&row[..len]);
    for x in row[..len].iter_mut() {
        *x /= s;
    }
    row[len..].fill(0.0);
}

/// Copy per-(batch, head) (T, Dh) blocks back into (B, T, C).
fn scatter(blocks: &[Vec<f32>], g: Head, n_head: usize, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len];
    for (bh, blk) in blocks.iter().enumerate() {
        let base = g.base(bh, n_head);
        for i in 0..g.t {
            out[base + i * g.c..base + i * g.c + g.hd].copy_from_slice(&blk[i * g.hd..(i + 1) * g.hd]);
        }
    }
    out
}

impl Attention {
    fn geometry(&self, dims: &[usize]) -> Result<(usize, Head)> {
        let [b, t, c] = dims else { bail!("attention: want (B, T, C), got {dims:?}") };
        let hd = c / self.n_head;
        if hd * self.n_head != *c {
            bail!("attention: width {c} is not {} heads", self.n_head);
        }
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        Ok((b * self.n_head, Head { t: *t, c: *c, hd, scale }))
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "tinylm-causal-attention"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (f32s(self.name(), s1, l1)?, f32s(self.name(), s2, l2)?, f32s(self.name(), s3, l3)?);
        if l1.dims() != l2.dims() || l1.dims() != l3.dims() {
            bail!("attention: q {:?}, k {:?}, v {:?} differ", l1.dims(), l2.dims(), l3.dims());
        }
        let (nbh, g) = self.geometry(l1.dims())?;
        let blocks: Vec<Vec<f32>> = (0..nbh)
            .into_par_iter()
            .map(|bh| {
                let base = g.base(bh, self.n_head);
                let p = g.probs(q, k, base);
                // Y = P V: the chain runs over all j < T (the masked terms add fma(0, v, acc)).
                let mut y = vec![0f32; g.t * g.hd];
                matmul_serial(MatRef::rows(&p, g.t), g.rows(v, base), &mut y, g.t, g.hd, g.t);
                y
            })
            .collect();
        Ok((CpuStorage::F32(scatter(&blocks, g, self.n_head, q.len())), l1.shape().clone()))
    }
    #[allow(clippy::type_complexity)]
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (nbh, g) = self.geometry(q.dims())?;
        let (q, k, v, dy) = (q.contiguous()?, k.contiguous()?, v.contiguous()?, dy.contiguous()?);
        let (qv, kv, vv, dyv) = (view(&q)?, view(&k)?, view(&v)?, view(&dy)?);
        let (qs, ks, vs, dys) = (qv.data(), kv.data(), vv.data(), dyv.data());
        let t = g.t;
        let grads: Vec<[Vec<f32>; 3]> = (0..nbh)
            .into_par_iter()
            .map(|bh| {
                let base = g.base(bh, self.n_head);
                let p = g.probs(qs, ks, base);
                // dP (T, T) = dY V^T
                let mut dp = vec![0f32; t * t];
                matmul_serial(g.rows(dys, base), g.cols(vs, base), &mut dp, t, t, g.hd);
                // dV (T, Dh) = P^T dY
                let mut dv = vec![0f32; t * g.hd];
                matmul_serial(MatRef::t(&p, t), g.rows(dys, base), &mut dv, t, g.hd, t);
                // dS = P * (dP - sum_j P dP) * scale on j <= i, 0 above.
                let mut ds = dp;
                for i in 0..t {
                    let (pr, dr) = (&p[i * t..i * t + i + 1], &mut ds[i * t..(i + 1) * t]);
                    let r = sum_map(i + 1, |j| pr[j] * dr[j]);
                    for j in 0..=i {
                        dr[j] = (pr[j] * (dr[j] - r)) * g.scale;
                    }
                    dr[i + 1..].fill(0.0);
                }
                // dQ = dS K, dK = dS^T Q
                let mut dq = vec![0f32; t * g.hd];
                matmul_serial(MatRef::rows(&ds, t), g.rows(ks, base), &mut dq, t, g.hd, t);
                let mut dk = vec![0f32; t * g.hd];
                matmul_serial(MatRef::t(&ds, t), g.rows(qs, base), &mut dk, t, g.hd, t);
                [dq, dk, dv]
            })
            .collect();
        let pick = |i: usize| -> Result<Tensor> {
            let blocks: Vec<Vec<f32>> = grads.iter().map(|b| b[i].clone()).collect();
            tensor(scatter(&blocks, g, self.n_head, qs.len()), q.dims())
        };
        Ok((Some(pick(0)?), Some(pick(1)?), Some(pick(2)?)))
    }
}

/// Causal attention of q, k, v (B, T, C) with `n_head` heads -> (B, T, C), heads side by side.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, n_head: usize) -> Result<Tensor> {
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, Attention { n_head })
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: y = silu(g) * u, silu(g) = g * sigmoid(g)

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "tinylm-swiglu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (f32s(self.name(), s1, l1)?, f32s(self.name(), s2, l2)?);
        if l1.dims() != l2.dims() {
            bail!("swiglu: gate {:?} and up {:?} differ", l1.dims(), l2.dims());
        }
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(16384).zip(g.par_chunks(16384)).zip(u.par_chunks(16384)).for_each(
            |((yb, gb), ub)| {
                for i in 0..yb.len() {
                    yb[i] = (gb[i] * sigmoid(gb[i])) * ub[i];
                }
            },
        );
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, u, dy) = (g.contiguous()?, u.contiguous()?, dy.contiguous()?);
        let (gv, uv, dyv) = (view(&g)?, view(&u)?, view(&dy)?);
        let (gs, us, dys) = (gv.data(), uv.data(), dyv.data());
        let n = gs.len();
        let mut dg = vec![0f32; n];
        let mut du = vec![0f32; n];
        dg.par_chunks_mut(16384).zip(du.par_chunks_mut(16384)).enumerate().for_each(|(blk, (dgb, dub))| {
            let o = blk * 16384;
            for i in 0..dgb.len() {
                let (x, d) = (gs[o + i], dys[o + i]);
                let s = sigmoid(x);
                // silu'(x) = s (1 + x (1 - s))
                dgb[i] = (d * us[o + i]) * (s * (1.0 + x * (1.0 - s)));
                dub[i] = d * (x * s);
            }
        });
        Ok((Some(tensor(dg, g.dims())?), Some(tensor(du, u.dims())?)))
    }
}

/// silu(gate) * up, elementwise.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy: mean over rows of ln(sum_j e^(x_j - m)) - (x_t - m), m = max_j x_j

struct CrossEntropy;

/// One row's loss, and its exps and their sum (for the backward).
fn ce_row(row: &[f32], target: usize, e: &mut [f32]) -> (f32, f32) {
    let m = math::max(row);
    for (ej, &x) in e.iter_mut().zip(row) {
        *ej = exp(x - m);
    }
    let s = math::sum(e);
    (ln(s) - (row[target] - m), s)
}

fn targets<'a>(op: &str, s: &'a CpuStorage, l: &Layout, v: usize) -> Result<&'a [u32]> {
    let CpuStorage::U32(t) = s else { bail!("{op}: targets must be u32") };
    let t = match l.contiguous_offsets() {
        Some((a, b)) => &t[a..b],
        None => bail!("{op}: targets must be contiguous"),
    };
    if let Some(bad) = t.iter().find(|&&x| x as usize >= v) {
        bail!("{op}: target {bad} out of range for vocabulary {v}");
    }
    Ok(t)
}

/// Per-row losses of logits (N, V) against targets (N).
fn row_losses(x: &[f32], tg: &[u32], v: usize) -> Vec<f32> {
    let mut out = vec![0f32; tg.len()];
    out.par_iter_mut().enumerate().for_each_init(
        || vec![0f32; v],
        |e, (i, o)| *o = ce_row(&x[i * v..(i + 1) * v], tg[i] as usize, e).0,
    );
    out
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "tinylm-cross-entropy"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(self.name(), s1, l1)?;
        let (n, v) = l1.shape().dims2()?;
        let tg = targets(self.name(), s2, l2, v)?;
        if tg.len() != n {
            bail!("cross_entropy: {n} rows but {} targets", tg.len());
        }
        let losses = row_losses(x, tg, v);
        // The mean: the 8-lane sum in f64, divided by N, rounded once to f32.
        let mean = sum_map_f64(n, |i| losses[i] as f64) / n.max(1) as f64;
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }
    fn bwd(
        &self,
        x: &Tensor,
        tg: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = x.dims2()?;
        let x = x.contiguous()?;
        let xv = view(&x)?;
        let xs = xv.data();
        let tg = tg.flatten_all()?.to_vec1::<u32>()?;
        // d loss / d x_ij = (p_ij - [j = t_i]) * g / N
        let k = g.to_dtype(DType::F32)?.to_scalar::<f32>()? / n as f32;
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(v).enumerate().for_each(|(i, dr)| {
            let (_, s) = ce_row(&xs[i * v..(i + 1) * v], tg[i] as usize, dr);
            for (j, d) in dr.iter_mut().enumerate() {
                let p = *d / s;
                *d = if j == tg[i] as usize { (p - 1.0) * k } else { p * k };
            }
        });
        Ok((Some(tensor(dx, x.dims())?), None))
    }
}

/// Mean cross-entropy of logits (N, V) against targets (N) u32: a scalar.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy)
}

/// Per-token losses (N) of logits (N, V), no graph.
pub fn token_losses(logits: &Tensor, tg: &Tensor) -> Result<Vec<f32>> {
    let (n, v) = logits.dims2()?;
    let x = host(logits)?;
    let t = tg.flatten_all()?.to_vec1::<u32>()?;
    if t.len() != n || t.iter().any(|&i| i as usize >= v) {
        bail!("token_losses: targets do not match logits ({n}, {v})");
    }
    Ok(row_losses(&x, &t, v))
}
