//! Attention alone, on one config's shapes, for a profiler: `attbench D H B T REPS`.
use tinylm::kernels::layers::{self, Attn};
fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (c, nh, b, t, reps) = (a[0], a[1], a[2], a[3], a[4]);
    let n = b * t;
    let q: Vec<f32> = (0..n * c).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 700.0).collect();
    let x: Vec<f32> = (0..n * c).map(|i| ((i * 104729 % 1000) as f32 - 500.0) / 900.0).collect();
    let g = Attn { b, t, c, n_head: nh };
    let mut p = vec![0f32; g.probs_len()];
    let (mut y, mut dq, mut dk, mut dv) =
        (vec![0f32; n * c], vec![0f32; n * c], vec![0f32; n * c], vec![0f32; n * c]);
    let s = std::time::Instant::now();
    for _ in 0..reps {
        layers::attention_fwd(&q, &q, &x, &mut y, &mut p, g);
        layers::attention_bwd(&q, &q, &x, &p, &x, &mut dq, &mut dk, &mut dv, g);
    }
    println!("{:.2} ms per fwd+bwd", s.elapsed().as_secs_f64() * 1e3 / reps as f64);
}
