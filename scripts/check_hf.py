#!/usr/bin/env python3
"""Check that a tinylm checkpoint is a working HF Llama: load it into transformers'
LlamaForCausalLM (strict: every tensor name and shape must match), greedy-decode from a prompt,
and compare with `tinylm sample --temperature 0` on the same checkpoint.

    python3 scripts/check_hf.py CHECKPOINT_DIR [PROMPT] [TOKENS]

Needs torch, transformers and safetensors (pip install torch transformers safetensors).
Optional: not part of the test suite, which must run offline without Python packages.
"""
import os
import subprocess
import sys
import tomllib

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def main():
    ckpt = sys.argv[1]
    prompt = sys.argv[2] if len(sys.argv) > 2 else "Once upon a time"
    tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 60
    with open(os.path.join(ckpt, "config.toml"), "rb") as f:
        cfg = tomllib.load(f)
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(ckpt, "tokenizer.json"))
    m = cfg["model"]
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=m["d_model"],
        intermediate_size=m["d_ff"],
        num_hidden_layers=m["n_layer"],
        num_attention_heads=m["n_head"],
        num_key_value_heads=m["n_head"],
        rms_norm_eps=m["norm_eps"],
        rope_theta=m["rope_theta"],
        max_position_embeddings=cfg["train"]["context"],
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
    )
    model = LlamaForCausalLM(config)
    model.load_state_dict(load_file(os.path.join(ckpt, "model.safetensors")), strict=True)
    model.eval()
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    with torch.no_grad():
        for _ in range(tokens):
            logits = model(ids[:, -cfg["train"]["context"]:]).logits[0, -1]
            nxt = int(torch.argmax(logits))
            if nxt == eot:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    hf = tok.decode(ids[0], skip_special_tokens=False)
    binary = os.path.join(os.path.dirname(__file__), "..", "target", "release", "tinylm")
    ours = subprocess.run(
        [binary, "sample", "--checkpoint", ckpt, "--prompt", prompt, "--tokens", str(tokens), "--temperature", "0"],
        check=True, capture_output=True, text=True,
    ).stdout.rstrip("\n")
    print("transformers:", repr(hf))
    print("tinylm:      ", repr(ours))
    if hf == ours:
        print("MATCH: transformers' LlamaForCausalLM and tinylm decode the same text")
        return 0
    print("DIFFER")
    return 1


if __name__ == "__main__":
    sys.exit(main())
