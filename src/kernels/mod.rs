//! The numerics contract (docs/numerics.md): every floating-point operation of a training step,
//! in a fixed order, so the weights depend only on (config, data, code), never on the CPU, its
//! vector width, its cache sizes or the thread count.
//!
//! - `matmul`: each output element is ONE fused multiply-add chain over k in increasing order.
//!   It is the only code with run-time dispatch (AVX2+FMA, NEON or scalar `fma`); all paths
//!   give the same bits because a fused multiply-add is exactly rounded everywhere.
//! - `math`: exp, log, sigmoid and the fixed 8-lane reduction, from IEEE add, mul, div, sqrt
//!   and exponent-bit arithmetic only (no fma, so no dispatch is needed).
//! - `ops`: the fused ops of a Llama step (linear, RMSNorm, RoPE, causal attention, SwiGLU,
//!   cross-entropy) as candle custom ops with hand-written backward passes.
//! - `adamw`: the optimizer update and the global gradient norm.
//!
//! Nothing above this layer does floating-point arithmetic that reaches the weights.

pub mod adamw;
#[cfg(test)]
mod gradcheck;
pub mod layers;
pub mod math;
pub mod matmul;
pub mod ops;

use crate::error::{Error, Result};
use std::sync::OnceLock;

/// The version of the numerics contract. Bump it whenever any op's sequence of floating-point
/// operations changes (the golden hash in tests/numerics.rs then changes too).
pub const CONTRACT_VERSION: &str = "tinylm-numerics-v1";

/// The environment variable that forces a dispatch path: `auto` (default), `scalar`, `avx2`,
/// `avx512`, `neon`.
pub const ENV: &str = "TINYLM_KERNELS";

/// An implementation of the matmul microkernel. Every path computes the same bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Portable: one `fma` per step, exactly rounded (hardware where present, else libm's).
    Scalar,
    /// x86_64 AVX2 + FMA: 6 x 16 tile of C in ymm registers.
    Avx2,
    /// x86_64 AVX-512F: 6 x 32 tile of C in zmm registers (two 16-column panels at once).
    Avx512,
    /// aarch64 NEON: `vfmaq_f32`, 6 x 16 tile of C.
    Neon,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Scalar => "scalar",
            Path::Avx2 => "avx2-fma",
            Path::Avx512 => "avx512",
            Path::Neon => "neon",
        }
    }

    pub fn available(self) -> bool {
        match self {
            Path::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            // Its odd last panels run the AVX2 microkernel, so it needs AVX2 and FMA too (every
            // AVX-512 CPU has them).
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => is_x86_feature_detected!("avx512f") && Path::Avx2.available(),
            #[cfg(target_arch = "aarch64")]
            Path::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every path this machine can run, fastest last.
    pub fn all_available() -> Vec<Path> {
        [Path::Scalar, Path::Avx2, Path::Avx512, Path::Neon].into_iter().filter(|p| p.available()).collect()
    }

    fn best() -> Path {
        *Path::all_available().last().unwrap_or(&Path::Scalar)
    }
}

/// The path chosen from `TINYLM_KERNELS` (or the best available one).
pub fn choose(value: Option<&str>) -> Result<Path> {
    let want = match value.map(str::trim) {
        None | Some("") | Some("auto") => return Ok(Path::best()),
        Some("scalar") => Path::Scalar,
        Some("avx2") | Some("avx2-fma") => Path::Avx2,
        Some("avx512") => Path::Avx512,
        Some("neon") => Path::Neon,
        Some(other) => {
            return Err(Error::hint(
                format!("{ENV}={other:?} is not a kernel path"),
                format!("use one of auto, scalar, avx2, avx512, neon (this CPU has: {})", names()),
            ))
        }
    };
    if !want.available() {
        return Err(Error::hint(
            format!("{ENV} asks for the {} kernels, which this CPU cannot run", want.name()),
            format!("use one of: auto, {} (every path gives the same bits)", names()),
        ));
    }
    Ok(want)
}

fn names() -> String {
    Path::all_available().iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
}

static CHOSEN: OnceLock<Path> = OnceLock::new();

/// Read `TINYLM_KERNELS` once; an unknown or unavailable value is an error. `main` calls this
/// before any tensor work so a bad value fails cleanly.
pub fn configure() -> Result<Path> {
    let p = choose(std::env::var(ENV).ok().as_deref())?;
    Ok(*CHOSEN.get_or_init(|| p))
}

/// The path in use. If `configure` was never called, a bad `TINYLM_KERNELS` falls back to the
/// best path with a warning (the bits are the same on every path).
pub fn path() -> Path {
    *CHOSEN.get_or_init(|| match choose(std::env::var(ENV).ok().as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("warning: {e}; using {}", Path::best().name());
            Path::best()
        }
    })
}

/// `wide! { fn name(args) -> R { body } }` defines `name`, which runs `body` compiled for AVX2
/// when the AVX2 path is in use, for AVX-512F (16 lanes) on the AVX-512 path, else as built.
/// For the element-wise loops: wider vectors run the same IEEE operations per lane, and Rust
/// never contracts `a * b + c` into an fma (whatever the target features allow), so the bits
/// are the same either way (the golden test runs every path).
macro_rules! wide {
    ($(#[$doc:meta])* fn $name:ident ( $($arg:ident : $ty:ty),* $(,)? ) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        #[inline]
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            match $crate::kernels::path() {
                // SAFETY: a path is only chosen when the CPU has its features (`Path::available`).
                $crate::kernels::Path::Avx2 => return unsafe { avx2($($arg),*) },
                // SAFETY: as above.
                $crate::kernels::Path::Avx512 => return unsafe { avx512($($arg),*) },
                _ => {}
            }
            body($($arg),*)
        }
    };
}
pub(crate) use wide;

/// The dispatch path name, for the manifest: "avx512", "avx2-fma", "neon" or "scalar".
pub fn dispatch_path() -> &'static str {
    path().name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_accepts_the_known_paths_and_refuses_others() {
        assert_eq!(choose(Some("scalar")).unwrap(), Path::Scalar);
        assert_eq!(choose(None).unwrap(), Path::best());
        assert_eq!(choose(Some("auto")).unwrap(), Path::best());
        let e = choose(Some("sse9")).unwrap_err().to_string();
        assert!(e.contains("TINYLM_KERNELS") && e.contains("sse9"), "{e}");
        for p in [Path::Avx2, Path::Avx512, Path::Neon] {
            assert_eq!(choose(Some(p.name())).is_ok(), p.available());
        }
    }
}
