//! Every op's forward against a plain f64 reference, and its hand-written backward against
//! central finite differences of that reference, on small random inputs of awkward shapes.
//! The check is on L = sum_i r_i y_i with fixed random r, so every output element matters.

use super::ops;
use candle_core::{Device, Tensor, Var};

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

/// Check `op` (our kernels, through candle's autograd) against `reference` (f64).
fn check(
    name: &str,
    inputs: &[(Vec<f32>, Vec<usize>)],
    op: impl Fn(&[Tensor]) -> Tensor,
    reference: impl Fn(&[Vec<f64>]) -> Vec<f64>,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|(d, s)| {
            Var::from_tensor(&Tensor::from_vec(d.clone(), s.as_slice(), &Device::Cpu).unwrap()).unwrap()
        })
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = op(&ts);
    let yv = ops::host(&y).unwrap();
    let r = randn(yv.len(), 99);
    let rt = Tensor::from_vec(r.clone(), y.dims(), &Device::Cpu).unwrap();
    let grads = (&y * &rt).unwrap().sum_all().unwrap().backward().unwrap();

    let x64: Vec<Vec<f64>> = inputs.iter().map(|(d, _)| d.iter().map(|&v| v as f64).collect()).collect();
    let want = reference(&x64);
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in yv.iter().zip(&want).enumerate() {
        assert!((*a as f64 - b).abs() <= 1e-5 * scale, "{name}: forward[{i}] {a} vs f64 {b}");
    }
    let loss = |x: &[Vec<f64>]| reference(x).iter().zip(&r).map(|(y, r)| y * *r as f64).sum::<f64>();
    for (k, v) in vars.iter().enumerate() {
        let g =
            ops::host(grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}: no grad for input {k}")))
                .unwrap();
        let mut fd = vec![0f64; g.len()];
        let mut x = x64.clone();
        for (j, f) in fd.iter_mut().enumerate() {
            let h = 1e-4 * x64[k][j].abs().max(1.0);
            x[k][j] = x64[k][j] + h;
            let up = loss(&x);
            x[k][j] = x64[k][j] - h;
            let down = loss(&x);
            x[k][j] = x64[k][j];
            *f = (up - down) / (2.0 * h);
        }
        let gscale = fd.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (j, (a, f)) in g.iter().zip(&fd).enumerate() {
            assert!(
                (*a as f64 - f).abs() <= 1e-3 * gscale,
                "{name}: d/d input {k} [{j}]: kernel {a} vs finite difference {f}"
            );
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn linear_backward() {
    let (m, k, n) = (7, 5, 9);
    check(
        "linear",
        &[(randn(m * k, 1), vec![1, m, k]), (randn(n * k, 2), vec![n, k])],
        |t| ops::linear(&t[0], &t[1]).unwrap(),
        |x| {
            let mut y = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    y[i * n + j] = (0..k).map(|kk| x[0][i * k + kk] * x[1][j * k + kk]).sum();
                }
            }
            y
        },
    );
}

#[test]
fn rms_norm_backward() {
    let (rows, c, eps) = (5, 11, 1e-5);
    check(
        "rms_norm",
        &[(randn(rows * c, 3), vec![rows, c]), (randn(c, 4), vec![c])],
        |t| ops::rms_norm(&t[0], &t[1], eps).unwrap(),
        |x| {
            let mut y = vec![0f64; rows * c];
            for r in 0..rows {
                let row = &x[0][r * c..(r + 1) * c];
                let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / c as f64 + eps).sqrt();
                for i in 0..c {
                    y[r * c + i] = row[i] * inv * x[1][i];
                }
            }
            y
        },
    );
}

#[test]
fn rope_backward() {
    let (b, t, h, hd, theta) = (2, 5, 2, 6, 10000.0);
    let c = h * hd;
    check(
        "rope",
        &[(randn(b * t * c, 5), vec![b, t, c])],
        |x| ops::rope(&x[0], h, theta).unwrap(),
        |x| {
            let mut y = vec![0f64; b * t * c];
            for row in 0..b * t {
                let pos = (row % t) as f64;
                for head in 0..h {
                    for j in 0..hd / 2 {
                        let a = pos / theta.powf((2 * j) as f64 / hd as f64);
                        let o = row * c + head * hd;
                        let (x1, x2) = (x[0][o + j], x[0][o + j + hd / 2]);
                        y[o + j] = x1 * a.cos() - x2 * a.sin();
                        y[o + j + hd / 2] = x2 * a.cos() + x1 * a.sin();
                    }
                }
            }
            y
        },
    );
}

#[test]
fn causal_attention_backward() {
    let (b, t, h, hd) = (2, 7, 2, 3);
    let c = h * hd;
    let n = b * t * c;
    check(
        "attention",
        &[(randn(n, 6), vec![b, t, c]), (randn(n, 7), vec![b, t, c]), (randn(n, 8), vec![b, t, c])],
        |x| ops::causal_attention(&x[0], &x[1], &x[2], h).unwrap(),
        |x| {
            let (q, k, v) = (&x[0], &x[1], &x[2]);
            let mut y = vec![0f64; n];
            let scale = 1.0 / (hd as f64).sqrt();
            for bi in 0..b {
                for head in 0..h {
                    let at = |m: &Vec<f64>, i: usize, d: usize| m[(bi * t + i) * c + head * hd + d];
                    for i in 0..t {
                        let s: Vec<f64> = (0..=i)
                            .map(|j| (0..hd).map(|d| at(q, i, d) * at(k, j, d)).sum::<f64>() * scale)
                            .collect();
                        let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
                        let z: f64 = e.iter().sum();
                        for d in 0..hd {
                            y[(bi * t + i) * c + head * hd + d] =
                                (0..=i).map(|j| e[j] / z * at(v, j, d)).sum();
                        }
                    }
                }
            }
            y
        },
    );
}

#[test]
fn swiglu_backward() {
    let n = 13;
    check(
        "swiglu",
        &[(randn(n, 9).iter().map(|v| v * 4.0).collect(), vec![n]), (randn(n, 10), vec![n])],
        |x| ops::swiglu(&x[0], &x[1]).unwrap(),
        |x| (0..n).map(|i| x[0][i] * sigmoid(x[0][i]) * x[1][i]).collect(),
    );
}

#[test]
fn cross_entropy_backward() {
    let (rows, v) = (6, 10);
    let targets: Vec<u32> = (0..rows as u32).map(|i| (i * 7 + 3) % v as u32).collect();
    let tt = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
    check(
        "cross_entropy",
        &[(randn(rows * v, 11).iter().map(|x| x * 3.0).collect(), vec![rows, v])],
        |x| ops::cross_entropy(&x[0], &tt).unwrap(),
        |x| {
            let mut total = 0.0;
            for r in 0..rows {
                let row = &x[0][r * v..(r + 1) * v];
                let lse = row.iter().map(|z| z.exp()).sum::<f64>().ln();
                total += lse - row[targets[r] as usize];
            }
            vec![total / rows as f64]
        },
    );
    // The per-token losses agree with the mean.
    let logits = Tensor::from_vec(
        randn(rows * v, 11).iter().map(|x| x * 3.0).collect::<Vec<f32>>(),
        (rows, v),
        &Device::Cpu,
    )
    .unwrap();
    let per = ops::token_losses(&logits, &tt).unwrap();
    let mean = ops::cross_entropy(&logits, &tt).unwrap().to_scalar::<f32>().unwrap();
    assert!((per.iter().map(|&l| l as f64).sum::<f64>() / rows as f64 - mean as f64).abs() < 1e-6);
}
