#!/usr/bin/env python3
"""Check that a `tinylm release` directory's model/ is a working Hugging Face model from the
directory alone: `AutoModelForCausalLM.from_pretrained(RELEASE/model)` and
`AutoTokenizer.from_pretrained(RELEASE/model)` load it with no missing, unexpected or
mismatched weights, and greedy decoding equals `tinylm sample --temperature 0` on the final
checkpoint. Each intermediate checkpoint is loaded the same way.

    python3 scripts/check_release_hf.py RELEASE_DIR [PROMPT] [TOKENS]

Needs torch and transformers (pip install torch transformers); optional, never part of the
test suite (which checks the same layout against an independent Rust forward pass).
"""
import glob
import os
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def load(d):
    model, info = AutoModelForCausalLM.from_pretrained(d, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"{d}: loading problems: {bad}")
    return model.eval()


def main():
    rel = sys.argv[1]
    prompt = sys.argv[2] if len(sys.argv) > 2 else "Once upon a time"
    tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    mdir = os.path.join(rel, "model")
    tok = AutoTokenizer.from_pretrained(mdir)
    model = load(mdir)
    print(f"{mdir}: loaded {type(model).__name__}, {sum(p.numel() for p in model.parameters())} parameters, "
          f"no missing/unexpected/mismatched weights; tokenizer {type(tok).__name__}")
    for c in sorted(glob.glob(os.path.join(rel, "checkpoints", "step-*"))):
        load(c)
        print(f"{c}: loaded cleanly")
    ids = tok(prompt, return_tensors="pt").input_ids
    ctx = model.config.max_position_embeddings
    eos = model.config.eos_token_id
    with torch.no_grad():
        for _ in range(tokens):
            nxt = int(torch.argmax(model(ids[:, -ctx:]).logits[0, -1]))
            if nxt == eos:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    hf = tok.decode(ids[0])
    final = sorted(glob.glob(os.path.join(rel, "checkpoints", "step-*")))[-1]
    binary = os.environ.get("TINYLM", os.path.join(os.path.dirname(__file__), "..", "target", "release", "tinylm"))
    ours = subprocess.run(
        [binary, "sample", "--checkpoint", final, "--prompt", prompt, "--tokens", str(tokens), "--temperature", "0"],
        check=True, capture_output=True, text=True,
    ).stdout.rstrip("\n")
    print("transformers:", repr(hf))
    print("tinylm:      ", repr(ours))
    if hf == ours:
        print("MATCH: from_pretrained(model/) and tinylm decode the same text")
        return 0
    print("DIFFER")
    return 1


if __name__ == "__main__":
    sys.exit(main())
