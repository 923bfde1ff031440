//! GFLOP/s of kernels::matmul on the linear-layer shapes of a config (one thread by default):
//! `cargo run --release --locked --example mmbench -- D FF V M` (M = B*T rows).
use std::time::Instant;
use tinylm::kernels::matmul::{matmul_serial, MatRef};

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (d, ff, v, m) = (a[0], a[1], a[2], a[3]);
    for &(n, k) in &[(d, d), (ff, d), (d, ff), (v, d)] {
        let x = vec![0.5f32; m * k];
        let w = vec![0.25f32; n * k];
        let dy = vec![0.125f32; m * n];
        let mut y = vec![0f32; m * n];
        let mut dx = vec![0f32; m * k];
        let mut dw = vec![0f32; n * k];
        let fl = 2.0 * (m * n * k) as f64;
        let reps = 3;
        let mut t = [0f64; 3];
        for _ in 0..reps {
            let s = Instant::now();
            matmul_serial(MatRef::rows(&x, k), MatRef::t(&w, k), &mut y, m, n, k);
            t[0] += s.elapsed().as_secs_f64();
            let s = Instant::now();
            matmul_serial(MatRef::rows(&dy, n), MatRef::rows(&w, k), &mut dx, m, k, n);
            t[1] += s.elapsed().as_secs_f64();
            let s = Instant::now();
            matmul_serial(MatRef::t(&dy, n), MatRef::rows(&x, k), &mut dw, n, k, m);
            t[2] += s.elapsed().as_secs_f64();
        }
        println!(
            "n={n:5} k={k:5} m={m}: fwd {:5.1} dX {:5.1} dW {:5.1} GFLOP/s",
            fl * reps as f64 / t[0] / 1e9,
            fl * reps as f64 / t[1] / 1e9,
            fl * reps as f64 / t[2] / 1e9
        );
    }
}
