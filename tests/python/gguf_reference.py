#!/usr/bin/env python3
"""Independent reference forward of a llama-, qwen2- or qwen3-architecture GGUF file, in numpy, from the `gguf` package's own
dequantisation (no llama.cpp, no torch, nothing of Strata's).

usage: gguf_reference.py MODEL.gguf EXPECT_JSON...

Each EXPECT_JSON holds what Strata computed: {"ids": [int], "logits": [[float]], "what": str,
"max_rel_err": float, "min_argmax_agreement": float} (the bounds default to 1e-4 and 1.0).
The reference works on the tensors exactly as the GGUF stores them: Q and K in llama.cpp's permuted row
order, so RoPE here is llama.cpp's interleaved ("normal") rotation of pairs (2i, 2i+1). Strata un-permutes
Q and K into Hugging Face's layout and rotates halves instead; equal logits check both the import and the model.
A qwen2 file keeps Q and K unpermuted, has Q/K/V biases, and is rotated NEOX-style (i with i + hd/2); a qwen3
file is rotated so too, and RMS-normalises each query and key head before the rotation (attn_q_norm, attn_k_norm).
A gemma3 file, as llama.cpp's gemma3 graph runs it: the embedding times sqrt(n_embd); norm gains used as
stored (the converter wrote 1 + w); q/k norms; attention and MLP outputs normalised before their residual adds
(post_attention_norm, post_ffw_norm) and ffn_norm before the MLP; GeGLU with the tanh GELU; scores scaled by
key_length^-1/2; every 6th layer global (RoPE base rope.freq_base), the others within attention.sliding_window
and turned with base 10000.
Passes when, for every file, the max relative error (max |strata - ref| / max |ref|) is <= max_rel_err (f32
inference) and the argmax agrees at >= min_argmax_agreement of the positions. Inference on the
stored quantised weights multiplies them by 8-bit activations, as llama.cpp does. That rounding makes the
logits sensitive to the last bits of every activation: measured on SmolLM2 Q4_1, a numpy forward with 8-bit
activations moves by 4% (max relative) when the activation scales change by one part in a million, so this
check bounds the error (0.1) and the argmax agreement instead; the kernels themselves are checked exactly
against a reference in strata-model's unit tests.
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field(r, key):
    return r.fields[key].contents()


def main():
    argv = sys.argv[1:]
    path, expect_paths = argv[0], argv[1:]
    r = GGUFReader(path)
    arch = field(r, "general.architecture")
    if arch not in ("llama", "qwen2", "qwen3", "gemma3"):
        sys.exit(f"FAIL: architecture {arch} (llama, qwen2, qwen3 or gemma3 expected)")
    gemma = arch == "gemma3"
    window = field(r, "gemma3.attention.sliding_window") if gemma else None
    nl = field(r, f"{arch}.block_count")
    nh = field(r, f"{arch}.attention.head_count")
    nkv = field(r, f"{arch}.attention.head_count_kv")
    d = field(r, f"{arch}.embedding_length")
    eps = field(r, f"{arch}.attention.layer_norm_rms_epsilon")
    theta = field(r, f"{arch}.rope.freq_base")
    hd = field(r, f"{arch}.attention.key_length") if f"{arch}.attention.key_length" in r.fields else d // nh
    w = {}
    for t in r.tensors:
        # GGUF lists dimensions innermost first; numpy wants them outermost first
        shape = tuple(int(x) for x in reversed(t.shape))
        w[t.name] = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(shape)

    def check(expect):
        ids = np.array(expect["ids"])
        n = len(ids)

        def mm(x, name):
            y = x @ w[name].T
            bias = name.replace(".weight", ".bias")
            return y + w[bias] if bias in w else y

        def rms(x, g):
            return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * g

        # interleaved RoPE on (heads, T, hd): pairs (2i, 2i+1) rotated by pos * theta^(-2i/hd)
        def angles(base):
            ang = np.outer(np.arange(n), base ** (-np.arange(0, hd, 2) / hd))  # (T, hd/2)
            return np.cos(ang), np.sin(ang)

        def rope(x, cs):
            cos, sin = cs
            out = np.empty_like(x)
            if arch == "llama":
                x0, x1 = x[..., 0::2], x[..., 1::2]
                out[..., 0::2] = x0 * cos - x1 * sin
                out[..., 1::2] = x0 * sin + x1 * cos
            else:
                # qwen2: llama.cpp's NEOX rotation, element i paired with i + hd/2
                x0, x1 = x[..., : hd // 2], x[..., hd // 2 :]
                out[..., : hd // 2] = x0 * cos - x1 * sin
                out[..., hd // 2 :] = x0 * sin + x1 * cos
            return out

        mask = np.triu(np.full((n, n), -np.inf), 1)
        x = w["token_embd.weight"][ids]
        if gemma:
            x = x * np.sqrt(d)
        for i in range(nl):
            p = f"blk.{i}."
            local = gemma and (i + 1) % 6 != 0
            cs = angles(10000.0 if local else theta)
            h = rms(x, w[p + "attn_norm.weight"])
            q = mm(h, p + "attn_q.weight").reshape(n, nh, hd).transpose(1, 0, 2)
            k = mm(h, p + "attn_k.weight").reshape(n, nkv, hd).transpose(1, 0, 2)
            if p + "attn_q_norm.weight" in w:  # qwen3: each head normalised before the rotation
                q, k = rms(q, w[p + "attn_q_norm.weight"]), rms(k, w[p + "attn_k_norm.weight"])
            q, k = rope(q, cs), rope(k, cs)
            v = mm(h, p + "attn_v.weight").reshape(n, nkv, hd).transpose(1, 0, 2)
            k, v = np.repeat(k, nh // nkv, 0), np.repeat(v, nh // nkv, 0)
            m = mask + np.tril(np.full((n, n), -np.inf), -window) if local else mask
            a = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + m
            a = np.exp(a - a.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            y = mm((a @ v).transpose(1, 0, 2).reshape(n, nh * hd), p + "attn_output.weight")
            if gemma:
                x = x + rms(y, w[p + "post_attention_norm.weight"])
                h = rms(x, w[p + "ffn_norm.weight"])
                g = mm(h, p + "ffn_gate.weight")
                act = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
                x = x + rms(mm(act * mm(h, p + "ffn_up.weight"), p + "ffn_down.weight"), w[p + "post_ffw_norm.weight"])
                continue
            x = x + y
            h = rms(x, w[p + "ffn_norm.weight"])
            g = mm(h, p + "ffn_gate.weight")
            x = x + mm((g / (1 + np.exp(-g))) * mm(h, p + "ffn_up.weight"), p + "ffn_down.weight")
        x = rms(x, w["output_norm.weight"])
        ref = mm(x, "output.weight" if "output.weight" in w else "token_embd.weight")
        got = np.array(expect["logits"], dtype=np.float64)
        if got.shape != ref.shape:
            print(f"FAIL: logits shape {got.shape} != reference {ref.shape}")
            return False
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        same_argmax = (got.argmax(-1) == ref.argmax(-1)).mean()
        tol = expect.get("max_rel_err", 1e-4)
        agree = expect.get("min_argmax_agreement", 1.0)
        ok = rel <= tol and same_argmax >= agree
        print(f"{'OK' if ok else 'FAIL'}: {expect.get('what', '')}: {n} positions, max relative error {rel:.3e} (bound {tol:g}), "
              f"argmax agreement {same_argmax:.3f} (bound {agree:g})")
        return ok

    results = []
    for p in expect_paths:
        with open(p) as f:
            results.append(check(json.load(f)))
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
