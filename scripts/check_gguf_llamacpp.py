#!/usr/bin/env python3
"""Check `tinylm export --gguf` in llama.cpp itself: export a checkpoint, load the GGUF with
llama.cpp's Python bindings, and compare its greedy decode with `tinylm sample --temperature 0`.

    python3 scripts/check_gguf_llamacpp.py CHECKPOINT [PROMPT] [TOKENS] [TINYLM]

Needs llama.cpp's Python bindings: `pip install llama-cpp-py-sync` (prebuilt; its wheels need
glibc 2.38+) or `pip install llama-cpp-python` (builds llama.cpp from source). Optional, never
part of the test suite (tests/release.rs reads the file back with candle's GGUF reader).

The prompt plus TOKENS must fit the model's context: tinylm slides its window past it, and
llama.cpp does not, so beyond it the two legitimately differ.
"""
import os
import subprocess
import sys
import tempfile


def llama_greedy(path, prompt, n, n_ctx):
    try:
        from llama_cpp import Llama  # llama-cpp-python

        m = Llama(model_path=path, n_ctx=n_ctx, verbose=False, logits_all=False)
        out = m.create_completion(prompt, max_tokens=n, temperature=0.0, top_k=1, top_p=1.0,
                                  min_p=0.0, repeat_penalty=1.0)
        return prompt + out["choices"][0]["text"]
    except ImportError:
        from llama_cpp_py_sync import Llama  # llama-cpp-py-sync

        m = Llama(path, n_ctx=n_ctx, verbose=False)
        return prompt + m.generate(prompt, max_tokens=n, temperature=0.0, top_k=1, top_p=1.0,
                                   min_p=0.0, repeat_penalty=1.0, seed=1)


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    ckpt = sys.argv[1]
    prompt = sys.argv[2] if len(sys.argv) > 2 else "Once upon a time"
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    tinylm = sys.argv[4] if len(sys.argv) > 4 else "target/release/tinylm"
    with tempfile.TemporaryDirectory() as tmp:
        gguf = os.path.join(tmp, "model.gguf")
        subprocess.run([tinylm, "export", ckpt, "--gguf", gguf], check=True, capture_output=True)
        ours = subprocess.run(
            [tinylm, "sample", "--checkpoint", ckpt, "--prompt", prompt, "--tokens", str(n),
             "--temperature", "0"], check=True, capture_output=True, text=True).stdout
        ours = ours[:-1] if ours.endswith("\n") else ours
        theirs = llama_greedy(gguf, prompt, n, 4096)
    print(f"tinylm:    {ours!r}")
    print(f"llama.cpp: {theirs!r}")
    if ours != theirs:
        raise SystemExit("FAIL: llama.cpp's greedy decode differs")
    print(f"ok: the same {n}-token greedy decode")


if __name__ == "__main__":
    main()
