//! The training step written out: forward, cross-entropy and backward of the Llama in `model`
//! over buffers allocated once per run, calling the same `kernels::layers` functions as the
//! candle ops. It computes exactly what candle's autograd computes over those ops, value for
//! value and bit for bit (`tests` below compares them), without the graph, the per-op
//! allocations, the zero-filled gradient buffers or the copies in and out of tensors.
//!
//! What "exactly" takes, besides calling the same kernels:
//! - A gradient with several consumers is summed in candle's order (its reverse topological
//!   order): d(input_layernorm out) = (dv + dk) + dq, where each term is that projection's dX;
//!   two-term sums (residual stream, gate/up) are commutative in IEEE arithmetic.
//! - The embedding gradient adds the rows of d(x0) into a zeroed table in token order, as
//!   candle's `index_add` does.
//! - The loss gradient is 1 / grad_accum, rounded to f32, divided by B*T (candle's affine
//!   backward, then our cross-entropy backward).

use crate::checkpoint::Raw;
use crate::error::{Error, Result};
use crate::kernels::layers::{self, Attn};
use crate::kernels::wide;
use crate::model::Dims;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::ops::Range;

/// Every parameter in one flat f32 buffer, in sorted-name order (the order of
/// `Dims::param_shapes`, of checkpoints, of the gradient norm and of the optimizer).
#[derive(Debug, Clone)]
pub struct ParamLayout {
    pub entries: Vec<(String, Vec<usize>, Range<usize>)>,
    pub total: usize,
}

impl ParamLayout {
    pub fn new(dims: &Dims) -> ParamLayout {
        let mut entries = Vec::new();
        let mut off = 0;
        for (name, shape) in dims.param_shapes() {
            let n: usize = shape.iter().product();
            entries.push((name, shape, off..off + n));
            off += n;
        }
        ParamLayout { entries, total: off }
    }

    pub fn range(&self, name: &str) -> Result<Range<usize>> {
        self.entries
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, r)| r.clone())
            .ok_or_else(|| Error::msg(format!("internal: no parameter {name}")))
    }

    /// Named tensors (shapes of the layout) from a flat buffer.
    pub fn to_tensors(&self, flat: &[f32], suffix: &str) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (name, shape, r) in &self.entries {
            let t = Tensor::from_slice(&flat[r.clone()], shape.as_slice(), &Device::Cpu)?;
            out.insert(format!("{name}{suffix}"), t);
        }
        Ok(out)
    }

    /// Borrowed tensors of a flat buffer, for `checkpoint::raw_to_safetensors`.
    pub fn raw<'a>(&self, flat: &'a [f32], suffix: &str) -> Vec<(String, Raw<'a>)> {
        self.entries
            .iter()
            .map(|(name, shape, r)| (format!("{name}{suffix}"), Raw::F32(&flat[r.clone()], shape.clone())))
            .collect()
    }

    /// A flat buffer from named tensors whose names and shapes were already checked.
    pub fn flatten(&self, tensors: &BTreeMap<String, Tensor>, suffix: &str) -> Result<Vec<f32>> {
        let mut flat = Vec::with_capacity(self.total);
        for (name, shape, _) in &self.entries {
            let key = format!("{name}{suffix}");
            let t = tensors.get(&key).ok_or_else(|| Error::msg(format!("internal: no tensor {key}")))?;
            if t.dims() != shape.as_slice() {
                return Err(Error::msg(format!("internal: {key} is {:?}, want {shape:?}", t.dims())));
            }
            flat.extend(t.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(flat)
    }
}

/// Where one layer's parameters sit in the flat buffer.
struct LayerIx {
    ln1: Range<usize>,
    ln2: Range<usize>,
    q: Range<usize>,
    k: Range<usize>,
    v: Range<usize>,
    o: Range<usize>,
    gate: Range<usize>,
    up: Range<usize>,
    down: Range<usize>,
}

/// One layer's saved activations, (B*T, width) row-major.
struct LayerActs {
    /// The layer's input (residual stream).
    x: Vec<f32>,
    h1: Vec<f32>,
    inv1: Vec<f32>,
    /// q and k after RoPE.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention probabilities (B, H, T, T).
    p: Vec<f32>,
    /// Attention output, before o_proj.
    y: Vec<f32>,
    /// x + attention: the residual stream between the two blocks.
    xa: Vec<f32>,
    h2: Vec<f32>,
    inv2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// silu(gate) * up, the input of down_proj (kept: recomputing it cost ~2% of a step).
    sw: Vec<f32>,
}

/// Buffers for one micro-batch of (B, T) tokens through the model of `dims`.
pub struct Engine {
    dims: Dims,
    b: usize,
    t: usize,
    pub layout: ParamLayout,
    embed: Range<usize>,
    norm: Range<usize>,
    head: Range<usize>,
    layers: Vec<LayerIx>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    acts: Vec<LayerActs>,
    xf: Vec<f32>,
    hf: Vec<f32>,
    invf: Vec<f32>,
    logits: Vec<f32>,
    dlogits: Vec<f32>,
    losses: Vec<f32>,
    // Backward scratch: widths C and F.
    dres: Vec<f32>,
    dh: Vec<f32>,
    dtmp: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dff: Vec<f32>,
    dgate: Vec<f32>,
    dup: Vec<f32>,
    /// A layer input packed for the weight gradients that share it.
    packed: Vec<f32>,
}

impl Engine {
    pub fn new(dims: Dims, b: usize, t: usize) -> Result<Engine> {
        let layout = ParamLayout::new(&dims);
        let (c, f, v, n) = (dims.d_model, dims.d_ff, dims.vocab, b * t);
        let hd = dims.head_dim();
        if dims.n_layer == 0 || dims.n_head == 0 || !c.is_multiple_of(dims.n_head) || !hd.is_multiple_of(2) {
            return Err(Error::msg(format!(
                "model: {} layers of d_model {c} in n_head {} heads of even size are not a model",
                dims.n_layer, dims.n_head
            )));
        }
        let attn = Attn { b, t, c, n_head: dims.n_head };
        let mut layers = Vec::new();
        let mut acts = Vec::new();
        for i in 0..dims.n_layer {
            let r = |s: &str| layout.range(&format!("model.layers.{i}.{s}.weight"));
            layers.push(LayerIx {
                ln1: r("input_layernorm")?,
                ln2: r("post_attention_layernorm")?,
                q: r("self_attn.q_proj")?,
                k: r("self_attn.k_proj")?,
                v: r("self_attn.v_proj")?,
                o: r("self_attn.o_proj")?,
                gate: r("mlp.gate_proj")?,
                up: r("mlp.up_proj")?,
                down: r("mlp.down_proj")?,
            });
            let z = |len: usize| vec![0f32; len];
            acts.push(LayerActs {
                x: z(n * c),
                h1: z(n * c),
                inv1: z(n),
                q: z(n * c),
                k: z(n * c),
                v: z(n * c),
                p: z(attn.probs_len()),
                y: z(n * c),
                xa: z(n * c),
                h2: z(n * c),
                inv2: z(n),
                gate: z(n * f),
                up: z(n * f),
                sw: z(n * f),
            });
        }
        let (cos, sin) = layers::rope_tables(t, hd, dims.rope_theta);
        let z = |len: usize| vec![0f32; len];
        Ok(Engine {
            embed: layout.range("model.embed_tokens.weight")?,
            norm: layout.range("model.norm.weight")?,
            head: layout.range("lm_head.weight")?,
            layout,
            dims,
            b,
            t,
            layers,
            cos,
            sin,
            acts,
            xf: z(n * c),
            hf: z(n * c),
            invf: z(n),
            logits: z(n * v),
            dlogits: z(n * v),
            losses: z(n),
            dres: z(n * c),
            dh: z(n * c),
            dtmp: z(n * c),
            dq: z(n * c),
            dk: z(n * c),
            dv: z(n * c),
            dff: z(n * f),
            dgate: z(n * f),
            dup: z(n * f),
            packed: Vec::new(),
        })
    }

    /// The forward pass of `ids` (nb*T tokens, nb <= B, each < V): logits (nb*T, V), with every
    /// activation the backward needs kept.
    pub fn forward(&mut self, w: &[f32], ids: &[u32]) -> &[f32] {
        let d = self.dims;
        let (c, f, v, t, nh) = (d.d_model, d.d_ff, d.vocab, self.t, d.n_head);
        let n = ids.len();
        assert!(n.is_multiple_of(t) && n / t <= self.b && w.len() == self.layout.total, "engine: bad batch");
        let attn = Attn { b: n / t, t, c, n_head: nh };
        let eps = d.norm_eps as f32;
        let (cos, sin) = (&self.cos, &self.sin);
        let (nc, nf) = (n * c, n * f);
        let emb = &w[self.embed.clone()];
        for (row, &id) in self.acts[0].x[..nc].chunks_exact_mut(c).zip(ids) {
            row.copy_from_slice(&emb[id as usize * c..(id as usize + 1) * c]);
        }
        let tmp = &mut self.dtmp[..nc];
        for l in 0..d.n_layer {
            let ix = &self.layers[l];
            let (a, rest) = self.acts[l..].split_first_mut().expect("layer");
            let (x, h1, inv1) = (&a.x[..nc], &mut a.h1[..nc], &mut a.inv1[..n]);
            let (q, k, vv, y, p) = (&mut a.q[..nc], &mut a.k[..nc], &mut a.v[..nc], &mut a.y[..nc], &mut a.p);
            layers::rms_norm_fwd(x, &w[ix.ln1.clone()], eps, h1, inv1);
            layers::linear_fwd(h1, &w[ix.q.clone()], q, n, c, c);
            layers::rope_apply(q, t, c, nh, cos, sin, 1.0);
            layers::linear_fwd(h1, &w[ix.k.clone()], k, n, c, c);
            layers::rope_apply(k, t, c, nh, cos, sin, 1.0);
            layers::linear_fwd(h1, &w[ix.v.clone()], vv, n, c, c);
            layers::attention_fwd(q, k, vv, y, &mut p[..attn.probs_len()], attn);
            layers::linear_fwd(y, &w[ix.o.clone()], tmp, n, c, c);
            let xa = &mut a.xa[..nc];
            add(x, tmp, xa);
            let (h2, inv2) = (&mut a.h2[..nc], &mut a.inv2[..n]);
            layers::rms_norm_fwd(xa, &w[ix.ln2.clone()], eps, h2, inv2);
            let (gate, up, sw) = (&mut a.gate[..nf], &mut a.up[..nf], &mut a.sw[..nf]);
            layers::linear_fwd(h2, &w[ix.gate.clone()], gate, n, f, c);
            layers::linear_fwd(h2, &w[ix.up.clone()], up, n, f, c);
            layers::swiglu_fwd(gate, up, sw);
            layers::linear_fwd(sw, &w[ix.down.clone()], tmp, n, c, f);
            let out = match rest.first_mut() {
                Some(next) => &mut next.x[..nc],
                None => &mut self.xf[..nc],
            };
            add(xa, tmp, out);
        }
        let (xf, hf, invf) = (&self.xf[..nc], &mut self.hf[..nc], &mut self.invf[..n]);
        layers::rms_norm_fwd(xf, &w[self.norm.clone()], eps, hf, invf);
        layers::linear_fwd(hf, &w[self.head.clone()], &mut self.logits[..n * v], n, v, c);
        &self.logits[..n * v]
    }

    /// Per-token losses of targets `tg` given inputs `ids` (nb*T each, nb <= B), into `out`:
    /// the same bits as `ops::token_losses` of the candle model's logits.
    pub fn token_losses(&mut self, w: &[f32], ids: &[u32], tg: &[u32], out: &mut [f32]) {
        let v = self.dims.vocab;
        let logits = self.forward(w, ids);
        layers::ce_losses(logits, tg, v, out);
    }

    /// Forward and backward of one micro-batch of B*T tokens: inputs `ids`, targets `tg` (each
    /// < V), weights `w` (the flat layout). Writes the gradient of (mean loss * `gscale`) into
    /// `grad` and returns the mean loss.
    pub fn forward_backward(
        &mut self,
        w: &[f32],
        ids: &[u32],
        tg: &[u32],
        gscale: f32,
        grad: &mut [f32],
    ) -> f32 {
        let d = self.dims;
        let (c, f, v, n) = (d.d_model, d.d_ff, d.vocab, self.b * self.t);
        let (t, nh) = (self.t, d.n_head);
        let attn = Attn { b: self.b, t, c, n_head: nh };
        assert!(ids.len() == n && tg.len() == n && grad.len() == w.len());
        self.forward(w, ids);
        let k = gscale / n as f32;
        layers::ce_fwd_bwd(&self.logits, tg, v, k, &mut self.dlogits, &mut self.losses);
        let loss = layers::ce_mean(&self.losses);
        let (cos, sin) = (&self.cos, &self.sin);

        // ---- backward
        layers::linear_dw(&self.dlogits, &self.hf, &mut grad[self.head.clone()], n, v, c);
        layers::linear_dx(&self.dlogits, &w[self.head.clone()], &mut self.dh, n, v, c);
        layers::rms_norm_bwd(
            &self.xf,
            &w[self.norm.clone()],
            &self.invf,
            &self.dh,
            &mut self.dres,
            &mut grad[self.norm.clone()],
        );
        for l in (0..d.n_layer).rev() {
            let (ix, a) = (&self.layers[l], &self.acts[l]);
            // MLP block: x_out = xa + down(swiglu(gate(h2), up(h2))).
            layers::linear_dw(&self.dres, &a.sw, &mut grad[ix.down.clone()], n, c, f);
            layers::linear_dx(&self.dres, &w[ix.down.clone()], &mut self.dff, n, c, f);
            layers::swiglu_bwd(&a.gate, &a.up, &self.dff, &mut self.dgate, &mut self.dup);
            layers::linear_dx(&self.dup, &w[ix.up.clone()], &mut self.dh, n, f, c);
            // gate and up read the same input: pack it once for both weight gradients.
            let h2p = layers::pack_dw_input(&a.h2, n, c, &mut self.packed);
            layers::linear_dw_packed(&self.dup, h2p, &mut grad[ix.up.clone()], n, f);
            layers::linear_dx(&self.dgate, &w[ix.gate.clone()], &mut self.dtmp, n, f, c);
            add_assign(&mut self.dh, &self.dtmp);
            layers::linear_dw_packed(&self.dgate, h2p, &mut grad[ix.gate.clone()], n, f);
            layers::rms_norm_bwd(
                &a.xa,
                &w[ix.ln2.clone()],
                &a.inv2,
                &self.dh,
                &mut self.dtmp,
                &mut grad[ix.ln2.clone()],
            );
            add_assign(&mut self.dres, &self.dtmp);
            // Attention block: xa = x + o(attention(rope(q(h1)), rope(k(h1)), v(h1))).
            layers::linear_dw(&self.dres, &a.y, &mut grad[ix.o.clone()], n, c, c);
            layers::linear_dx(&self.dres, &w[ix.o.clone()], &mut self.dh, n, c, c);
            layers::attention_bwd(
                &a.q,
                &a.k,
                &a.v,
                &a.p,
                &self.dh,
                &mut self.dq,
                &mut self.dk,
                &mut self.dv,
                attn,
            );
            layers::rope_apply(&mut self.dq, t, c, nh, cos, sin, -1.0);
            layers::rope_apply(&mut self.dk, t, c, nh, cos, sin, -1.0);
            // d(h1) in candle's order: (d via v + d via k) + d via q.
            layers::linear_dx(&self.dv, &w[ix.v.clone()], &mut self.dh, n, c, c);
            // q, k and v read the same input: pack it once for the three weight gradients.
            let h1p = layers::pack_dw_input(&a.h1, n, c, &mut self.packed);
            layers::linear_dw_packed(&self.dv, h1p, &mut grad[ix.v.clone()], n, c);
            layers::linear_dx(&self.dk, &w[ix.k.clone()], &mut self.dtmp, n, c, c);
            add_assign(&mut self.dh, &self.dtmp);
            layers::linear_dw_packed(&self.dk, h1p, &mut grad[ix.k.clone()], n, c);
            layers::linear_dx(&self.dq, &w[ix.q.clone()], &mut self.dtmp, n, c, c);
            add_assign(&mut self.dh, &self.dtmp);
            layers::linear_dw_packed(&self.dq, h1p, &mut grad[ix.q.clone()], n, c);
            layers::rms_norm_bwd(
                &a.x,
                &w[ix.ln1.clone()],
                &a.inv1,
                &self.dh,
                &mut self.dtmp,
                &mut grad[ix.ln1.clone()],
            );
            add_assign(&mut self.dres, &self.dtmp);
        }
        // Embedding: rows of d(x0) added into a zeroed table in token order.
        let demb = &mut grad[self.embed.clone()];
        demb.fill(0.0);
        for (row, &id) in self.dres.chunks_exact(c).zip(ids) {
            let dst = &mut demb[id as usize * c..(id as usize + 1) * c];
            for (dd, &s) in dst.iter_mut().zip(row) {
                *dd += s;
            }
        }
        loss
    }
}

const ELEMS: usize = 16384;

/// out = a + b, elementwise.
fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(ELEMS)
        .zip(a.par_chunks(ELEMS))
        .zip(b.par_chunks(ELEMS))
        .for_each(|((o, a), b)| add_chunk(a, b, o));
}

/// a += b, elementwise.
fn add_assign(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(ELEMS).zip(b.par_chunks(ELEMS)).for_each(|(a, b)| add_assign_chunk(a, b));
}

wide! {
    fn add_chunk(a: &[f32], b: &[f32], out: &mut [f32]) {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            *o = x + y;
        }
    }
}

wide! {
    fn add_assign_chunk(a: &mut [f32], b: &[f32]) {
        for (x, &y) in a.iter_mut().zip(b) {
            *x += y;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{self, Llama};

    #[test]
    fn the_engine_gives_candle_autograd_bit_for_bit() {
        let dims = Dims {
            vocab: 61,
            n_layer: 2,
            n_head: 3,
            d_model: 24,
            d_ff: 40,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
        };
        let (b, t) = (3, 53); // T spans several attention slabs, B*T is not a multiple of 6
        let m = Llama::init(dims, 7).unwrap();
        let toks: Vec<u32> = (0..b * (t + 1)).map(|i| ((i * 37 + i / 5) % 61) as u32).collect();
        let mut ids = Vec::new();
        let mut tg = Vec::new();
        for bi in 0..b {
            ids.extend_from_slice(&toks[bi * (t + 1)..bi * (t + 1) + t]);
            tg.extend_from_slice(&toks[bi * (t + 1) + 1..(bi + 1) * (t + 1)]);
        }
        for accum in [1usize, 3] {
            // candle: the graph of Llama::forward and its autograd.
            let x = Tensor::from_vec(ids.clone(), (b, t), &Device::Cpu).unwrap();
            let y = Tensor::from_vec(tg.clone(), b * t, &Device::Cpu).unwrap();
            let logits = m.forward(&x).unwrap().flatten_to(1).unwrap();
            let loss = model::cross_entropy(&logits, &y).unwrap();
            let store = (&loss / accum as f64).unwrap().backward().unwrap();
            // The engine.
            let mut e = Engine::new(dims, b, t).unwrap();
            let w = e.layout.flatten(&m.tensors(), "").unwrap();
            let mut g = vec![f32::NAN; w.len()];
            let l = e.forward_backward(&w, &ids, &tg, (1.0 / accum as f64) as f32, &mut g);
            assert_eq!(l.to_bits(), loss.to_scalar::<f32>().unwrap().to_bits(), "loss");
            for (name, _, r) in &e.layout.entries {
                let want = store.get(m.params[name].as_tensor()).unwrap().flatten_all().unwrap();
                let want = want.to_vec1::<f32>().unwrap();
                let same = want.iter().zip(&g[r.clone()]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "accum {accum}: gradient of {name} differs");
            }
        }
        // Evaluation: per-token losses of fewer than B sequences equal candle's forward.
        let mut e = Engine::new(dims, b, t).unwrap();
        let w = e.layout.flatten(&m.tensors(), "").unwrap();
        let (ids2, tg2) = (&ids[..2 * t], &tg[..2 * t]);
        let mut got = vec![0f32; 2 * t];
        e.token_losses(&w, ids2, tg2, &mut got);
        let x = Tensor::from_slice(ids2, (2, t), &Device::Cpu).unwrap();
        let y = Tensor::from_slice(tg2, 2 * t, &Device::Cpu).unwrap();
        let want = model::token_losses(&m.forward(&x).unwrap().flatten_to(1).unwrap(), &y).unwrap();
        assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "eval losses differ");
    }
}
