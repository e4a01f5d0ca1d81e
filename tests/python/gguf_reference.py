#!/usr/bin/env python3
"""Independent reference forward of a llama-architecture GGUF file, in numpy, from the `gguf` package's own
dequantisation (no llama.cpp, no torch, nothing of Strata's).

usage: gguf_reference.py MODEL.gguf EXPECT_JSON

EXPECT_JSON holds what Strata computed after `strata import`: {"ids": [int], "logits": [[float]]}.
The reference works on the tensors exactly as the GGUF stores them: Q and K in llama.cpp's permuted row
order, so RoPE here is llama.cpp's interleaved ("normal") rotation of pairs (2i, 2i+1). Strata un-permutes
Q and K into Hugging Face's layout and rotates halves instead; equal logits check both the import and the model.
Passes when the max relative error (max |strata - ref| / max |ref|) is <= 1e-4.
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field(r, key):
    return r.fields[key].contents()


def main():
    path, expect_path = sys.argv[1], sys.argv[2]
    r = GGUFReader(path)
    if field(r, "general.architecture") != "llama":
        sys.exit("FAIL: not a llama GGUF")
    nl = field(r, "llama.block_count")
    nh = field(r, "llama.attention.head_count")
    nkv = field(r, "llama.attention.head_count_kv")
    d = field(r, "llama.embedding_length")
    eps = field(r, "llama.attention.layer_norm_rms_epsilon")
    theta = field(r, "llama.rope.freq_base")
    hd = d // nh
    w = {}
    for t in r.tensors:
        # GGUF lists dimensions innermost first; numpy wants them outermost first
        shape = tuple(int(x) for x in reversed(t.shape))
        w[t.name] = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(shape)

    with open(expect_path) as f:
        expect = json.load(f)
    ids = np.array(expect["ids"])
    n = len(ids)

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * g

    # interleaved RoPE on (heads, T, hd): pairs (2i, 2i+1) rotated by pos * theta^(-2i/hd)
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    ang = np.outer(np.arange(n), inv)  # (T, hd/2)
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x):
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x0 * sin + x1 * cos
        return out

    mask = np.triu(np.full((n, n), -np.inf), 1)
    x = w["token_embd.weight"][ids]
    for i in range(nl):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(n, nh, hd).transpose(1, 0, 2))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2))
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        k, v = np.repeat(k, nh // nkv, 0), np.repeat(v, nh // nkv, 0)
        a = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + (a @ v).transpose(1, 0, 2).reshape(n, nh * hd) @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        g = h @ w[p + "ffn_gate.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    x = rms(x, w["output_norm.weight"])
    head = w.get("output.weight", w["token_embd.weight"])
    ref = x @ head.T
    got = np.array(expect["logits"], dtype=np.float64)
    if got.shape != ref.shape:
        sys.exit(f"FAIL: logits shape {got.shape} != reference {ref.shape}")
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    same_argmax = (got.argmax(-1) == ref.argmax(-1)).mean()
    print(f"{'OK' if rel <= 1e-4 else 'FAIL'}: {n} positions, max relative error {rel:.3e}, argmax agreement {same_argmax:.3f}")
    sys.exit(0 if rel <= 1e-4 else 1)


if __name__ == "__main__":
    main()
