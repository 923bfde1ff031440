#!/usr/bin/env bash
# The third party's path, end to end: train a short tiny.toml run with a clean build, release
# it, copy the release elsewhere, build the release's own source/, and verify and audit the
# release with that binary. Needs a clean work tree (the release refuses a dirty build).
#   scripts/release_roundtrip.sh [WORK_DIR]
# To save the ~3 min dependency build, the copy builds into a copy of target/ (a cache only:
# source/ alone determines the binary).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${1:-$(mktemp -d)}
cargo build --release --locked -q
bin=$repo/target/release/tinylm
rm -rf "$work/run" "$work/rel" "$work/copy" "$work/target"
mkdir -p "$work"
cd "$work"
"$bin" train --config "$repo/configs/tiny.toml" --run-dir run --set train.steps=60 \
  --set checkpoint.every=20 --set eval.every=20 --set data.dir="$work/data" 2>&1 | tail -1
"$bin" release run rel --repo "$repo" | tail -2
cp -a rel copy
cp -a "$repo/target" "$work/target"
(cd copy/source && CARGO_TARGET_DIR="$work/target" cargo build --release --locked -q)
cd copy
"$work/target/release/tinylm" verify . | tail -1
"$work/target/release/tinylm" audit . | tail -1
sha256sum -c SHA256SUMS --quiet && echo "sha256sum -c SHA256SUMS: ok"
