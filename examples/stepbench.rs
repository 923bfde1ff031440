//! Milliseconds per call of each kernel of a training step, on the shapes of a config, with the
//! rayon pool as configured (RAYON_NUM_THREADS): where a step's time goes without a profiler.
//! `cargo run --release --locked --example stepbench -- D FF V H B T [LAYERS]`
//! e.g. tiny: 128 352 512 4 16 128 4, small: 384 1024 2048 6 8 256 6.
use std::time::Instant;
use tinylm::engine::Engine;
use tinylm::kernels::layers::{self, Attn};
use tinylm::model::Dims;

fn time(name: &str, reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let s = Instant::now();
    for _ in 0..reps {
        f();
    }
    let ms = s.elapsed().as_secs_f64() * 1e3 / reps as f64;
    println!("{name:>28} {ms:8.3} ms");
    ms
}

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (c, f, v, nh, b, t) = (a[0], a[1], a[2], a[3], a[4], a[5]);
    let nl = a.get(6).copied().unwrap_or(1);
    let n = b * t;
    let x: Vec<f32> = (0..n * f.max(c).max(v)).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 700.0).collect();
    let w: Vec<f32> = (0..f.max(v) * c).map(|i| ((i * 104729 % 1000) as f32 - 500.0) / 9000.0).collect();
    let mut y = vec![0f32; n * f.max(c).max(v)];
    let mut y2 = vec![0f32; n * f.max(c)];
    let mut y3 = vec![0f32; n * f.max(c)];
    let mut inv = vec![0f32; n];
    let reps = 20;
    println!("per call, N = B*T = {n}:");
    time("linear fwd C->C", reps, || layers::linear_fwd(&x[..n * c], &w[..c * c], &mut y[..n * c], n, c, c));
    time("linear dx C->C", reps, || layers::linear_dx(&x[..n * c], &w[..c * c], &mut y[..n * c], n, c, c));
    time("linear dw C->C", reps, || layers::linear_dw(&x[..n * c], &x[..n * c], &mut y[..c * c], n, c, c));
    time("linear fwd C->F", reps, || layers::linear_fwd(&x[..n * c], &w[..f * c], &mut y[..n * f], n, f, c));
    time("linear dx F<-C", reps, || layers::linear_dx(&x[..n * f], &w[..f * c], &mut y[..n * c], n, f, c));
    time("linear dw F,C", reps, || layers::linear_dw(&x[..n * f], &x[..n * c], &mut y[..f * c], n, f, c));
    time("linear fwd C->V (head)", reps, || {
        layers::linear_fwd(&x[..n * c], &w[..v * c], &mut y[..n * v], n, v, c)
    });
    time("rms_norm fwd", reps, || {
        layers::rms_norm_fwd(&x[..n * c], &w[..c], 1e-5, &mut y[..n * c], &mut inv)
    });
    time("rms_norm bwd", reps, || {
        layers::rms_norm_bwd(&x[..n * c], &w[..c], &inv, &x[..n * c], &mut y[..n * c], &mut y2[..c])
    });
    let (cos, sin) = layers::rope_tables(t, c / nh, 10000.0);
    time("rope", reps, || layers::rope_apply(&mut y[..n * c], t, c, nh, &cos, &sin, 1.0));
    let g = Attn { b, t, c, n_head: nh };
    let mut p = vec![0f32; g.probs_len()];
    let q: Vec<f32> = x[..n * c].iter().map(|v| v * 0.3).collect();
    time("attention fwd", reps, || layers::attention_fwd(&q, &q, &x[..n * c], &mut y[..n * c], &mut p, g));
    let (mut dq, mut dk, mut dv) = (vec![0f32; n * c], vec![0f32; n * c], vec![0f32; n * c]);
    time("attention bwd", reps, || {
        layers::attention_bwd(&q, &q, &x[..n * c], &p, &x[..n * c], &mut dq, &mut dk, &mut dv, g)
    });
    time("swiglu fwd", reps, || layers::swiglu_fwd(&x[..n * f], &x[..n * f], &mut y[..n * f]));
    time("swiglu bwd", reps, || {
        layers::swiglu_bwd(&x[..n * f], &x[..n * f], &x[..n * f], &mut y2[..n * f], &mut y3[..n * f])
    });
    let tg: Vec<u32> = (0..n).map(|i| (i * 31 % v) as u32).collect();
    let mut losses = vec![0f32; n];
    time("cross-entropy fwd+bwd", reps, || {
        layers::ce_fwd_bwd(&x[..n * v], &tg, v, 1e-3, &mut y[..n * v], &mut losses)
    });

    let dims =
        Dims { vocab: v, n_layer: nl, n_head: nh, d_model: c, d_ff: f, rope_theta: 10000.0, norm_eps: 1e-5 };
    let mut e = Engine::new(dims, b, t).unwrap();
    let wts: Vec<f32> = (0..e.layout.total).map(|i| ((i * 7 % 1000) as f32 - 500.0) / 20000.0).collect();
    let mut grad = vec![0f32; wts.len()];
    let ids: Vec<u32> = (0..n).map(|i| (i * 13 % v) as u32).collect();
    time(&format!("forward ({nl} layers)"), 5, || {
        e.forward(&wts, &ids);
    });
    time(&format!("forward+backward ({nl} layers)"), 5, || {
        e.forward_backward(&wts, &ids, &tg, 1.0, &mut grad);
    });
}
