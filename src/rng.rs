//! Every random number in tinylm comes from here. A stream is a pure function of
//! (config seed, purpose, key): the batch at step k, the init of parameter "x", the sampler of
//! an eval sample. Nothing depends on call order, wall clock or thread count, so resuming needs
//! no RNG state and evaluation can never perturb training (it draws from its own purposes).
//!
//! candle's CPU generator cannot be seeded, so `Tensor::randn` and friends are never used.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

pub type Stream = ChaCha8Rng;

/// A ChaCha8 stream seeded by SHA-256(seed, purpose, key).
pub fn stream(seed: u64, purpose: &str, key: &str) -> Stream {
    let mut h = Sha256::new();
    h.update(b"tinylm-rng-v1\0");
    h.update(seed.to_le_bytes());
    h.update(purpose.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

/// A standard normal draw by Box-Muller, written out so the numbers depend only on ChaCha8
/// (which is specified), not on a distribution crate's algorithm choices, and with libm's ln
/// and cos (pure Rust, the same bits on every platform) instead of the platform's.
pub fn normal(rng: &mut Stream) -> f32 {
    // u1 in (0, 1] so ln never sees 0.
    let u1: f64 = 1.0 - unit(rng);
    let u2: f64 = unit(rng);
    ((-2.0 * libm::log(u1)).sqrt() * libm::cos(std::f64::consts::TAU * u2)) as f32
}

/// A uniform integer in [0, n), n > 0: Canon's multiply-and-add range reduction with one
/// extra draw (bias below n / 2^128), written here so the draws never depend on a crate's
/// internals. It is the same algorithm as rand 0.9's `random_range(0..n)` for u64, so corpora
/// and batches drawn before this was written are unchanged (a test checks it).
///   (hi, lo) = x * n as 128 bits; if lo > 2^64 - n: hi += carry(lo + high64(x' * n)).
pub fn below(rng: &mut Stream, n: u64) -> u64 {
    assert!(n > 0, "below(0)");
    let wide = |x: u64| {
        let p = x as u128 * n as u128;
        ((p >> 64) as u64, p as u64)
    };
    let (mut hi, lo) = wide(rng.next_u64());
    if lo > n.wrapping_neg() {
        let (hi2, _) = wide(rng.next_u64());
        if lo.checked_add(hi2).is_none() {
            hi += 1;
        }
    }
    hi
}

/// A uniform float in [0, 1): the top 53 bits of one u64 draw times 2^-53 (exact).
pub fn unit(rng: &mut Stream) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_pure_functions_of_their_key() {
        let a: Vec<u64> = (0..4).map(|_| below(&mut stream(1, "batch", "7"), 1000)).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]), "same key gives the same first draw");
        let mut s1 = stream(1, "batch", "7");
        let mut s2 = stream(1, "batch", "8");
        let x: Vec<u64> = (0..8).map(|_| below(&mut s1, 1 << 40)).collect();
        let y: Vec<u64> = (0..8).map(|_| below(&mut s2, 1 << 40)).collect();
        assert_ne!(x, y);
        let mut s3 = stream(2, "batch", "7");
        let z: Vec<u64> = (0..8).map(|_| below(&mut s3, 1 << 40)).collect();
        assert_ne!(x, z);
    }

    #[test]
    fn below_and_unit_match_rand_0_9() {
        // Our reductions are rand 0.9's algorithms, so data drawn before they were written
        // (the builtin corpus, batch offsets) is unchanged.
        use rand::Rng;
        for n in [1u64, 2, 3, 7, 1000, (1 << 40) + 3, u64::MAX / 3 * 2, u64::MAX] {
            let (mut a, mut b) = (stream(4, "t", &n.to_string()), stream(4, "t", &n.to_string()));
            for _ in 0..2000 {
                assert_eq!(below(&mut a, n), b.random_range(0..n), "n = {n}");
            }
        }
        let (mut a, mut b) = (stream(5, "t", ""), stream(5, "t", ""));
        for _ in 0..1000 {
            assert_eq!(unit(&mut a).to_bits(), b.random::<f64>().to_bits());
        }
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut s = stream(0, "test", "normal");
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| normal(&mut s) as f64).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }
}
