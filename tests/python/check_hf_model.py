#!/usr/bin/env python3
"""Independent check of a Strata model folder with the Python ecosystem (numpy, safetensors, tokenizers; no torch).

usage: check_hf_model.py MODEL_DIR EXPECT_JSON

EXPECT_JSON holds what Strata computed: {"text": str, "ids": [int], "logits": [[float]]} (logits of every position).
Checks, failing with a message on the first mismatch:
  1. config.json describes a LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM or
     Gemma3ForCausalLM;
  2. model.safetensors (or the shards of model.safetensors.index.json) holds exactly the Hugging Face tensor
     names with the shapes the config implies (biases for Qwen2 / attention_bias, Qwen3's q_norm and k_norm of
     head_dim), in f32 or f16, with
     transformers' {"format": "pt"} metadata;
  3. tokenizer.json, loaded by the `tokenizers` library, gives the same ids for the text as Strata;
  4. a numpy forward of the architecture (written here from the HF definitions: rope_scaling linear/llama3,
     sliding window, explicit head_dim, Qwen3's RMSNorm of each query and key head before RoPE, as
     Qwen3Attention applies q_norm/k_norm to the projections viewed as heads; Gemma 3 as
     Gemma3ForCausalLM: the embedding times sqrt(hidden_size), RMSNorm gains 1 + w, q/k norms, the attention
     output and the MLP output normalised before their residual adds and a norm before the MLP, GeGLU with
     the tanh GELU, scores scaled by query_pre_attn_scalar^-1/2, the sliding layers' RoPE base
     rope_local_base_freq) gives the same logits, relative error <= 1e-4.
"""
import json
import sys

import numpy as np
from safetensors import safe_open
from tokenizers import Tokenizer


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


ARCHS = ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM", "Gemma3ForCausalLM"]
MODEL_TYPES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
               "MistralForCausalLM": "mistral", "Gemma3ForCausalLM": "gemma3_text"}


def gemma(c):
    return c["architectures"] == ["Gemma3ForCausalLM"]


def biases(c):
    qwen2 = c["architectures"] == ["Qwen2ForCausalLM"]
    return qwen2 or c.get("attention_bias", False), (not qwen2) and c.get("attention_bias", False)


def inv_freq(c, hd, theta=None):
    inv = 1.0 / (theta or c["rope_theta"]) ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    if theta:  # Gemma 3's local layers: never scaled
        return inv
    rs = c.get("rope_scaling")
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        return inv / rs["factor"]
    if kind == "llama3":  # as transformers' _compute_llama3_parameters
        factor, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        return np.where(medium, smoothed, scaled)
    fail(f"rope_scaling {rs}")


def expected_shapes(c):
    d, v, f = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    nh = c["num_attention_heads"]
    nkv = c.get("num_key_value_heads") or nh
    hd = c.get("head_dim") or d // nh
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not c.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (v, d)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (nh * hd, d),
            p + "self_attn.k_proj.weight": (nkv * hd, d),
            p + "self_attn.v_proj.weight": (nkv * hd, d),
            p + "self_attn.o_proj.weight": (d, nh * hd),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        })
        qkv_bias, o_bias = biases(c)
        if qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (nh * hd,), p + "self_attn.k_proj.bias": (nkv * hd,), p + "self_attn.v_proj.bias": (nkv * hd,)})
        if o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (d,)
        if c["architectures"] == ["Qwen3ForCausalLM"] or gemma(c):
            shapes.update({p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)})
        if gemma(c):
            shapes.update({p + "pre_feedforward_layernorm.weight": (d,), p + "post_feedforward_layernorm.weight": (d,)})
    return shapes


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def layer_windows(c):
    """Each layer's attention window (None: full), as transformers' configuration classes decide it, written
    from their source rather than from Strata's reading: Qwen2Config sets
    `sliding_window = sliding_window if use_sliding_window else None` (defaults 4096 and False) and, without
    `layer_types`, makes layer i "sliding_attention" when the window is set and i >= max_window_layers (default
    28); MistralAttention uses config.sliding_window on every layer; Llama has no window."""
    n = c["num_hidden_layers"]
    arch = c["architectures"][0]
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):  # Qwen3Config decides as Qwen2Config does
        sw = c.get("sliding_window", 4096) if c.get("use_sliding_window", False) else None
        types = c.get("layer_types") or ["sliding_attention" if sw is not None and i >= c.get("max_window_layers", 28)
                                         else "full_attention" for i in range(n)]
        return [sw if ty == "sliding_attention" else None for ty in types]
    if arch == "MistralForCausalLM":
        return [c.get("sliding_window")] * n
    if arch == "Gemma3ForCausalLM":  # Gemma3TextConfig: layer_types, else every 6th layer in full
        pattern = c.get("sliding_window_pattern", c.get("_sliding_window_pattern", 6))
        types = c.get("layer_types") or ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)]
        return [c.get("sliding_window", 4096) if ty == "sliding_attention" else None for ty in types]
    return [None] * n


def forward(c, w, ids, x=None):
    """Reference Llama forward in float64 (HF LlamaForCausalLM semantics); from input embeddings x when
    given (a LLaVA model's, image features spliced in)."""
    d, nh = c["hidden_size"], c["num_attention_heads"]
    nkv = c.get("num_key_value_heads") or nh
    hd = c.get("head_dim") or d // nh
    eps, t = c["rms_norm_eps"], len(ids)
    g = gemma(c)
    if x is None:
        x = w["model.embed_tokens.weight"][ids]
        if g:  # Gemma3TextScaledWordEmbedding: times sqrt(hidden_size), a float32 buffer
            x = x * float(np.float32(d ** 0.5))
    shift = 1.0 if g else 0.0  # Gemma's RMSNorm: x_normed * (1 + w)

    def norm(v, name):
        return rms_norm(v, shift + w[name], eps)

    def rope(theta=None):
        ang = np.outer(np.arange(t, dtype=np.float64), inv_freq(c, hd, theta))
        return np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    causal = np.triu(np.full((t, t), -np.inf), 1)
    windows = layer_windows(c)
    scale = (c.get("query_pre_attn_scalar") or hd) ** -0.5 if g else hd ** -0.5

    def b(name):
        return w.get(name, 0.0)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        # Gemma 3's sliding layers turn with rope_local_base_freq
        cos, sin = rope(c.get("rope_local_base_freq", 10000.0) if g and windows[i] else None)
        h = norm(x, p + "input_layernorm.weight")
        q = (h @ w[p + "self_attn.q_proj.weight"].T + b(p + "self_attn.q_proj.bias")).reshape(t, nh, hd).transpose(1, 0, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T + b(p + "self_attn.k_proj.bias")).reshape(t, nkv, hd).transpose(1, 0, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T + b(p + "self_attn.v_proj.bias")).reshape(t, nkv, hd).transpose(1, 0, 2)
        if p + "self_attn.q_norm.weight" in w:  # Qwen3, Gemma 3: per head, before the rotation
            q = norm(q, p + "self_attn.q_norm.weight")
            k = norm(k, p + "self_attn.k_norm.weight")
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = np.repeat(k, nh // nkv, axis=0), np.repeat(v, nh // nkv, axis=0)
        mask = causal
        if windows[i]:
            mask = causal + np.tril(np.full((t, t), -np.inf), -windows[i])  # key j hidden when i - j >= window
        a = q @ k.transpose(0, 2, 1) * scale + mask
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        y = (a @ v).transpose(1, 0, 2).reshape(t, nh * hd)
        y = y @ w[p + "self_attn.o_proj.weight"].T + b(p + "self_attn.o_proj.bias")
        if g:  # Gemma3DecoderLayer: normed attention output, pre- and post-feedforward norms
            x = x + norm(y, p + "post_attention_layernorm.weight")
            h = norm(x, p + "pre_feedforward_layernorm.weight")
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            act = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate ** 3)))  # gelu_pytorch_tanh
            y = (act * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
            x = x + norm(y, p + "post_feedforward_layernorm.weight")
            continue
        x = x + y
        h = norm(x, p + "post_attention_layernorm.weight")
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    x = norm(x, "model.norm.weight")
    head = w["model.embed_tokens.weight"] if c.get("tie_word_embeddings", False) else w["lm_head.weight"]
    return x @ head.T


def main():
    model_dir, expect_path = sys.argv[1], sys.argv[2]
    with open(f"{model_dir}/config.json") as f:
        c = json.load(f)
    with open(expect_path) as f:
        expect = json.load(f)
    arch = c.get("architectures", [None])[0]
    if arch not in ARCHS or c.get("model_type") != MODEL_TYPES[arch]:
        fail(f"config.json: architectures={c.get('architectures')} model_type={c.get('model_type')}")

    want = expected_shapes(c)
    weights = {}
    try:
        with open(f"{model_dir}/model.safetensors.index.json") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    except FileNotFoundError:
        files = ["model.safetensors"]
    for file in files:
        with safe_open(f"{model_dir}/{file}", framework="numpy") as st:
            if (st.metadata() or {}).get("format") != "pt":
                fail(f"{file}: safetensors metadata {st.metadata()} lacks format=pt")
            for n in st.keys():
                t = st.get_tensor(n)
                if t.dtype not in (np.float32, np.float16) or tuple(t.shape) != want.get(n):
                    fail(f"{n}: {t.dtype} {t.shape}, expected float32/float16 {want.get(n)}")
                weights[n] = t.astype(np.float64)
    names = set(weights)
    if names != set(want):
        fail(f"tensor names differ: missing {sorted(set(want) - names)[:5]}, unexpected {sorted(names - set(want))[:5]}")

    tk = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    if tk.get_vocab_size(with_added_tokens=True) != c["vocab_size"]:
        fail(f"tokenizer vocab {tk.get_vocab_size(with_added_tokens=True)} != config vocab_size {c['vocab_size']}")
    ids = tk.encode(expect["text"], add_special_tokens=False).ids
    if ids != expect["ids"]:
        fail(f"tokenizers ids {ids} != strata ids {expect['ids']}")
    if tk.decode(ids) != expect["text"]:
        fail("tokenizers decode does not round-trip the text")

    ref = forward(c, weights, np.array(ids))
    got = np.array(expect["logits"], dtype=np.float64)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    if not rel <= 1e-4:
        fail(f"logits differ from the numpy reference: max relative error {rel:.3e}")
    print(f"OK: {len(names)} tensors, {len(ids)} ids, logits rel err {rel:.2e}")


if __name__ == "__main__":
    main()
