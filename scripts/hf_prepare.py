"""The peer of `tinylm prepare` for scripts/bench_prepare.sh: HF `tokenizers`' own Python API
trains the same kind of tokenizer (byte-level BPE, GPT-2 split, no prefix space, 256-byte
alphabet, <|endoftext|>) on the same documents, line by line, then encodes every document
(followed by <|endoftext|>) into uint16 token files. All cores (the library's default).

    python3 scripts/hf_prepare.py CORPUS_DIR VOCAB OUT_DIR
"""
import array
import gzip
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

root, vocab, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
EOT = "<|endoftext|>"
files = sorted(
    os.path.join(d, f)
    for d, dirs, fs in os.walk(root)
    for f in fs
    if not f.startswith(".")
)


def docs():
    for p in files:
        if p.endswith(".txt"):
            with open(p, encoding="utf-8") as f:
                yield f.read()
        else:
            opener = gzip.open if p.endswith(".gz") else open
            with opener(p, "rt", encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)["text"]


def lines():
    for d in docs():
        yield from d.splitlines(keepends=True)


tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=vocab,
    min_frequency=0,
    show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    special_tokens=[EOT],
)
tok.train_from_iterator(lines(), trainer=trainer)
eot = tok.token_to_id(EOT)
os.makedirs(out, exist_ok=True)
total = 0
with open(os.path.join(out, "all.bin"), "wb") as f:
    batch, size = [], 0
    for d in docs():
        batch.append(d)
        size += len(d)
        total += len(d.encode())
        if size >= 8_000_000:
            for e in tok.encode_batch(batch, add_special_tokens=False):
                array.array("H", e.ids + [eot]).tofile(f)
            batch, size = [], 0
    for e in tok.encode_batch(batch, add_special_tokens=False):
        array.array("H", e.ids + [eot]).tofile(f)
print(f"text bytes {total}")
