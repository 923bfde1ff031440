//! A Llama-style decoder in candle, fp32: RMSNorm, rotary embeddings in the half-split
//! (`rotate_half`) layout of HF transformers, SwiGLU MLP, no biases, untied embedding and head.
//!
//! Parameter names are HF Llama's, so `model.safetensors` loads into `LlamaForCausalLM`.
//! Every op is one of our kernels (`crate::kernels::ops`, a candle custom op with its own
//! backward) under the numerics contract of docs/numerics.md; candle only keeps the graph and
//! does the exact ops (embedding lookup, residual adds, reshapes).

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::kernels::ops;
use crate::rng;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dims {
    pub vocab: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub rope_theta: f64,
    pub norm_eps: f64,
}

impl Dims {
    pub fn new(m: &ModelConfig, vocab: usize) -> Dims {
        Dims {
            vocab,
            n_layer: m.n_layer as usize,
            n_head: m.n_head as usize,
            d_model: m.d_model as usize,
            d_ff: m.d_ff as usize,
            rope_theta: m.rope_theta,
            norm_eps: m.norm_eps,
        }
    }
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }

    /// Every parameter: (HF name, shape), sorted by name.
    pub fn param_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        let (v, c, f) = (self.vocab, self.d_model, self.d_ff);
        let mut m = BTreeMap::new();
        m.insert("model.embed_tokens.weight".into(), vec![v, c]);
        m.insert("model.norm.weight".into(), vec![c]);
        m.insert("lm_head.weight".into(), vec![v, c]);
        for i in 0..self.n_layer {
            let p = format!("model.layers.{i}");
            m.insert(format!("{p}.input_layernorm.weight"), vec![c]);
            m.insert(format!("{p}.post_attention_layernorm.weight"), vec![c]);
            for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                m.insert(format!("{p}.self_attn.{proj}.weight"), vec![c, c]);
            }
            m.insert(format!("{p}.mlp.gate_proj.weight"), vec![f, c]);
            m.insert(format!("{p}.mlp.up_proj.weight"), vec![f, c]);
            m.insert(format!("{p}.mlp.down_proj.weight"), vec![c, f]);
        }
        m
    }
}

pub struct Llama {
    pub dims: Dims,
    /// Parameters by sorted name: everything that touches weights or files iterates this.
    pub params: BTreeMap<String, Var>,
}

impl Llama {
    /// Fresh weights: norm gains 1, everything else normal(0, 0.02), with the residual output
    /// projections (o_proj, down_proj) scaled by 1/sqrt(2 * n_layer) as in GPT-2. Each parameter
    /// draws from its own stream keyed by name, so adding a layer never shifts another's init.
    pub fn init(dims: Dims, seed: u64) -> Result<Llama> {
        let mut params = BTreeMap::new();
        let resid_scale = 1.0 / (2.0 * dims.n_layer as f64).sqrt();
        for (name, shape) in dims.param_shapes() {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else {
                let std = if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                    0.02 * resid_scale
                } else {
                    0.02
                };
                let mut r = rng::stream(seed, "init", &name);
                (0..n).map(|_| (rng::normal(&mut r) as f64 * std) as f32).collect()
            };
            let t = Tensor::from_vec(data, shape, &Device::Cpu)?;
            params.insert(name, Var::from_tensor(&t)?);
        }
        Ok(Llama { dims, params })
    }

    /// Weights from named tensors (a checkpoint), checking names and shapes.
    pub fn from_tensors(dims: Dims, tensors: &BTreeMap<String, Tensor>, origin: &str) -> Result<Llama> {
        let mut params = BTreeMap::new();
        for (name, shape) in dims.param_shapes() {
            let t = tensors.get(&name).ok_or_else(|| {
                Error::msg(format!(
                    "{origin}: missing tensor {name}; the checkpoint does not match the model config"
                ))
            })?;
            if t.dims() != shape.as_slice() || t.dtype() != DType::F32 {
                return Err(Error::msg(format!(
                    "{origin}: tensor {name} is {:?} {:?}, the config wants F32 {shape:?}",
                    t.dtype(),
                    t.dims()
                )));
            }
            params.insert(name, Var::from_tensor(t)?);
        }
        Ok(Llama { dims, params })
    }

    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.params.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
    }

    pub fn num_params(&self) -> usize {
        self.params.values().map(|v| v.elem_count()).sum()
    }

    fn p(&self, name: &str) -> Result<&Tensor> {
        self.params
            .get(name)
            .map(|v| v.as_tensor())
            .ok_or_else(|| Error::msg(format!("internal: no parameter {name}")))
    }

    /// ids (B, T) u32 -> logits (B, T, V).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let d = self.dims;
        let (b, t) = ids.dims2()?;
        let emb = self.p("model.embed_tokens.weight")?;
        let mut x = emb.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, d.d_model))?; // (B, T, C)
        for i in 0..d.n_layer {
            let p = |s: &str| self.p(&format!("model.layers.{i}.{s}.weight"));
            let h = ops::rms_norm(&x, p("input_layernorm")?, d.norm_eps)?; // (B, T, C)
            let h = self.attention(&h, i)?; // (B, T, C)
            x = (x + h)?;
            let h = ops::rms_norm(&x, p("post_attention_layernorm")?, d.norm_eps)?;
            // SwiGLU: down(silu(gate(h)) * up(h))
            let gate = ops::linear(&h, p("mlp.gate_proj")?)?; // (B, T, F)
            let up = ops::linear(&h, p("mlp.up_proj")?)?; // (B, T, F)
            x = (x + ops::linear(&ops::swiglu(&gate, &up)?, p("mlp.down_proj")?)?)?;
            // (B, T, C)
        }
        let x = ops::rms_norm(&x, self.p("model.norm.weight")?, d.norm_eps)?;
        Ok(ops::linear(&x, self.p("lm_head.weight")?)?) // (B, T, V)
    }

    /// Causal self-attention of x (B, T, C); heads stay side by side in C (head h is columns
    /// h*Dh..(h+1)*Dh), so no transposes are needed.
    fn attention(&self, x: &Tensor, layer: usize) -> Result<Tensor> {
        let d = self.dims;
        let p = |s: &str| self.p(&format!("model.layers.{layer}.self_attn.{s}.weight"));
        let q = ops::rope(&ops::linear(x, p("q_proj")?)?, d.n_head, d.rope_theta)?; // (B, T, C)
        let k = ops::rope(&ops::linear(x, p("k_proj")?)?, d.n_head, d.rope_theta)?; // (B, T, C)
        let v = ops::linear(x, p("v_proj")?)?; // (B, T, C)
        let y = ops::causal_attention(&q, &k, &v, d.n_head)?; // (B, T, C)
        Ok(ops::linear(&y, p("o_proj")?)?)
    }
}

/// Mean cross-entropy of logits (N, V) against targets (N) u32, differentiable.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(ops::cross_entropy(logits, targets)?)
}

/// Per-token loss (N) for evaluation, no graph kept.
pub fn token_losses(logits: &Tensor, targets: &Tensor) -> Result<Vec<f32>> {
    Ok(ops::token_losses(logits, targets)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Dims {
        Dims { vocab: 50, n_layer: 2, n_head: 2, d_model: 16, d_ff: 24, rope_theta: 10000.0, norm_eps: 1e-5 }
    }

    fn batch() -> (Tensor, Tensor) {
        let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 7 % 50) as u32).collect();
        let t = Tensor::from_vec(ids, (2, 9), &Device::Cpu).unwrap();
        (t.narrow(1, 0, 8).unwrap().contiguous().unwrap(), t.narrow(1, 1, 8).unwrap().flatten_all().unwrap())
    }

    #[test]
    fn every_parameter_gets_a_nonzero_gradient() {
        let m = Llama::init(tiny(), 0).unwrap();
        let (x, y) = batch();
        let logits = m.forward(&x).unwrap();
        let loss = cross_entropy(&logits.flatten_to(1).unwrap(), &y).unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in &m.params {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            let n = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(n > 0.0 && n.is_finite(), "{name}: grad norm^2 {n}");
        }
    }

    #[test]
    fn init_is_deterministic_and_loss_starts_near_ln_vocab() {
        let a = Llama::init(tiny(), 3).unwrap();
        let b = Llama::init(tiny(), 3).unwrap();
        for (name, v) in &a.params {
            let x = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let y = b.params[name].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(x, y, "{name}");
        }
        let (x, y) = batch();
        let loss = cross_entropy(&a.forward(&x).unwrap().flatten_to(1).unwrap(), &y).unwrap();
        let l = loss.to_scalar::<f32>().unwrap();
        assert!((l - (50f32).ln()).abs() < 0.1, "initial loss {l}");
    }

    #[test]
    fn attention_is_causal() {
        // Changing a later token must not change earlier logits.
        let m = Llama::init(tiny(), 1).unwrap();
        let a = Tensor::new(&[[1u32, 2, 3, 4, 5]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[1u32, 2, 3, 9, 9]], &Device::Cpu).unwrap();
        let prefix = |ids: &Tensor| {
            m.forward(ids).unwrap().narrow(1, 0, 3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let (la, lb) = (prefix(&a), prefix(&b));
        assert_eq!(la, lb);
    }

    #[test]
    fn rope_matches_rotate_half_by_hand() {
        // One head, Dh = 4, position 1: HF's q_embed = q*cos + rotate_half(q)*sin.
        let q = Tensor::new(&[1f32, 2., 3., 4., 5., 6., 7., 8.], &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 4))
            .unwrap();
        let out = ops::rope(&q, 1, 10000.0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&out[..4], &[1., 2., 3., 4.]); // position 0 is unrotated
        let (a0, a1) = (1.0f64, 1.0f64 / 100.0); // inv_freq = [1, 10000^(-1/2)]
        let want = [
            5.0 * a0.cos() - 7.0 * a0.sin(),
            6.0 * a1.cos() - 8.0 * a1.sin(),
            7.0 * a0.cos() + 5.0 * a0.sin(),
            8.0 * a1.cos() + 6.0 * a1.sin(),
        ];
        for (o, w) in out[4..].iter().zip(want) {
            assert!((*o as f64 - w).abs() < 1e-5, "{o} vs {w}");
        }
    }
}
