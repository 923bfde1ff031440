#!/usr/bin/env python3
"""Check `tinylm eval` against transformers on the same windows: for a Hugging Face model folder
(a release's model/, or any HF Llama folder tinylm reads) and a text file, compute the loss,
perplexity and bits per byte as transformers' `model(ids, labels=ids)` gives them over
non-overlapping windows of CONTEXT tokens, and compare with `tinylm eval --json`.

    python3 scripts/check_eval_hf.py MODEL_DIR TEXT [CONTEXT] [TINYLM]

Needs torch and transformers (pip install torch transformers); optional, never part of the test
suite (tests/release.rs checks the same numbers against an independent Rust forward pass).
"""
import json
import math
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    model_dir, text_path = sys.argv[1], sys.argv[2]
    tinylm = sys.argv[4] if len(sys.argv) > 4 else "target/release/tinylm"
    args = [tinylm, "eval", "--checkpoint", model_dir, "--text", text_path, "--json"]
    if len(sys.argv) > 3 and sys.argv[3]:
        args += ["--context", sys.argv[3]]
    ours = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
    t = ours["context"]

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    text = open(text_path, encoding="utf-8").read()
    ids = tok(text, add_special_tokens=False).input_ids
    nats, tokens, nbytes = 0.0, 0, 0
    with torch.no_grad():
        for i in range(0, len(ids), t):
            w = ids[i : i + t]
            if len(w) < 2:
                continue
            x = torch.tensor([w])
            out = model(x, labels=x)
            n = len(w) - 1
            nats += out.loss.double().item() * n
            tokens += n
            # A byte-level BPE token spells one character of its alphabet per byte.
            nbytes += sum(len(tok.convert_ids_to_tokens(j)) for j in w[1:])
    loss = nats / tokens
    theirs = {"tokens": tokens, "loss": loss, "perplexity": math.exp(loss), "bits_per_byte": nats / math.log(2) / nbytes}
    got = ours["files"][0]
    print(f"{'':14} {'tinylm':>14} {'transformers':>14}")
    worst = 0.0
    for k in ["tokens", "loss", "perplexity", "bits_per_byte"]:
        print(f"{k:14} {got[k]:>14.6f} {theirs[k]:>14.6f}")
        if k != "tokens":
            worst = max(worst, abs(got[k] - theirs[k]) / abs(theirs[k]))
    if got["tokens"] != tokens:
        raise SystemExit("FAIL: different token counts (the tokenizers disagree)")
    # fp32 forward in two implementations: equal to float rounding.
    if worst > 1e-4:
        raise SystemExit(f"FAIL: relative difference {worst:.2e}")
    print(f"ok: equal to float rounding (largest relative difference {worst:.2e})")


if __name__ == "__main__":
    main()
