#!/usr/bin/env bash
# Several ranks against one process on one machine (docs/performance.md, "Several processes"):
#   scripts/bench_mpi.sh [STEPS]
# For tiny and small (the peer's shapes) with train.grad_accum = 2: W = 1 x 2 threads against
# W = 2 ranks x 1 thread (median tokens/s of the steps after the first), the median time rank 0
# spends combining at W = 2 and W = 4 (oversubscribed, grad_accum = 4), and the combination
# alone (examples/combinebench) on 1 M and 14 M floats. Checks that every run ends on the same
# weights as the single process.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-30}
cargo build --release -q --features mpi
cargo build --release -q --features mpi --example combinebench
bin=$(pwd)/target/release/tinylm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp configs/tiny.toml "$work/"
cd "$work"
mpi="mpirun --allow-run-as-root --oversubscribe"
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
stat() { # run-dir key
  tail -n +2 "$1/metrics.jsonl" | python3 -c "import sys,json; [print(json.loads(l).get('$2',0)) for l in sys.stdin]" | median
}
for shape in tiny small; do
  case $shape in
    tiny) set_shape=() ;;
    small) set_shape=(--set model.n_layer=6 --set model.n_head=6 --set model.d_model=384 --set model.d_ff=1024
                      --set tokenizer.vocab_size=2048 --set train.batch_size=8 --set train.context=256) ;;
  esac
  common=(train --config tiny.toml "${set_shape[@]}" --set train.steps=$steps --set optim.schedule_steps=$steps
          --set eval.every=0 --set eval.batches=1 --set eval.sample_tokens=1 --set checkpoint.every=0)
  "$bin" "${common[@]}" --set train.grad_accum=2 --set run.threads=2 --run-dir "$shape-w1" >/dev/null 2>&1
  $mpi -np 2 "$bin" "${common[@]}" --set train.grad_accum=2 --set run.threads=1 --run-dir "$shape-w2" >/dev/null 2>&1
  $mpi -np 4 "$bin" "${common[@]}" --set train.grad_accum=4 --set run.threads=1 --run-dir "$shape-w4" >/dev/null 2>&1
  cmp "$shape-w1/step-$(printf %08d "$steps")/model.safetensors" "$shape-w2/step-$(printf %08d "$steps")/model.safetensors"
  w1=$(stat "$shape-w1" tokens_per_sec); w2=$(stat "$shape-w2" tokens_per_sec)
  echo "$shape: W=1x2 threads $w1 tok/s, W=2x1 thread $w2 tok/s, ratio $(python3 -c "print(round($w2/$w1, 2))")"
  echo "$shape: median combine s/step at W=2 $(stat "$shape-w2" combine_secs), at W=4 $(stat "$shape-w4" combine_secs)"
done
for n in 1000000 14000000; do
  for w in 2 4; do $mpi -np $w "$OLDPWD/target/release/examples/combinebench" $n | grep W=; done
done
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(grep -o -m1 avx512f /proc/cpuinfo || echo AVX2); load $(cut -d' ' -f1-3 /proc/loadavg)"
