//! exp, log and reductions from IEEE-754 add, sub, mul, div and exponent-bit arithmetic only,
//! each in one fixed sequence. No fused multiply-add (Rust never contracts `a * b + c`), no
//! table, no platform libm: the same bits on every CPU, whatever the vector width.
//!
//! The polynomials are Cephes' single-precision `expf`/`logf` (S. Moshier), about 1 ulp.

/// Split of ln 2 for Cody-Waite range reduction: `LN2_HI` has few mantissa bits, so `n * LN2_HI`
/// is exact for |n| < 256.
const LN2_HI: f32 = 0.693_359_4; // 0.693359375 exactly
const LN2_LO: f32 = -2.121_944_4e-4;
const LOG2E: f32 = std::f32::consts::LOG2_E;

/// e^x. Range reduction x = n ln2 + r with n = x log2(e) rounded to nearest-even by the
/// 1.5 * 2^23 trick, a degree-7 polynomial in r, then scaling by 2^n through the exponent bits
/// (in two halves, so 2^n never overflows early). Branch-free but for the final selects, so
/// the compiler can vectorize loops over it (per lane, the same IEEE ops).
#[inline]
pub fn exp(x: f32) -> f32 {
    const HI: f32 = 88.722_84;
    const LO: f32 = -103.972_08;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let xc = x.clamp(LO, HI);
    let t = xc * LOG2E + ROUND;
    let nf = t - ROUND;
    // n = nf as an integer, read from t's mantissa: t is in [2^23, 2^24), where the ulp is 1,
    // so t's bits minus ROUND's bits are exactly nf. The same n as `nf as i32`, but integer
    // lanes instead of a saturating float-to-int conversion that does not vectorize.
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = (xc - nf * LN2_HI) - nf * LN2_LO;
    let z = r * r;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes' 5.0000001201e-1, which is 0.5 in f32
    let y = (p * z + r) + 1.0;
    // 2^n = 2^a * 2^b with a = n >> 1, b = n - a; both factors are normal floats for n in
    // [-151, 128], and each multiply is exact unless the result is subnormal (then it rounds
    // once, the same way everywhere).
    let a = n >> 1;
    let b = n - a;
    let e = y * pow2(a) * pow2(b);
    if x.is_nan() {
        x
    } else if x > HI {
        f32::INFINITY
    } else if x < LO {
        0.0
    } else {
        e
    }
}

/// 2^n for n in [-126, 127], from the exponent bits.
#[inline]
fn pow2(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// Natural log. x = m 2^e with m in [sqrt(1/2), sqrt 2), a degree-9 polynomial in m - 1,
/// then e ln2 added in two parts.
#[inline]
pub fn ln(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    if x == 0.0 {
        return f32::NEG_INFINITY;
    }
    if x.is_infinite() {
        return x;
    }
    // Subnormals: scale into the normal range first (exact).
    let (x, bias) = if x < f32::MIN_POSITIVE { (x * 16_777_216.0, -24) } else { (x, 0) };
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126 + bias;
    // m in [0.5, 1)
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    if m < SQRT_HALF {
        e -= 1;
        m = (m + m) - 1.0;
    } else {
        m -= 1.0;
    }
    let z = m * m;
    let mut y = 7.037_683_6e-2f32;
    y = y * m - 1.151_461e-1;
    y = y * m + 1.167_699_9e-1;
    y = y * m - 1.242_014_1e-1;
    y = y * m + 1.424_932_3e-1;
    y = y * m - 1.666_805_8e-1;
    y = y * m + 2.000_071_4e-1;
    y = y * m - 2.499_999_4e-1;
    y = y * m + 3.333_333e-1;
    y = (y * m) * z;
    let ef = e as f32;
    y += ef * LN2_LO;
    y += -0.5 * z;
    let r = m + y;
    r + ef * LN2_HI
}

/// 1 / (1 + e^-x).
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// The contract's reduction: 8 partial sums, lane l adding the elements i = l (mod 8) in
/// increasing i, then combined as ((p0+p1)+(p2+p3))+((p4+p5)+(p6+p7)). The order is fixed, so
/// the result never depends on the vector width the compiler picks.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    // sum8's order, written over fixed-size chunks so that it compiles to one vector add per
    // eight elements.
    let mut p = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for ch in &mut chunks {
        for (pl, &x) in p.iter_mut().zip(ch) {
            *pl += x;
        }
    }
    for (pl, &x) in p.iter_mut().zip(chunks.remainder()) {
        *pl += x;
    }
    ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]))
}

/// `sum` of `f(i)` for i in 0..n.
#[inline(always)]
pub fn sum_map(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    sum8(n, f)
}

/// The fixed 8-lane order, for f32 and f64 alike: lane l takes i = l, l+8, ... in turn, then
/// ((p0+p1)+(p2+p3))+((p4+p5)+(p6+p7)).
#[inline(always)]
fn sum8<T: Copy + Default + std::ops::Add<Output = T>>(n: usize, f: impl Fn(usize) -> T) -> T {
    let mut p = [T::default(); 8];
    let full = n / 8 * 8;
    let mut i = 0;
    while i < full {
        for (l, pl) in p.iter_mut().enumerate() {
            *pl = *pl + f(i + l);
        }
        i += 8;
    }
    for (l, pl) in p.iter_mut().enumerate().take(n - full) {
        *pl = *pl + f(full + l);
    }
    ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]))
}

/// Dot product of two slices under the same 8-lane order (products rounded, then added).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    sum_map(a.len(), |i| a[i] * b[i])
}

/// The same 8-lane reduction in f64 (for the global gradient norm and loss totals).
pub fn sum_map_f64(n: usize, f: impl Fn(usize) -> f64) -> f64 {
    sum8(n, f)
}

/// Maximum (exact in any order; NaN-propagating so a diverged run is not hidden): the first
/// NaN if there is one, else the first element that no later one exceeds.
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    // Eight lanes, so the loop vectorizes. Only +0 and -0 compare equal with different bits,
    // so for a maximum that is not zero every order returns the same bits; a zero maximum or
    // a NaN or infinity anywhere (x * 0 is then NaN) takes the sequential scan.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut poison = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for ch in &mut chunks {
        for ((m, p), &x) in lanes.iter_mut().zip(poison.iter_mut()).zip(ch) {
            *m = if x > *m { x } else { *m };
            *p += x * 0.0;
        }
    }
    for ((m, p), &x) in lanes.iter_mut().zip(poison.iter_mut()).zip(chunks.remainder()) {
        *m = if x > *m { x } else { *m };
        *p += x * 0.0;
    }
    let m = lanes.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    if m == 0.0 || poison.iter().any(|p| p.is_nan()) {
        return max_seq(xs);
    }
    m
}

fn max_seq(xs: &[f32]) -> f32 {
    let mut m = f32::NEG_INFINITY;
    for &x in xs {
        if x.is_nan() {
            return x;
        }
        if x > m {
            m = x;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_correctly_rounded_value() {
        let mut worst = 0;
        let mut x = -103.0f32;
        while x < 88.7 {
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp(x), want));
            x += 0.000_731;
        }
        assert!(worst <= 2, "worst {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn exp_reads_n_from_the_bits_exactly_as_a_float_to_int_cast_would() {
        // Every 101st bit pattern of both signs: n from the mantissa equals `nf as i32`.
        let round = 12_582_912.0f32;
        for bits in (0..u32::MAX).step_by(101) {
            let x = f32::from_bits(bits);
            let xc = x.clamp(-103.972_08, 88.722_84);
            if xc.is_nan() {
                continue;
            }
            let t = xc * LOG2E + round;
            let cast = (t - round) as i32;
            let from_bits = (t.to_bits() as i32).wrapping_sub(round.to_bits() as i32);
            assert_eq!(cast, from_bits, "x = {x:e}");
        }
    }

    #[test]
    fn max_and_sum_agree_with_the_sequential_definitions() {
        let n0 = f32::from_bits(0x8000_0000);
        let cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![1.0],
            vec![n0, 0.0, n0],
            vec![0.0, n0, -1.0, -3.0, 0.0, n0, -2.0, -5.0, n0],
            vec![-1.0, f32::NAN, 7.0, f32::from_bits(0x7fc0_0001)],
            (0..37).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect(),
            (0..20).map(|i| if i == 13 { f32::INFINITY } else { i as f32 }).collect(),
            (0..20).map(|i| -(i as f32) - 1.0).collect(),
        ];
        for xs in &cases {
            assert_eq!(max(xs).to_bits(), max_seq(xs).to_bits(), "{xs:?}");
            // NaN payloads are not specified by Rust (LLVM may swap an add's operands), so a
            // NaN only has to be a NaN.
            let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
            assert!(same(sum(xs), sum_map(xs.len(), |i| xs[i])), "{xs:?}");
        }
    }

    #[test]
    fn ln_is_within_two_ulp_of_the_correctly_rounded_value() {
        let mut worst = 0;
        let mut x = 1e-30f32;
        while x < 1e30 {
            let want = (x as f64).ln() as f32;
            worst = worst.max(ulps(ln(x), want));
            x *= 1.000_93;
        }
        assert!(worst <= 2, "worst {worst} ulp");
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.0), f32::NEG_INFINITY);
        assert!(ln(-1.0).is_nan());
        let sub = 1e-40f32;
        assert!(ulps(ln(sub), (sub as f64).ln() as f32) <= 2);
    }

    #[test]
    fn sum_has_the_documented_order() {
        // 11 elements: lanes 0..2 get two elements, lanes 3..7 one.
        let xs: Vec<f32> = (0..11).map(|i| 1.0 + i as f32 * 1e-3).collect();
        let mut p = [0f32; 8];
        for (i, x) in xs.iter().enumerate() {
            p[i % 8] += x;
        }
        let want = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
        assert_eq!(sum(&xs).to_bits(), want.to_bits());
        assert_eq!(sum(&[]), 0.0);
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
    }
}
