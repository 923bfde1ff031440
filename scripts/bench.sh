#!/usr/bin/env bash
# Training throughput of tiny.toml under different runtime settings, measured side by side in
# one run (this machine is shared and noisy: compare the ratios, not the absolute numbers).
#   scripts/bench.sh [STEPS]
# Rows:
#   default       tinylm's settings: run.threads = all cores, candle's element-wise pool pinned
#                 to 1 thread, glibc malloc tuned to keep freed memory (src/alloc.rs)
#   threads=1     the same with run.threads = 1
#   spin-pool     the element-wise pool unpinned (CANDLE_NUM_THREADS = cores)
#   glibc-malloc  glibc's default malloc behaviour (TINYLM_DEFAULT_MALLOC=1)
# It also checks that every setting gives byte-identical weights.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-60}
cores=$(nproc)
cargo build --release -q
bin=target/release/tinylm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(--config configs/tiny.toml --set "data.dir=$work/data" --set "train.steps=$steps"
        --set eval.every=0 --set checkpoint.every=0 --set eval.batches=1 --set eval.sample_tokens=1)
"$bin" prepare --config configs/tiny.toml --set "data.dir=$work/data" >/dev/null 2>&1
rows=()
run() { # name threads env...
  local name=$1 threads=$2; shift 2
  local start end
  start=$(date +%s.%N)
  env "$@" "$bin" train "${common[@]}" --set "run.threads=$threads" --run-dir "$work/$name" >/dev/null 2>&1
  end=$(date +%s.%N)
  rows+=("$name $(awk "BEGIN{print $end - $start}")")
}
run default 0 X=1
run threads=1 1 X=1
run spin-pool 0 "CANDLE_NUM_THREADS=$cores"
run glibc-malloc 0 TINYLM_DEFAULT_MALLOC=1
base=$(echo "${rows[0]}" | cut -d' ' -f2)
printf "%-14s %8s %12s\n" setting seconds "vs default"
for r in "${rows[@]}"; do
  set -- $r
  printf "%-14s %8.1f %11.2fx\n" "$1" "$2" "$(awk "BEGIN{print $2 / $base}")"
done
final=$(printf 'step-%08d' "$steps")
for name in threads=1 spin-pool glibc-malloc; do
  if ! cmp -s "$work/default/$final/model.safetensors" "$work/$name/$final/model.safetensors"; then
    echo "weights: $name DIFFERS from default"; exit 1
  fi
done
echo "weights: byte-identical across all settings"
