#!/usr/bin/env bash
# Train configs/shakespeare.toml on a local copy of TinyShakespeare (default: the shared copy
# beside the project) and report val loss, bits per byte and wall time.
#   scripts/shakespeare.sh [CORPUS] [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-../shared/data/tinyshakespeare.txt}
run=${2:-checkpoints/shakespeare}
cargo build --release --locked -q
start=$(date +%s)
target/release/tinylm train --config configs/shakespeare.toml --run-dir "$run" --set "data.path=$corpus"
end=$(date +%s)
echo "wall time: $((end - start)) s"
tail -n 1 "$run/metrics.jsonl" | python3 -c 'import json,sys; m=json.loads(sys.stdin.read()); print("final: step %d, val loss %.4f nats/token, %.4f bits/byte, ppl %.2f" % (m["step"], m["val_loss"], m["val_bpb"], m["val_ppl"]))'
