"""A small random DINOv2 vision tower in transformers' layout (config.json + model.safetensors, the names and
shapes of transformers' Dinov2Model), a batch of pixels, and its outputs computed here with numpy alone: the
independent reference Strata's vision encoder is checked against.

Writes OUT/config.json, OUT/model.safetensors and OUT/reference.safetensors (pixel_values, hidden_state.{i}
for the embeddings and every block, last_hidden_state, pooler_output).

usage: vision_reference.py OUT [--swiglu] [--seed 3]"""
import argparse
import json
import math
import os

import numpy as np
from safetensors.numpy import save_file

erf = np.vectorize(math.erf)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--swiglu", action="store_true")
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    d, layers, heads, patch, size, ch, ratio, eps = 32, 2, 4, 4, 16, 3, 4.0, 1e-6
    inter = int(d * ratio)
    hidden = (int(inter * 2 / 3) + 7) // 8 * 8
    n = (size // patch) ** 2
    f = lambda *shape, s=0.2: (rng.standard_normal(shape) * s).astype(np.float64)
    w = {
        "embeddings.cls_token": f(1, 1, d),
        "embeddings.mask_token": f(1, d),
        "embeddings.position_embeddings": f(1, n + 1, d),
        "embeddings.patch_embeddings.projection.weight": f(d, ch, patch, patch),
        "embeddings.patch_embeddings.projection.bias": f(d),
        "layernorm.weight": 1 + f(d, s=0.1),
        "layernorm.bias": f(d, s=0.1),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}"
        for k in ["norm1", "norm2"]:
            w[f"{p}.{k}.weight"], w[f"{p}.{k}.bias"] = 1 + f(d, s=0.1), f(d, s=0.1)
        for k in ["query", "key", "value"]:
            w[f"{p}.attention.attention.{k}.weight"], w[f"{p}.attention.attention.{k}.bias"] = f(d, d), f(d)
        w[f"{p}.attention.output.dense.weight"], w[f"{p}.attention.output.dense.bias"] = f(d, d), f(d)
        w[f"{p}.layer_scale1.lambda1"], w[f"{p}.layer_scale2.lambda1"] = 0.5 + f(d, s=0.1), 0.5 + f(d, s=0.1)
        if a.swiglu:
            w[f"{p}.mlp.weights_in.weight"], w[f"{p}.mlp.weights_in.bias"] = f(2 * hidden, d), f(2 * hidden)
            w[f"{p}.mlp.weights_out.weight"], w[f"{p}.mlp.weights_out.bias"] = f(d, hidden), f(d)
        else:
            w[f"{p}.mlp.fc1.weight"], w[f"{p}.mlp.fc1.bias"] = f(inter, d), f(inter)
            w[f"{p}.mlp.fc2.weight"], w[f"{p}.mlp.fc2.bias"] = f(d, inter), f(d)
    w = {k: v.astype(np.float32) for k, v in w.items()}
    pixels = rng.standard_normal((2, ch, size, size)).astype(np.float32)

    # the forward, in float64
    W = {k: v.astype(np.float64) for k, v in w.items()}
    x = pixels.astype(np.float64)
    b, g = x.shape[0], size // patch
    tiles = x.reshape(b, ch, g, patch, g, patch).transpose(0, 2, 4, 1, 3, 5).reshape(b, n, ch * patch * patch)
    emb = tiles @ W["embeddings.patch_embeddings.projection.weight"].reshape(d, -1).T \
        + W["embeddings.patch_embeddings.projection.bias"]
    h = np.concatenate([np.repeat(W["embeddings.cls_token"], b, 0), emb], 1) + W["embeddings.position_embeddings"]
    states = [h]
    lin = lambda x, k: x @ W[k + ".weight"].T + W[k + ".bias"]
    hd = d // heads
    for i in range(layers):
        p = f"encoder.layer.{i}"
        t = layer_norm(h, W[f"{p}.norm1.weight"], W[f"{p}.norm1.bias"], eps)
        split = lambda y: y.reshape(b, n + 1, heads, hd).transpose(0, 2, 1, 3)
        q, k, v = (split(lin(t, f"{p}.attention.attention.{x}")) for x in ["query", "key", "value"])
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        y = (s @ v).transpose(0, 2, 1, 3).reshape(b, n + 1, d)
        h = h + lin(y, f"{p}.attention.output.dense") * W[f"{p}.layer_scale1.lambda1"]
        t = layer_norm(h, W[f"{p}.norm2.weight"], W[f"{p}.norm2.bias"], eps)
        if a.swiglu:
            both = lin(t, f"{p}.mlp.weights_in")
            x1, x2 = both[..., :hidden], both[..., hidden:]
            m = lin(x1 / (1 + np.exp(-x1)) * x2, f"{p}.mlp.weights_out")
        else:
            u = lin(t, f"{p}.mlp.fc1")
            m = lin(0.5 * u * (1 + erf(u / math.sqrt(2))), f"{p}.mlp.fc2")
        h = h + m * W[f"{p}.layer_scale2.lambda1"]
        states.append(h)
    last = layer_norm(h, W["layernorm.weight"], W["layernorm.bias"], eps)

    os.makedirs(a.out, exist_ok=True)
    cfg = {"architectures": ["Dinov2Model"], "model_type": "dinov2", "hidden_size": d, "num_hidden_layers": layers,
           "num_attention_heads": heads, "mlp_ratio": ratio, "hidden_act": "gelu", "layer_norm_eps": eps,
           "image_size": size, "patch_size": patch, "num_channels": ch, "qkv_bias": True,
           "layerscale_value": 1.0, "use_swiglu_ffn": a.swiglu, "torch_dtype": "float32"}
    with open(os.path.join(a.out, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
    save_file(w, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    ref = {"pixel_values": pixels, "last_hidden_state": last.astype(np.float32),
           "pooler_output": last[:, 0].astype(np.float32)}
    for i, s in enumerate(states):
        ref[f"hidden_state.{i}"] = s.astype(np.float32)
    save_file(ref, os.path.join(a.out, "reference.safetensors"))


if __name__ == "__main__":
    main()
