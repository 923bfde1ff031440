//! AdamW's elementwise update and the global gradient norm, in a fixed sequence of f32 (update)
//! and f64 (norm) operations. Host-side scalars (bias corrections, lr, decay) are computed in
//! f64 with libm and rounded once to f32.

use super::math::sum_map_f64;
use super::wide;
use rayon::prelude::*;

/// The per-step constants of one AdamW update, as the kernel uses them.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    /// 1 / (1 - beta1^t) and 1 / (1 - beta2^t)
    pub inv_bc1: f32,
    pub inv_bc2: f32,
    pub eps: f32,
}

impl Step {
    /// Constants for update number `t` (1-based).
    pub fn new(t: u64, lr: f64, beta1: f64, beta2: f64, eps: f64) -> Step {
        let bc1 = 1.0 - libm::pow(beta1, t as f64);
        let bc2 = 1.0 - libm::pow(beta2, t as f64);
        Step {
            lr: lr as f32,
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            inv_bc1: (1.0 / bc1) as f32,
            inv_bc2: (1.0 / bc2) as f32,
            eps: eps as f32,
        }
    }
}

/// One AdamW update in place. `decay` is the decoupled weight-decay factor (1 - lr * wd), or 1.
/// Per element, in this order:
///   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) (g g)
///   u = (m / bc1) / (sqrt(v / bc2) + eps), the divisions by bc as multiplies by inv_bc
///   w = w decay - lr u
pub fn update(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &Step, decay: f32) {
    assert!(w.len() == g.len() && w.len() == m.len() && w.len() == v.len(), "adamw: length mismatch");
    const CHUNK: usize = 8192;
    w.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((w, m), v), g)| update_chunk(w, g, m, v, s, decay));
}

wide! {
    fn update_chunk(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &Step, decay: f32) {
        for (((w, m), v), &gi) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            *m = s.beta1 * *m + s.one_minus_beta1 * gi;
            *v = s.beta2 * *v + s.one_minus_beta2 * (gi * gi);
            let u = (*m * s.inv_bc1) / ((*v * s.inv_bc2).sqrt() + s.eps);
            *w = *w * decay - s.lr * u;
        }
    }
}

/// Sum of squares of one gradient in f64 (each square is exact), in the 8-lane order.
pub fn sum_squares(g: &[f32]) -> f64 {
    sum_map_f64(g.len(), |i| {
        let x = g[i] as f64;
        x * x
    })
}

/// Multiply every element by `s` (gradient clipping).
pub fn scale(g: &mut [f32], s: f32) {
    g.par_chunks_mut(1 << 16).for_each(|c| scale_chunk(c, s));
}

wide! {
    fn scale_chunk(g: &mut [f32], s: f32) {
        for x in g.iter_mut() {
            *x *= s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_is_sign_times_lr() {
        // At t = 1, m_hat = g and v_hat = g^2, so the step is lr * g / (|g| + eps).
        let s = Step::new(1, 0.1, 0.9, 0.95, 1e-8);
        let mut w = vec![1.0f32, -2.0, 0.5];
        let g = [0.5f32, -0.25, 0.0];
        let (mut m, mut v) = (vec![0f32; 3], vec![0f32; 3]);
        update(&mut w, &g, &mut m, &mut v, &s, 0.95);
        let want = [0.95 - 0.1, -1.9 + 0.1, 0.475];
        for (a, b) in w.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert_eq!(sum_squares(&[3.0, 4.0]), 25.0);
    }
}
