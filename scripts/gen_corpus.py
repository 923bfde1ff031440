"""A synthetic corpus for scripts/bench_prepare.sh: DIR/corpus/ with about MB megabytes spread
over nested .txt, .jsonl and .jsonl.gz files. Words are drawn Zipf-like from a fixed 200,000-word
vocabulary, so the tokenizer trainer sees a realistic number of distinct words. Seeded: the
same arguments give the same bytes.

    python3 scripts/gen_corpus.py DIR MB
"""
import gzip
import json
import os
import random
import sys

out, mb = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
letters = "etaoinshrdlcumwfgypbvkjxqz"
weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1.5, 1, 0.8, 0.2, 0.2, 0.1, 0.1]
vocab = sorted({"".join(rng.choices(letters, weights, k=rng.randint(1, 10))) for _ in range(260_000)})[:200_000]
rng.shuffle(vocab)
zipf = [1.0 / (i + 10) for i in range(len(vocab))]
cum = []
acc = 0.0
for z in zipf:
    acc += z
    cum.append(acc)


def doc(nbytes):
    words = rng.choices(vocab, cum_weights=cum, k=max(8, nbytes // 6))
    lines = [" ".join(words[i:i + 14]) + ("." if i % 3 else ",") for i in range(0, len(words), 14)]
    return "\n".join(lines) + "\n"


target = mb * 1_000_000
written = 0
i = 0
while written < target:
    kind = i % 5
    sub = os.path.join(out, "corpus", f"part{i % 7}", f"shard{i % 3}")
    os.makedirs(sub, exist_ok=True)
    size = min(2_000_000, target - written)
    if kind == 0:
        path = os.path.join(sub, f"doc{i:05d}.txt")
        with open(path, "w") as f:
            f.write(doc(min(size, 400_000)))
    else:
        path = os.path.join(sub, f"docs{i:05d}.jsonl" + (".gz" if kind >= 3 else ""))
        opener = gzip.open if kind >= 3 else open
        n = 0
        with opener(path, "wt") as f:
            while n < size:
                t = doc(rng.randint(300, 6000))
                f.write(json.dumps({"id": n, "text": t}) + "\n")
                n += len(t)
    written += os.path.getsize(path) if kind < 3 else n
    i += 1
print(f"{out}: {i} files")
