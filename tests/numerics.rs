//! The numerics contract end to end (docs/numerics.md): a fixed small run, trained by the real
//! binary, must give a committed SHA-256 of `model.safetensors` on every kernel path, every
//! CPU and every thread count. A mismatch means the numerics changed.

mod util;
use util::*;

/// tinylm-numerics-v1. Recorded from `cargo test --release` on x86_64 (AVX2+FMA and scalar
/// paths agree; scripts/cross_cpu.sh checks Haswell, SandyBridge and Nehalem under qemu).
const GOLDEN_SHA256: &str = "2563538b264f1dcf349e6ae522983867612f8812d8c71d73cdddca2c6fe19239";

/// Sizes chosen to be awkward for the kernels: d_ff 72 and vocab 300 are not multiples of the
/// 16-column panel, T = 80 is not a multiple of the 6-row tile, and the weight-gradient chains
/// run over B*T = 640 > 512 rows (several k-blocks).
const GOLDEN: &str = r#"
[run]
name = "golden"
seed = 11
threads = 1

[data]
source = "builtin"
builtin_seed = 3
builtin_bytes = 60000

[tokenizer]
vocab_size = 300

[model]
n_layer = 2
n_head = 2
d_model = 32
d_ff = 72

[optim]
lr = 5e-3
min_lr = 5e-4
warmup_steps = 2

[train]
steps = 4
batch_size = 8
context = 80
log_every = 1

[eval]
every = 0
batches = 1
sample_tokens = 4

[checkpoint]
every = 0
"#;

/// Train the golden config with `TINYLM_KERNELS=kernels` and `threads`; the final weights' hash.
fn golden_hash(d: &Dir, kernels: &str, threads: u32) -> String {
    std::fs::write(d.path("golden.toml"), GOLDEN).unwrap();
    let run = format!("runs/{kernels}-{threads}");
    let out = d
        .cmd(&[
            "train",
            "--config",
            "golden.toml",
            "--run-dir",
            &run,
            "--set",
            &format!("run.threads={threads}"),
        ])
        .env("TINYLM_KERNELS", kernels)
        .output()
        .unwrap();
    assert!(out.status.success(), "train failed:\n{}", stderr(&out));
    tinylm::util::sha256_file(&d.path(&run).join("step-00000004/model.safetensors")).unwrap()
}

fn assert_golden(got: &str, what: &str) {
    assert_eq!(
        got, GOLDEN_SHA256,
        "{what}: the golden run's model.safetensors hash changed. This means the numerics changed: \
         some floating-point operation of a training step now runs differently. If that was \
         intended, bump kernels::CONTRACT_VERSION, describe the change in docs/numerics.md and \
         update GOLDEN_SHA256 in tests/numerics.rs; if not, the change broke the contract."
    );
}

#[test]
fn golden_run_has_the_committed_hash_on_every_kernel_path() {
    let d = Dir::new("numerics-golden");
    assert_golden(&golden_hash(&d, "auto", 2), "best path, 2 threads");
    assert_golden(&golden_hash(&d, "scalar", 1), "scalar path forced");
    for path in tinylm::kernels::Path::all_available() {
        if path != tinylm::kernels::Path::Scalar {
            assert_golden(&golden_hash(&d, path.name(), 1), path.name());
        }
    }
}

#[test]
fn an_unknown_kernel_path_is_a_clean_error() {
    let d = Dir::new("numerics-badpath");
    let out = d.cmd(&["train", "--config", "tiny.toml"]).env("TINYLM_KERNELS", "sse9").output().unwrap();
    assert_one_line_error(&out, "TINYLM_KERNELS");
}
