#!/usr/bin/env bash
# Cross-CPU check of the numerics contract (docs/numerics.md): trains the golden config of
# tests/numerics.rs natively (best path and scalar forced) and under qemu-x86_64 emulating
# Haswell (AVX2+FMA), SandyBridge (AVX, no FMA) and Nehalem (SSE4.2 only), then compares the
# SHA-256 of the final model.safetensors with the committed golden hash.
#   scripts/cross_cpu.sh            (needs qemu-user: apt-get install -y qemu-user)
# Each run builds its own data and tokenizer under its CPU, so the whole pipeline is compared.
# If an aarch64 build exists (target/aarch64-unknown-linux-gnu/release/tinylm, see
# docs/numerics.md) and qemu-aarch64 is installed, it is run too (NEON and scalar paths).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v qemu-x86_64 >/dev/null || { echo "qemu-x86_64 not found: apt-get install -y qemu-user" >&2; exit 2; }
cargo build --release --locked -q
bin=$PWD/target/release/tinylm
golden=$(sed -n 's/^const GOLDEN_SHA256: &str = "\([0-9a-f]*\)";/\1/p' tests/numerics.rs)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The config is the one in tests/numerics.rs (between `r#"` and `"#;`), so there is one source.
sed -n '/^const GOLDEN: &str = r#"/,/^"#;/p' tests/numerics.rs | sed '1d;$d' > "$work/golden.toml"

rows=()
arm=$PWD/target/aarch64-unknown-linux-gnu/release/tinylm
run() { # name kernels cpu ("native", "aarch64" or a qemu-x86_64 CPU model)
  local name=$1 kernels=$2 cpu=$3 path start end hash status bin=$bin
  local -a pre=()
  case $cpu in
    native) ;;
    aarch64) pre=(qemu-aarch64); bin=$arm ;;
    *) pre=(qemu-x86_64 -cpu "$cpu") ;;
  esac
  # Which path `auto` takes on this CPU: AVX2 if forcing it is accepted, else scalar.
  if [ "$kernels" = auto ]; then
    if [ "$cpu" = aarch64 ]; then path=neon
    elif TINYLM_KERNELS=avx2 "${pre[@]}" "$bin" prepare --config "$work/golden.toml" \
         --set "data.dir=$work/probe-$name" >/dev/null 2>&1; then path=avx2-fma; else path=scalar; fi
  else
    path=$kernels
  fi
  start=$(date +%s.%N)
  (cd "$work" && TINYLM_KERNELS=$kernels "${pre[@]}" "$bin" train --config golden.toml \
      --run-dir "runs/$name" --set "data.dir=data-$name" >"$name.log" 2>&1) || {
    echo "$name failed:"; tail -5 "$work/$name.log"; exit 2; }
  end=$(date +%s.%N)
  hash=$(sha256sum "$work/runs/$name/step-00000004/model.safetensors" | cut -d' ' -f1)
  status=$([ "$hash" = "$golden" ] && echo match || echo DIFFERS)
  rows+=("$name|$path|${hash:0:16}|$status|$(awk "BEGIN{printf \"%.1f\", $end - $start}")")
}
run native auto native
run native-scalar scalar native
for cpu in Haswell SandyBridge Nehalem; do
  run "qemu-$cpu" auto "$cpu"
done
if [ -x "$arm" ] && command -v qemu-aarch64 >/dev/null; then
  run qemu-aarch64 auto aarch64
  run qemu-aarch64-scalar scalar aarch64
fi

echo "golden sha256 (tests/numerics.rs): $golden"
echo "host CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
printf "| %-19s | %-8s | %-16s | %-7s | %7s |\n" run path "sha256 (16)" result seconds
printf "| %-19s | %-8s | %-16s | %-7s | %7s |\n" --- --- --- --- ---
fail=0
for r in "${rows[@]}"; do
  IFS='|' read -r name path hash status secs <<<"$r"
  printf "| %-19s | %-8s | %-16s | %-7s | %7s |\n" "$name" "$path" "$hash" "$status" "$secs"
  [ "$status" = match ] || fail=1
done
exit $fail
