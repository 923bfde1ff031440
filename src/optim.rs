//! AdamW and the learning-rate schedule.
//!
//! candle_nn's AdamW keeps its moments private, so it cannot be checkpointed. Ours keeps them as
//! named tensors (`<param>.exp_avg`, `<param>.exp_avg_sq`) plus a `step` tensor, all of which a
//! checkpoint saves and restores exactly.

use crate::config::OptimConfig;
use crate::error::{Error, Result};
use crate::kernels::adamw;
use crate::kernels::ops::host;
use candle_core::{DType, Device, Tensor, Var};
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
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
}

impl AdamW {
    pub fn new(params: &BTreeMap<String, Var>) -> Result<AdamW> {
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (name, p) in params {
            m.insert(name.clone(), p.as_tensor().zeros_like()?);
            v.insert(name.clone(), p.as_tensor().zeros_like()?);
        }
        Ok(AdamW { step: 0, m, v })
    }

    /// One update (`kernels::adamw::update`). Params and grads are visited in sorted name order.
    pub fn update(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
        o: &OptimConfig,
    ) -> Result<()> {
        self.step += 1;
        let s = adamw::Step::new(self.step, lr, o.beta1, o.beta2, o.eps);
        for (name, p) in params {
            let g = grads.get(name).ok_or_else(|| Error::msg(format!("internal: no gradient for {name}")))?;
            let (mut w, g) = (host(p.as_tensor())?, host(g)?);
            let (mut m, mut v) = (host(&self.m[name])?, host(&self.v[name])?);
            // Decoupled decay on matrices only; norm gains (1-D) are not decayed.
            let decay =
                if p.rank() >= 2 && o.weight_decay > 0.0 { (1.0 - lr * o.weight_decay) as f32 } else { 1.0 };
            adamw::update(&mut w, &g, &mut m, &mut v, &s, decay);
            let shape = p.dims().to_vec();
            p.set(&Tensor::from_vec(w, shape.as_slice(), &Device::Cpu)?)?;
            self.m.insert(name.clone(), Tensor::from_vec(m, shape.as_slice(), &Device::Cpu)?);
            self.v.insert(name.clone(), Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?);
        }
        Ok(())
    }

    /// The state as named tensors, for a checkpoint.
    pub fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (name, m) in &self.m {
            out.insert(format!("{name}.exp_avg"), m.clone());
            out.insert(format!("{name}.exp_avg_sq"), self.v[name].clone());
        }
        out.insert("step".into(), Tensor::new(&[self.step as i64], &Device::Cpu)?);
        Ok(out)
    }

    /// Restore from named tensors, checking that every parameter has matching moments.
    pub fn from_state(
        params: &BTreeMap<String, Var>,
        st: &BTreeMap<String, Tensor>,
        origin: &str,
    ) -> Result<AdamW> {
        let get =
            |k: &str| st.get(k).ok_or_else(|| Error::msg(format!("{origin}: missing optimizer tensor {k}")));
        let step_t = get("step")?;
        if step_t.dtype() != DType::I64 || step_t.elem_count() != 1 {
            return Err(Error::msg(format!("{origin}: optimizer `step` must be one i64")));
        }
        let step = step_t.flatten_all()?.to_vec1::<i64>()?[0] as u64;
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (name, p) in params {
            for (suffix, dst) in [("exp_avg", &mut m), ("exp_avg_sq", &mut v)] {
                let t = get(&format!("{name}.{suffix}"))?;
                if t.dims() != p.dims() || t.dtype() != DType::F32 {
                    return Err(Error::msg(format!(
                        "{origin}: {name}.{suffix} has shape {:?}, want {:?}",
                        t.dims(),
                        p.dims()
                    )));
                }
                dst.insert(name.clone(), t.clone());
            }
        }
        Ok(AdamW { step, m, v })
    }
}

/// Global L2 norm of all gradients: each tensor's sum of squares in f64 (the kernels' 8-lane
/// order), added in sorted name order, so it is reproducible.
pub fn grad_norm(grads: &BTreeMap<String, Tensor>) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.values() {
        total += adamw::sum_squares(&host(g)?);
    }
    Ok(total.sqrt())
}

/// Scale all gradients so their global norm is at most `max`; returns the norm before clipping.
pub fn clip(grads: &mut BTreeMap<String, Tensor>, max: f64) -> Result<f64> {
    let norm = grad_norm(grads)?;
    if max > 0.0 && norm > max {
        let s = (max / (norm + 1e-6)) as f32;
        for g in grads.values_mut() {
            let mut v = host(g)?;
            adamw::scale(&mut v, s);
            *g = Tensor::from_vec(v, g.dims(), &Device::Cpu)?;
        }
    }
    Ok(norm)
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

    #[test]
    fn adamw_matches_a_hand_computed_step() {
        // First step of AdamW: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps),
        // plus decoupled decay w * (1 - lr * wd) for matrices.
        let o = OptimConfig { weight_decay: 0.5, eps: 1e-8, ..OptimConfig::default() };
        let w = Var::from_tensor(&Tensor::new(&[[1.0f32, -2.0]], &Device::Cpu).unwrap()).unwrap();
        let gain = Var::from_tensor(&Tensor::new(&[3.0f32], &Device::Cpu).unwrap()).unwrap();
        let params: BTreeMap<String, Var> =
            [("w".to_string(), w.clone()), ("g".to_string(), gain.clone())].into();
        let grads: BTreeMap<String, Tensor> = [
            ("w".to_string(), Tensor::new(&[[0.5f32, -0.25]], &Device::Cpu).unwrap()),
            ("g".to_string(), Tensor::new(&[2.0f32], &Device::Cpu).unwrap()),
        ]
        .into();
        let mut opt = AdamW::new(&params).unwrap();
        opt.update(&params, &grads, 0.1, &o).unwrap();
        let got = w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = [1.0 * (1.0 - 0.05) - 0.1, -2.0 * (1.0 - 0.05) + 0.1];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
        let got = gain.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((got - 2.9).abs() < 1e-6, "1-D gains are not decayed: {got}");
        // The state round-trips.
        let st = opt.state().unwrap();
        let back = AdamW::from_state(&params, &st, "test").unwrap();
        assert_eq!(back.step, 1);
        assert_eq!(back.state().unwrap().len(), st.len());
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut g: BTreeMap<String, Tensor> =
            [("a".to_string(), Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap())].into();
        let n = clip(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        assert!((grad_norm(&g).unwrap() - 1.0).abs() < 1e-5);
    }
}
