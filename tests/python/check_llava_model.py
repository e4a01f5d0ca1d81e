#!/usr/bin/env python3
"""Independent check of a Strata LLaVA folder with numpy and safetensors (no torch), in transformers'
LlavaForConditionalGeneration semantics:

  1. config.json: model_type llava, architectures LlavaForConditionalGeneration, a text_config and a DINOv2
     vision_config, image_token_index inside the text vocabulary;
  2. model.safetensors: exactly the tensors transformers' layout names — model.vision_tower.* (Dinov2Model),
     model.multi_modal_projector.linear_{1,2}.{weight,bias}, model.language_model.* (the decoder without
     `model.`), lm_head.weight unless tied — with the shapes the configs imply;
  3. tokenizer.json, loaded by `tokenizers`, has <image> at image_token_index;
  4. the forward written here (the tower of vision_reference.py with its positions resampled to the pixels'
     size, hidden state vision_feature_layer without the class token under the "default" strategy, the
     projector Linear-GELU-Linear, the features in place of the image tokens, the decoder of check_hf_model.py)
     gives Strata's logits on the same ids and pixels, relative error <= 1e-4.

usage: check_llava_model.py MODEL_DIR EXPECT.safetensors   (ids [T] as float, pixel_values [1, 3, H, W], logits [T, V])"""
import json
import math
import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_hf_model as text  # noqa: E402
from vision_reference import forward_blocks, layer_norm, positions  # noqa: E402

erf = np.vectorize(math.erf)


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def main():
    model_dir, expect_path = sys.argv[1], sys.argv[2]
    with open(f"{model_dir}/config.json") as f:
        c = json.load(f)
    if c.get("model_type") != "llava" or c.get("architectures") != ["LlavaForConditionalGeneration"]:
        fail(f"config.json: model_type={c.get('model_type')} architectures={c.get('architectures')}")
    tc, vc = c["text_config"], c["vision_config"]
    if vc.get("model_type") != "dinov2":
        fail(f"vision_config model_type {vc.get('model_type')}: this check writes the DINOv2 tower")
    img = c["image_token_index"]
    if not 0 <= img < tc["vocab_size"]:
        fail(f"image_token_index {img} outside the vocabulary {tc['vocab_size']}")

    with safe_open(f"{model_dir}/model.safetensors", framework="numpy") as st:
        if (st.metadata() or {}).get("format") != "pt":
            fail(f"safetensors metadata {st.metadata()} lacks format=pt")
        W = {n: st.get_tensor(n).astype(np.float64) for n in st.keys()}
    dv, dt = vc["hidden_size"], tc["hidden_size"]
    want = {"model." + k.replace("model.", "language_model.", 1) if k.startswith("model.") else k: s
            for k, s in text.expected_shapes(tc).items()}
    want.update({
        "model.multi_modal_projector.linear_1.weight": (dt, dv), "model.multi_modal_projector.linear_1.bias": (dt,),
        "model.multi_modal_projector.linear_2.weight": (dt, dt), "model.multi_modal_projector.linear_2.bias": (dt,),
    })
    tower = {k[len("model.vision_tower."):]: v for k, v in W.items() if k.startswith("model.vision_tower.")}
    for k, v in W.items():
        if k.startswith("model.vision_tower."):
            continue
        if k not in want:
            fail(f"unexpected tensor {k}")
        if tuple(v.shape) != want[k]:
            fail(f"{k}: shape {v.shape}, want {want[k]}")
    missing = set(want) - set(W)
    if missing:
        fail(f"missing tensors {sorted(missing)[:5]}")
    for k in ["embeddings.cls_token", "embeddings.position_embeddings", "embeddings.patch_embeddings.projection.weight",
              "layernorm.weight", "encoder.layer.0.attention.attention.query.weight"]:
        if k not in tower:
            fail(f"tower tensor model.vision_tower.{k} missing")

    tk = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    if tk.token_to_id("<image>") != img:
        fail(f"tokenizer: <image> is {tk.token_to_id('<image>')}, config image_token_index {img}")

    e = load_file(expect_path)
    ids = e["ids"].astype(np.int64)
    px = e["pixel_values"].astype(np.float64)
    # the tower
    p, side = vc["patch_size"], vc["image_size"] // vc["patch_size"]
    _, ch, h, w = px.shape
    gh, gw = h // p, w // p
    tiles = px[:, :, :gh * p, :gw * p].reshape(1, ch, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5).reshape(1, gh * gw, -1)
    emb = tiles @ tower["embeddings.patch_embeddings.projection.weight"].reshape(dv, -1).T \
        + tower["embeddings.patch_embeddings.projection.bias"]
    hst = np.concatenate([tower["embeddings.cls_token"], emb], 1) \
        + positions(tower["embeddings.position_embeddings"], 1, side, gh, gw)
    inter = int(dv * vc.get("mlp_ratio", 4))
    hidden = (int(inter * 2 / 3) + 7) // 8 * 8 if vc.get("use_swiglu_ffn") else 0
    states = [hst] + forward_blocks(tower, hst, "dinov2", vc["num_hidden_layers"], vc["num_attention_heads"],
                                    vc.get("layer_norm_eps", 1e-6), hidden)
    feats = states[c.get("vision_feature_layer", -2)]
    if c.get("vision_feature_select_strategy", "default") == "default":
        feats = feats[:, 1:]
    lin = lambda x, k: x @ W[k + ".weight"].T + W[k + ".bias"]
    g = lin(feats[0], "model.multi_modal_projector.linear_1")
    proj = lin(g * 0.5 * (1 + erf(g / math.sqrt(2))), "model.multi_modal_projector.linear_2")
    # the decoder, the features in place of the image tokens
    dec = {("model." + k[len("model.language_model."):] if k.startswith("model.language_model.") else k): v
           for k, v in W.items() if not k.startswith("model.vision_tower.") and "multi_modal_projector" not in k}
    x = dec["model.embed_tokens.weight"][ids].copy()
    slots = np.where(ids == img)[0]
    if len(slots) != proj.shape[0]:
        fail(f"{len(slots)} image tokens for {proj.shape[0]} feature rows")
    x[slots] = proj
    ref = text.forward(tc, dec, ids, x)
    got = e["logits"].astype(np.float64)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    if not rel <= 1e-4:
        fail(f"logits differ from the numpy LLaVA forward: max relative error {rel:.3e}")
    print(f"OK: {len(W)} tensors, {len(ids)} ids ({len(slots)} image tokens), logits rel err {rel:.2e}")


if __name__ == "__main__":
    main()
