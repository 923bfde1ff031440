//! AdamW and the learning-rate schedule.
//!
//! candle_nn's AdamW keeps its moments private, so it cannot be checkpointed. Ours keeps them as
//! named tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`) plus a `step` tensor, all of which a
//! checkpoint saves and restores exactly.

use crate::checkpoint::{self, Raw};
use crate::config::OptimConfig;
use crate::engine::ParamLayout;
use crate::error::{Error, Result};
use crate::kernels::adamw;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Linear warmup to `lr` over `warmup` steps, then cosine decay to `min_lr` at `total` steps,
/// flat after. `step` is 0-based: the lr used for the (step+1)-th update. In f64 with libm's
/// cos, so the value is the same on every platform.
pub fn lr_at(step: u64, o: &OptimConfig, total: u64) -> f64 {
    if step < o.warmup_steps {
        return o.lr * (step + 1) as f64 / o.warmup_steps as f64;
    }
    if step >= total || total <= o.warmup_steps {
        return o.min_lr;
    }
    let progress = (step - o.warmup_steps) as f64 / (total - o.warmup_steps) as f64;
    let coeff = 0.5 * (1.0 + libm::cos(std::f64::consts::PI * progress));
    o.min_lr + coeff * (o.lr - o.min_lr)
}

pub struct AdamW {
    pub step: u64,
    layout: ParamLayout,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl AdamW {
    /// The step and moment buffers, for sending the state between ranks (`dist`).
    pub fn buffers_mut(&mut self) -> (&mut u64, &mut [f32], &mut [f32]) {
        (&mut self.step, &mut self.m, &mut self.v)
    }

    pub fn new(layout: &ParamLayout) -> AdamW {
        AdamW { step: 0, layout: layout.clone(), m: vec![0.0; layout.total], v: vec![0.0; layout.total] }
    }

    /// One update (`kernels::adamw::update`) of the flat weights `w` with gradients `g`, both in
    /// the layout's order, parameter by parameter.
    pub fn update(&mut self, w: &mut [f32], g: &[f32], lr: f64, o: &OptimConfig) {
        self.step += 1;
        let s = adamw::Step::new(self.step, lr, o.beta1, o.beta2, o.eps);
        for (_, shape, r) in &self.layout.entries {
            // Decoupled decay on matrices only; norm gains (1-D) are not decayed.
            let decay = if shape.len() >= 2 && o.weight_decay > 0.0 {
                (1.0 - lr * o.weight_decay) as f32
            } else {
                1.0
            };
            let (m, v) = (&mut self.m[r.clone()], &mut self.v[r.clone()]);
            adamw::update(&mut w[r.clone()], &g[r.clone()], m, v, &s, decay);
        }
    }

    /// The state as named tensors, for a checkpoint.
    pub fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = self.layout.to_tensors(&self.m, ".exp_avg")?;
        out.extend(self.layout.to_tensors(&self.v, ".exp_avg_sq")?);
        out.insert("step".into(), Tensor::new(&[self.step as i64], &Device::Cpu)?);
        Ok(out)
    }

    /// `checkpoint::to_safetensors(&self.state())`, without copying the moments first.
    pub fn state_safetensors(&self) -> Result<Vec<u8>> {
        let mut raw = self.layout.raw(&self.m, ".exp_avg");
        raw.extend(self.layout.raw(&self.v, ".exp_avg_sq"));
        raw.push(("step".into(), Raw::I64(self.step as i64)));
        checkpoint::raw_to_safetensors(raw)
    }

    /// Restore from named tensors, checking that every parameter has matching moments.
    pub fn from_state(layout: &ParamLayout, st: &BTreeMap<String, Tensor>, origin: &str) -> Result<AdamW> {
        let get =
            |k: &str| st.get(k).ok_or_else(|| Error::msg(format!("{origin}: missing optimizer tensor {k}")));
        let step_t = get("step")?;
        if step_t.dtype() != DType::I64 || step_t.elem_count() != 1 {
            return Err(Error::msg(format!("{origin}: optimizer `step` must be one i64")));
        }
        let step = step_t.flatten_all()?.to_vec1::<i64>()?[0] as u64;
        for (name, shape, _) in &layout.entries {
            for suffix in ["exp_avg", "exp_avg_sq"] {
                let t = get(&format!("{name}.{suffix}"))?;
                if t.dims() != shape.as_slice() || t.dtype() != DType::F32 {
                    return Err(Error::msg(format!(
                        "{origin}: {name}.{suffix} has shape {:?}, want {shape:?}",
                        t.dims()
                    )));
                }
            }
        }
        let m = layout.flatten(st, ".exp_avg")?;
        let v = layout.flatten(st, ".exp_avg_sq")?;
        Ok(AdamW { step, layout: layout.clone(), m, v })
    }
}

/// Global L2 norm of the flat gradients: each parameter's sum of squares in f64 (the kernels'
/// 8-lane order), added in the layout's (sorted name) order, so it is reproducible.
pub fn grad_norm(layout: &ParamLayout, g: &[f32]) -> f64 {
    // Each parameter's sum on any thread; the sums are added in layout order.
    let sums: Vec<f64> =
        layout.entries.par_iter().map(|(_, _, r)| adamw::sum_squares(&g[r.clone()])).collect();
    let mut total = 0f64;
    for s in sums {
        total += s;
    }
    total.sqrt()
}

/// Scale all gradients so their global norm is at most `max`; returns the norm before clipping.
pub fn clip(layout: &ParamLayout, g: &mut [f32], max: f64) -> f64 {
    let norm = grad_norm(layout, g);
    if max > 0.0 && norm > max {
        adamw::scale(g, (max / (norm + 1e-6)) as f32);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OptimConfig {
        OptimConfig { lr: 1e-3, min_lr: 1e-4, warmup_steps: 10, ..OptimConfig::default() }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let o = cfg();
        assert!((lr_at(0, &o, 100) - 1e-4).abs() < 1e-12);
        assert!((lr_at(9, &o, 100) - 1e-3).abs() < 1e-12);
        assert!((lr_at(10, &o, 100) - 1e-3).abs() < 1e-12);
        assert!((lr_at(55, &o, 100) - 5.5e-4).abs() < 1e-9, "midpoint of the cosine");
        assert!((lr_at(100, &o, 100) - 1e-4).abs() < 1e-12);
        assert!((lr_at(500, &o, 100) - 1e-4).abs() < 1e-12);
        let lrs: Vec<f64> = (10..100).map(|s| lr_at(s, &o, 100)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
    }

    fn layout() -> ParamLayout {
        ParamLayout { entries: vec![("g".into(), vec![1], 0..1), ("w".into(), vec![1, 2], 1..3)], total: 3 }
    }

    #[test]
    fn adamw_matches_a_hand_computed_step() {
        // First step of AdamW: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps),
        // plus decoupled decay w * (1 - lr * wd) for matrices.
        let o = OptimConfig { weight_decay: 0.5, eps: 1e-8, ..OptimConfig::default() };
        let mut w = vec![3.0f32, 1.0, -2.0];
        let g = [2.0f32, 0.5, -0.25];
        let mut opt = AdamW::new(&layout());
        opt.update(&mut w, &g, 0.1, &o);
        let want = [1.0 * (1.0 - 0.05) - 0.1, -2.0 * (1.0 - 0.05) + 0.1];
        for (g, w) in w[1..].iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
        assert!((w[0] - 2.9).abs() < 1e-6, "1-D gains are not decayed: {}", w[0]);
        // The state round-trips, and its file is the same bytes either way.
        let st = opt.state().unwrap();
        assert_eq!(opt.state_safetensors().unwrap(), checkpoint::to_safetensors(&st).unwrap());
        assert_eq!(st.len(), 5);
        let back = AdamW::from_state(&layout(), &st, "test").unwrap();
        assert_eq!(back.step, 1);
        assert_eq!((back.m, back.v), (opt.m, opt.v));
        let mut bad = st.clone();
        bad.remove("w.exp_avg_sq");
        let e = AdamW::from_state(&layout(), &bad, "ck").err().unwrap().to_string();
        assert!(e.contains("ck") && e.contains("w.exp_avg_sq"), "{e}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let l = ParamLayout { entries: vec![("a".into(), vec![2], 0..2)], total: 2 };
        let mut g = vec![3.0f32, 4.0];
        let n = clip(&l, &mut g, 1.0);
        assert!((n - 5.0).abs() < 1e-6);
        assert!((grad_norm(&l, &g) - 1.0).abs() < 1e-5);
    }
}
