#!/usr/bin/env python3
"""Tokenizer parity: the tokenizer.json that `strata import` rebuilds from a GGUF against llama.cpp's own
tokenizer reading the same GGUF (llama-tokenize), on a varied text set (English, Chinese, code, digits, emoji,
whitespace runs, special tokens). Needs a llama.cpp build (bench/decode.py makes one in target/llama.cpp, or
set LLAMA_TOKENIZE) and the Python `tokenizers` package (the test venv: scripts/python-venv.sh).

usage: bench/tokenizer_parity.py MODEL.gguf MODEL_DIR   (MODEL_DIR: the imported HF folder)
"""
import json
import os
import subprocess
import sys

from tokenizers import Tokenizer

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "The liver measures 14.2 cm; the spleen 11.8 cm. No focal lesion.",
    "超声检查显示肝脏大小正常，未见明显占位。",
    "def f(x):\n    return x ** 2  # square\n\n\tprint(f(3))",
    "1234567890 3.14159 1,000,000 2026-11-28",
    "emoji 😀🚀👩‍⚕️ and accents: café naïve Ångström",
    "   leading spaces,\n\n\nnewlines   and\t\ttabs   ",
    "<|im_start|>user\nIs the liver enlarged?<|im_end|>\n<|im_start|>assistant\n",
    "don't won't it's we're I'm you'll they'd",
    "",
]


def main():
    gguf, model_dir = sys.argv[1], sys.argv[2]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exe = os.environ.get("LLAMA_TOKENIZE", os.path.join(root, "target", "llama.cpp", "src", "build", "bin", "llama-tokenize"))
    tk = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    same = 0
    for text in TEXTS:
        theirs = []  # llama-tokenize refuses an empty prompt; the empty text has no tokens
        if text:
            out = subprocess.run([exe, "-m", gguf, "-p", text, "--ids", "--log-disable"], check=True, text=True, capture_output=True).stdout
            theirs = json.loads(out.strip().splitlines()[-1])
        # special tokens as each adds them by default (llama-tokenize: BOS where the vocabulary asks for it)
        ours = tk.encode(text, add_special_tokens=bool(text)).ids
        ok = ours == theirs
        same += ok
        print(f"{'same' if ok else 'DIFF'}  {len(ours):>3} ids  {text[:40]!r}")
        if not ok:
            print(f"      strata    {ours}\n      llama.cpp {theirs}")
    print(f"{same}/{len(TEXTS)} texts tokenized identically")
    sys.exit(0 if same == len(TEXTS) else 1)


if __name__ == "__main__":
    main()
