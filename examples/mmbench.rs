//! GFLOP/s of kernels::matmul on the linear-layer shapes of a config, on one thread
//! (`matmul_serial`, column `1t`) and on the rayon pool (`matmul`, column `Nt`; N from
//! `RAYON_NUM_THREADS`, default 2, as in training on two cores), plus the per-head attention
//! products (always `matmul_serial`, as the attention op calls them):
//! `cargo run --release --locked --example mmbench -- D FF V M [T DH [REPS]]` (M = B*T rows).
//! Each figure is the best of REPS (default 5) timed calls, so a noisy machine reads high-water
//! marks rather than averages.
use std::time::Instant;
use tinylm::kernels::matmul::{matmul, matmul_serial, MatRef};

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm up: page in C, fill caches
    (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// `best` on the pool when given one (so `matmul` splits over its threads), else here.
fn timed(pool: Option<&rayon::ThreadPool>, reps: usize, f: impl FnMut() + Send) -> f64 {
    match pool {
        Some(pool) => pool.install(|| best(reps, f)),
        None => best(reps, f),
    }
}

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (d, ff, v, m) = (a[0], a[1], a[2], a[3]);
    let (t, dh) = (a.get(4).copied().unwrap_or(128), a.get(5).copied().unwrap_or(32));
    let reps = a.get(6).copied().unwrap_or(5);
    let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    println!("GFLOP/s, best of {reps}: 1t = matmul_serial, {threads}t = matmul on {threads} threads");
    let (mut sum1, mut sum2) = (0f64, 0f64);
    for &(n, k) in &[(d, d), (ff, d), (d, ff), (v, d)] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.5).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.25).collect();
        let dy: Vec<f32> = (0..m * n).map(|i| (i % 3) as f32 * 0.125).collect();
        let mut y = vec![0f32; m * n];
        let mut dx = vec![0f32; m * k];
        let mut dw = vec![0f32; n * k];
        let fl = 2.0 * (m * n * k) as f64 / 1e9;
        let mut run = |par: bool| {
            let mm = if par { matmul } else { matmul_serial };
            let pl = if par { Some(&pool) } else { None };
            [
                timed(pl, reps, || mm(MatRef::rows(&x, k), MatRef::t(&w, k), &mut y, m, n, k)),
                timed(pl, reps, || mm(MatRef::rows(&dy, n), MatRef::rows(&w, k), &mut dx, m, k, n)),
                timed(pl, reps, || mm(MatRef::t(&dy, n), MatRef::rows(&x, k), &mut dw, n, k, m)),
            ]
        };
        let s = run(false);
        let p = run(true);
        sum1 += s.iter().sum::<f64>();
        sum2 += p.iter().sum::<f64>();
        println!(
            "n={n:5} k={k:5} m={m}: fwd {:5.1} {:5.1}  dX {:5.1} {:5.1}  dW {:5.1} {:5.1}  (1t {threads}t)",
            fl / s[0],
            fl / p[0],
            fl / s[1],
            fl / p[1],
            fl / s[2],
            fl / p[2]
        );
    }
    // Per-head attention products (T x T scores, Dh head dim, heads of a C = 4 Dh wide row).
    let c = 4 * dh;
    let q: Vec<f32> = (0..t * c).map(|i| (i % 7) as f32 * 0.5).collect();
    let p: Vec<f32> = (0..t * t).map(|i| (i % 5) as f32 * 0.25).collect();
    let mut s = vec![0f32; t * t];
    let mut o = vec![0f32; t * dh];
    let rows = MatRef { data: &q, rs: c, cs: 1 };
    let cols = MatRef { data: &q, rs: 1, cs: c };
    let calls = 200;
    let tm = [
        best(reps, || (0..calls).for_each(|_| matmul_serial(rows, cols, &mut s, t, t, dh))),
        best(reps, || (0..calls).for_each(|_| matmul_serial(MatRef::rows(&p, t), rows, &mut o, t, dh, t))),
        best(reps, || (0..calls).for_each(|_| matmul_serial(MatRef::t(&p, t), rows, &mut o, t, dh, t))),
    ];
    let fl = 2.0 * (t * t * dh * calls) as f64 / 1e9;
    println!(
        "attention T={t} Dh={dh}: QK^T {:5.1}  PV {:5.1}  P^T dY {:5.1}  (1t)",
        fl / tm[0],
        fl / tm[1],
        fl / tm[2]
    );
    println!("linear total seconds: 1t {sum1:.4}  {threads}t {sum2:.4}");
}
