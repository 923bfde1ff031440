#!/usr/bin/env bash
# The files source at scale, measured side by side in one run (docs/results.md, "Your own
# corpus"):
#   scripts/bench_prepare.sh [MB]        (default 1000)
# 1. Generates a corpus of about MB megabytes over many files: nested .txt, .jsonl and
#    .jsonl.gz, Zipf-distributed words from a 200,000-word vocabulary (scripts/gen_corpus.py).
# 2. `tinylm prepare` (vocab 8192) on it, and HF `tokenizers`' own Python API training the same
#    kind of tokenizer (byte-level BPE, vocab 8192, <|endoftext|>) on the same documents and
#    encoding every document (scripts/hf_prepare.py): wall time, MB/s, peak RSS.
# 3. Peak RSS of `tinylm prepare` on a quarter of the corpus against the whole.
# 4. Peak RSS of training (tiny model, 20 steps) on the whole corpus against a 10 MB one.
# Needs python3 with `tokenizers` (installed into a venv under the work directory if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-1000}
root=$(pwd)
cargo build --release -q
bin=$root/target/release/tinylm
work=${WORK:-$(mktemp -d)}
echo "work directory: $work"
py=python3
if ! $py -c 'import tokenizers' 2>/dev/null; then
  [ -x "$work/venv/bin/python" ] || { python3 -m venv "$work/venv" && "$work/venv/bin/pip" -q install tokenizers; }
  py=$work/venv/bin/python
fi

# Peak RSS (MB) and wall seconds of a command, from GNU time.
measure() { # label cmd...
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/time.txt" "$@" >"$work/$label.out" 2>"$work/$label.err" || {
    echo "$label failed:"; tail -5 "$work/$label.err"; exit 1; }
  read -r secs kb <"$work/time.txt"
  echo "$label $secs $((kb / 1024))"
}

gen() { # dir MB
  [ -d "$1" ] || $py scripts/gen_corpus.py "$1" "$2"
}
pin() { # dir (the README's command)
  (cd "$1" && find -L corpus -type f ! -path '*/.*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}
cfg() { # dir
  cat >"$1/bench.toml" <<EOF
[run]
name = "bench"
threads = 0
[data]
source = "files"
paths = ["corpus"]
sha256 = "$(pin "$1")"
val_fraction = 0.01
dir = "data"
[tokenizer]
vocab_size = 8192
[model]
n_layer = 2
n_head = 2
d_model = 64
d_ff = 128
[train]
steps = 20
batch_size = 8
context = 128
log_every = 10
[eval]
every = 0
[checkpoint]
every = 0
EOF
}

full=$work/full; quarter=$work/quarter; small=$work/small
gen "$full" "$mb"; gen "$quarter" $((mb / 4)); gen "$small" 10
for d in "$full" "$quarter" "$small"; do cfg "$d"; rm -rf "$d/data" "$d/checkpoints"; done
bytes=$(du -sb "$full/corpus" | cut -f1)
echo "corpus: $(find "$full/corpus" -type f | wc -l) files, $((bytes / 1000000)) MB as stored; CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(grep -o -m1 avx512f /proc/cpuinfo || echo AVX2)"

echo "label seconds peak_rss_MB"
(cd "$full" && measure tinylm-prepare-full "$bin" prepare --config bench.toml)
(cd "$full" && measure hf-tokenizers-full "$py" "$root/scripts/hf_prepare.py" corpus 8192 out)
(cd "$quarter" && measure tinylm-prepare-quarter "$bin" prepare --config bench.toml)
(cd "$small" && measure tinylm-prepare-10MB "$bin" prepare --config bench.toml)
(cd "$full" && measure tinylm-train-full "$bin" train --config bench.toml)
(cd "$small" && measure tinylm-train-10MB "$bin" train --config bench.toml)
grep -h "text bytes" "$work"/hf-tokenizers-full.out || true
