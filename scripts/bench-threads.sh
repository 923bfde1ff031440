#!/usr/bin/env bash
# Throughput of the tiny model under different thread settings, measured side by side in one
# run (this machine is shared and noisy: compare the ratios, not the absolute numbers).
#   scripts/bench-threads.sh [STEPS]
# Rows: run.threads = 1 and 2 with candle's element-wise pool pinned to 1 thread (tinylm's
# default), and run.threads = 2 with the element-wise pool at 2 threads (CANDLE_NUM_THREADS=2).
# It also checks that every setting gives byte-identical weights.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-60}
cargo build --release -q
bin=target/release/tinylm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(--config configs/tiny.toml --set "data.dir=$work/data" --set "train.steps=$steps"
        --set eval.every=0 --set checkpoint.every=0 --set eval.batches=1 --set eval.sample_tokens=1)
"$bin" prepare "${common[@]:0:4}" >/dev/null 2>&1
run() { # name, env..., -- args...
  local name=$1; shift
  local start end
  start=$(date +%s.%N)
  env "$@" "$bin" train "${common[@]}" --run-dir "$work/$name" "${extra[@]}" >/dev/null 2>&1
  end=$(date +%s.%N)
  echo "$name $(awk "BEGIN{print $end - $start}")"
}
extra=(--set run.threads=1); r1=$(run t1 X=1)
extra=(--set run.threads=2); r2=$(run t2 X=1)
extra=(--set run.threads=2); r3=$(run t2-spin CANDLE_NUM_THREADS=2)
base=$(echo "$r1" | cut -d' ' -f2)
printf "%-28s %8s %8s\n" setting seconds "vs 1 thread"
for r in "$r1" "$r2" "$r3"; do
  set -- $r
  printf "%-28s %8.1f %8.2fx\n" "$1" "$2" "$(awk "BEGIN{print $2 / $base}")"
done
final=$(printf 'step-%08d' "$steps")
if cmp -s "$work/t1/$final/model.safetensors" "$work/t2/$final/model.safetensors" &&
   cmp -s "$work/t1/$final/model.safetensors" "$work/t2-spin/$final/model.safetensors"; then
  echo "weights: byte-identical across all settings"
else
  echo "weights: DIFFER"; exit 1
fi
