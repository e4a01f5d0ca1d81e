"""A small random vision tower in transformers' layout (config.json + model.safetensors with the names and
shapes of transformers' Dinov2Model, CLIPVisionModel or SiglipVisionModel), a batch of pixels, and its outputs
computed here with numpy alone: the independent reference Strata's vision encoder is checked against.

Writes OUT/config.json, OUT/model.safetensors and OUT/reference.safetensors (pixel_values, hidden_state.{i}
for the embeddings and every block, last_hidden_state, pooler_output).

With --pixels H W the pixels are of another size than the tower's: the position embeddings are resampled
bicubically as PyTorch's interpolate(mode="bicubic", align_corners=False) does (Keys' kernel, a = -0.75,
half-pixel centres, edges repeated), written out here in float64.

usage: vision_reference.py OUT [--family dinov2|clip|siglip] [--swiglu] [--no-head] [--seed 3] [--pixels H W]"""
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


def forward_blocks(W, h, fam, layers, heads, eps, hidden):
    """Every block on h; the list of states after each."""
    b, t, d = h.shape
    hd = d // heads
    lin = lambda x, k: x @ W[k + ".weight"].T + W[k + ".bias"]
    if fam == "dinov2":
        L, n1, n2, qkvo = "encoder.layer", "norm1", "norm2", ["attention.attention.query",
                                                          "attention.attention.key",
                                                          "attention.attention.value",
                                                          "attention.output.dense"]
    else:
        L, n1, n2, qkvo = "encoder.layers", "layer_norm1", "layer_norm2", ["self_attn.q_proj", "self_attn.k_proj",
                                                                      "self_attn.v_proj", "self_attn.out_proj"]
    states = []
    for i in range(layers):
        p = f"{L}.{i}"
        x = layer_norm(h, W[f"{p}.{n1}.weight"], W[f"{p}.{n1}.bias"], eps)
        y = attend(x, x, [lambda z, k=k: lin(z, f"{p}.{k}") for k in qkvo], heads)
        if fam == "dinov2":
            y = y * W[f"{p}.layer_scale1.lambda1"]
        h = h + y
        x = layer_norm(h, W[f"{p}.{n2}.weight"], W[f"{p}.{n2}.bias"], eps)
        if fam == "dinov2" and hidden:
            both = lin(x, f"{p}.mlp.weights_in")
            x1, x2 = both[..., :hidden], both[..., hidden:]
            m = lin(x1 / (1 + np.exp(-x1)) * x2, f"{p}.mlp.weights_out")
        else:
            m = lin(ACT[fam](lin(x, f"{p}.mlp.fc1")), f"{p}.mlp.fc2")
        if fam == "dinov2":
            m = m * W[f"{p}.layer_scale2.lambda1"]
        h = h + m
        states.append(h)
    return states


def attend(xq, xkv, proj, heads):
    b, tq, d = xq.shape
    tk, hd = xkv.shape[1], d // heads
    split = lambda y, t: y.reshape(b, t, heads, hd).transpose(0, 2, 1, 3)
    q, k, v = split(proj[0](xq), tq), split(proj[1](xkv), tk), split(proj[2](xkv), tk)
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    s = np.exp(s - s.max(-1, keepdims=True))
    s = s / s.sum(-1, keepdims=True)
    return proj[3]((s @ v).transpose(0, 2, 1, 3).reshape(b, tq, d))


ACT = {
    "dinov2": lambda u: 0.5 * u * (1 + erf(u / math.sqrt(2))),
    "clip": lambda u: u / (1 + np.exp(-1.702 * u)),
    "siglip": lambda u: 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3))),
}


def bicubic(n_in, n_out, a=-0.75):
    """[n_out, n_in]: 1-D bicubic resampling weights."""
    def k(x):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
        if x < 2:
            return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
        return 0.0
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = (o + 0.5) * n_in / n_out - 0.5
        f = math.floor(src)
        for i in range(f - 1, f + 3):
            m[o, min(max(i, 0), n_in - 1)] += k(src - i)
    return m


def positions(pos, first, side, gh, gw):
    """pos [1, first + side*side, d] resampled to a gh x gw grid."""
    if (gh, gw) == (side, side):
        return pos
    d = pos.shape[-1]
    grid = pos[0, first:].reshape(side, side, d)
    g = np.einsum("ai,bj,ijd->abd", bicubic(side, gh), bicubic(side, gw), grid).reshape(1, gh * gw, d)
    return np.concatenate([pos[:, :first], g], 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--family", choices=["dinov2", "clip", "siglip"], default="dinov2")
    ap.add_argument("--swiglu", action="store_true")
    ap.add_argument("--no-head", action="store_true", help="siglip: no attention-pooling head")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--pixels", type=int, nargs=2, metavar=("H", "W"), help="pixels of another size")
    a = ap.parse_args()
    fam = a.family
    rng = np.random.default_rng(a.seed)
    d, layers, heads, patch, size, ch, inter = 32, 2, 4, 4, 16, 3, 128
    eps = {"dinov2": 1e-6, "clip": 1e-5, "siglip": 1e-6}[fam]
    hidden = (int(inter * 2 / 3) + 7) // 8 * 8 if a.swiglu else 0
    n = (size // patch) ** 2
    f = lambda *shape, s=0.2: (rng.standard_normal(shape) * s).astype(np.float64)
    w = {}

    def norm(name):
        w[f"{name}.weight"], w[f"{name}.bias"] = 1 + f(d, s=0.1), f(d, s=0.1)

    def lin(name, o, i):
        w[f"{name}.weight"], w[f"{name}.bias"] = f(o, i), f(o)

    if fam == "dinov2":
        w["embeddings.cls_token"], w["embeddings.mask_token"] = f(1, 1, d), f(1, d)
        w["embeddings.position_embeddings"] = f(1, n + 1, d)
        lin("embeddings.patch_embeddings.projection", d, 1)
        w["embeddings.patch_embeddings.projection.weight"] = f(d, ch, patch, patch)
        norm("layernorm")
    else:
        pre = "vision_model."
        w[pre + "embeddings.patch_embedding.weight"] = f(d, ch, patch, patch)
        if fam == "clip":
            w[pre + "embeddings.class_embedding"] = f(d)
            w[pre + "embeddings.position_embedding.weight"] = f(n + 1, d)
            norm(pre + "pre_layrnorm")
        else:
            w[pre + "embeddings.patch_embedding.bias"] = f(d)
            w[pre + "embeddings.position_embedding.weight"] = f(n, d)
            if not a.no_head:
                w[pre + "head.probe"] = f(1, 1, d)
                w[pre + "head.attention.in_proj_weight"], w[pre + "head.attention.in_proj_bias"] = f(3 * d, d), f(3 * d)
                lin(pre + "head.attention.out_proj", d, d)
                norm(pre + "head.layernorm")
                lin(pre + "head.mlp.fc1", inter, d)
                lin(pre + "head.mlp.fc2", d, inter)
        norm(pre + "post_layernorm")
    for i in range(layers):
        if fam == "dinov2":
            p = f"encoder.layer.{i}"
            norm(f"{p}.norm1"), norm(f"{p}.norm2")
            for k in ["attention.attention.query", "attention.attention.key", "attention.attention.value",
                      "attention.output.dense"]:
                lin(f"{p}.{k}", d, d)
            w[f"{p}.layer_scale1.lambda1"], w[f"{p}.layer_scale2.lambda1"] = 0.5 + f(d, s=0.1), 0.5 + f(d, s=0.1)
            if a.swiglu:
                lin(f"{p}.mlp.weights_in", 2 * hidden, d)
                lin(f"{p}.mlp.weights_out", d, hidden)
                mlp_done = True
            else:
                mlp_done = False
        else:
            p = f"vision_model.encoder.layers.{i}"
            norm(f"{p}.layer_norm1"), norm(f"{p}.layer_norm2")
            for k in ["q_proj", "k_proj", "v_proj", "out_proj"]:
                lin(f"{p}.self_attn.{k}", d, d)
            mlp_done = False
        if not mlp_done:
            lin(f"{p}.mlp.fc1", inter, d)
            lin(f"{p}.mlp.fc2", d, inter)
    w = {k: v.astype(np.float32) for k, v in w.items()}
    ph, pw = a.pixels or (size, size)
    pixels = rng.standard_normal((2, ch, ph, pw)).astype(np.float32)

    # the forward, in float64, on names without the vision_model. prefix
    W = {k.removeprefix("vision_model."): v.astype(np.float64) for k, v in w.items()}
    b, side, gh, gw = pixels.shape[0], size // patch, ph // patch, pw // patch
    x = pixels[:, :, :gh * patch, :gw * patch].astype(np.float64)
    tiles = x.reshape(b, ch, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, ch * patch ** 2)
    if fam == "dinov2":
        W["embeddings.position_embeddings"] = positions(W["embeddings.position_embeddings"], 1, side, gh, gw)
    else:
        pe = W["embeddings.position_embedding.weight"][None]
        W["embeddings.position_embedding.weight"] = positions(pe, int(fam == "clip"), side, gh, gw)[0]
    if fam == "dinov2":
        emb = tiles @ W["embeddings.patch_embeddings.projection.weight"].reshape(d, -1).T \
            + W["embeddings.patch_embeddings.projection.bias"]
        h = np.concatenate([np.repeat(W["embeddings.cls_token"], b, 0), emb], 1) + W["embeddings.position_embeddings"]
    else:
        emb = tiles @ W["embeddings.patch_embedding.weight"].reshape(d, -1).T
        if fam == "clip":
            cls = np.repeat(W["embeddings.class_embedding"].reshape(1, 1, d), b, 0)
            h = np.concatenate([cls, emb], 1) + W["embeddings.position_embedding.weight"]
            h = layer_norm(h, W["pre_layrnorm.weight"], W["pre_layrnorm.bias"], eps)
        else:
            h = emb + W["embeddings.patch_embedding.bias"] + W["embeddings.position_embedding.weight"]
    states = [h] + forward_blocks(W, h, fam, layers, heads, eps, hidden)
    h = states[-1]
    pooled = None
    if fam == "dinov2":
        last = layer_norm(h, W["layernorm.weight"], W["layernorm.bias"], eps)
        pooled = last[:, 0]
    elif fam == "clip":
        last = h
        pooled = layer_norm(h[:, 0], W["post_layernorm.weight"], W["post_layernorm.bias"], eps)
    else:
        last = layer_norm(h, W["post_layernorm.weight"], W["post_layernorm.bias"], eps)
        if not a.no_head:
            ip, ib = W["head.attention.in_proj_weight"], W["head.attention.in_proj_bias"]
            proj = [lambda z, k=k: z @ ip[k * d:(k + 1) * d].T + ib[k * d:(k + 1) * d] for k in range(3)]
            proj.append(lambda z: z @ W["head.attention.out_proj.weight"].T + W["head.attention.out_proj.bias"])
            y = attend(np.repeat(W["head.probe"], b, 0), last, proj, heads)
            m = layer_norm(y, W["head.layernorm.weight"], W["head.layernorm.bias"], eps)
            m = ACT[fam](m @ W["head.mlp.fc1.weight"].T + W["head.mlp.fc1.bias"]) @ W["head.mlp.fc2.weight"].T \
                + W["head.mlp.fc2.bias"]
            pooled = (y + m)[:, 0]

    os.makedirs(a.out, exist_ok=True)
    common = {"hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": heads, "layer_norm_eps": eps,
              "image_size": size, "patch_size": patch, "num_channels": ch, "torch_dtype": "float32"}
    cfg = {
        "dinov2": {"architectures": ["Dinov2Model"], "model_type": "dinov2", "mlp_ratio": inter // d,
                   "hidden_act": "gelu", "qkv_bias": True, "layerscale_value": 1.0, "use_swiglu_ffn": a.swiglu},
        "clip": {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model", "intermediate_size": inter,
                 "hidden_act": "quick_gelu"},
        "siglip": {"architectures": ["SiglipVisionModel"], "model_type": "siglip_vision_model",
                   "intermediate_size": inter, "hidden_act": "gelu_pytorch_tanh", "vision_use_head": not a.no_head},
    }[fam] | common
    with open(os.path.join(a.out, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
    save_file(w, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    ref = {"pixel_values": pixels, "last_hidden_state": last.astype(np.float32)}
    if pooled is not None:
        ref["pooler_output"] = pooled.astype(np.float32)
    for i, s in enumerate(states):
        ref[f"hidden_state.{i}"] = s.astype(np.float32)
    save_file(ref, os.path.join(a.out, "reference.safetensors"))


if __name__ == "__main__":
    main()
