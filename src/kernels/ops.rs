//! The fused ops of a Llama step as candle custom ops, each with a hand-written backward. The
//! arithmetic lives in `layers` (plain slices), which the explicit training step
//! (`crate::engine`) calls too; these wrappers only move data in and out of candle tensors.
//! candle keeps the graph for inference, evaluation and the autograd reference in the tests.
//! Shapes: N rows of width C, B batch, T time, H heads, Dh = C / H.

use super::layers::{self, Attn};
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage,
    StorageRef, Tensor,
};
use std::sync::Arc;

pub use layers::rope_tables;

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
        layers::linear_fwd(x, w, &mut y, m, n, k);
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
        let mut dx = vec![0f32; m * k];
        layers::linear_dx(dys, ws, &mut dx, m, n, k);
        let mut dw = vec![0f32; n * k];
        layers::linear_dw(dys, xs, &mut dw, m, n, k);
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
        let mut inv = vec![0f32; x.len() / c.max(1)];
        layers::rms_norm_fwd(x, w, self.eps, &mut y, &mut inv);
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
        let inv = layers::rms_invs(xs, ws.len(), self.eps);
        let mut dx = vec![0f32; xs.len()];
        let mut dw = vec![0f32; ws.len()];
        layers::rms_norm_bwd(xs, ws, &inv, dys, &mut dx, &mut dw);
        Ok((Some(tensor(dx, x.dims())?), Some(tensor(dw, w.dims())?)))
    }
}

/// RMSNorm over the last dim with gain w (C).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

// ---------------------------------------------------------------------------------------------
// RoPE, HF's half-split layout: y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin per head.

struct Rope {
    n_head: usize,
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
}

impl Rope {
    fn rotate(&self, x: &[f32], t: usize, c: usize, sign: f32) -> Vec<f32> {
        let mut y = x.to_vec();
        layers::rope_apply(&mut y, t, c, self.n_head, &self.cos, &self.sin, sign);
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

impl Attention {
    fn geometry(&self, dims: &[usize]) -> Result<Attn> {
        let [b, t, c] = dims else { bail!("attention: want (B, T, C), got {dims:?}") };
        if !c.is_multiple_of(self.n_head) {
            bail!("attention: width {c} is not {} heads", self.n_head);
        }
        Ok(Attn { b: *b, t: *t, c: *c, n_head: self.n_head })
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
        let g = self.geometry(l1.dims())?;
        let mut y = vec![0f32; q.len()];
        let mut p = vec![0f32; g.probs_len()];
        layers::attention_fwd(q, k, v, &mut y, &mut p, g);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
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
        let g = self.geometry(q.dims())?;
        let (q, k, v, dy) = (q.contiguous()?, k.contiguous()?, v.contiguous()?, dy.contiguous()?);
        let (qv, kv, vv, dyv) = (view(&q)?, view(&k)?, view(&v)?, view(&dy)?);
        let (qs, ks, vs, dys) = (qv.data(), kv.data(), vv.data(), dyv.data());
        // The probabilities again (the forward's are not kept by candle's graph).
        let mut y = vec![0f32; qs.len()];
        let mut p = vec![0f32; g.probs_len()];
        layers::attention_fwd(qs, ks, vs, &mut y, &mut p, g);
        let (mut dq, mut dk, mut dv) = (vec![0f32; qs.len()], vec![0f32; qs.len()], vec![0f32; qs.len()]);
        layers::attention_bwd(qs, ks, vs, &p, dys, &mut dq, &mut dk, &mut dv, g);
        Ok((Some(tensor(dq, q.dims())?), Some(tensor(dk, q.dims())?), Some(tensor(dv, q.dims())?)))
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
        layers::swiglu_fwd(g, u, &mut y);
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
        let mut dg = vec![0f32; gs.len()];
        let mut du = vec![0f32; gs.len()];
        layers::swiglu_bwd(gs, us, dys, &mut dg, &mut du);
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
        let mut losses = vec![0f32; n];
        layers::ce_losses(x, tg, v, &mut losses);
        Ok((CpuStorage::F32(vec![layers::ce_mean(&losses)]), Shape::from(())))
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
        let tg = tg.flatten_all()?.to_vec1::<u32>()?;
        let k = g.to_dtype(DType::F32)?.to_scalar::<f32>()? / n as f32;
        let mut dx = vec![0f32; n * v];
        let mut losses = vec![0f32; n];
        layers::ce_fwd_bwd(xv.data(), &tg, v, k, &mut dx, &mut losses);
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
    let mut out = vec![0f32; n];
    layers::ce_losses(&x, &t, v, &mut out);
    Ok(out)
}
