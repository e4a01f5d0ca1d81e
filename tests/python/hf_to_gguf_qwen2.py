#!/usr/bin/env python3
"""Writes a Qwen2 Hugging Face folder (f32 safetensors) as a GGUF file the way llama.cpp's converter lays it
out for the `qwen2` architecture: `qwen2.*` metadata, Q/K/V biases, Q and K rows NOT permuted (llama.cpp runs
qwen2 with the NEOX rotation, the HF layout), the byte-level BPE vocabulary and merges with
`tokenizer.ggml.pre` = PRE (default "qwen2"). Uses only the `gguf`, `safetensors` and `numpy` packages.

usage: hf_to_gguf_qwen2.py HF_DIR OUT.gguf [PRE]
"""
import json
import sys

import numpy as np
from gguf import GGUFWriter
from safetensors.numpy import load_file


def main():
    src, out = sys.argv[1], sys.argv[2]
    pre = sys.argv[3] if len(sys.argv) > 3 else "qwen2"
    cfg = json.load(open(f"{src}/config.json"))
    tok = json.load(open(f"{src}/tokenizer.json"))
    w = GGUFWriter(out, "qwen2")
    w.add_name("synthetic qwen2")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    vocab = tok["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    types = [1] * len(tokens)
    for a in tok["added_tokens"]:
        if a["id"] < len(tokens):
            tokens[a["id"]] = a["content"]
            types[a["id"]] = 3 if a["special"] else 4
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    # a BOS id but no tokenizer.ggml.add_bos_token: llama.cpp's default then decides (on for llama-bpe)
    w.add_bos_token_id(cfg.get("bos_token_id", 0))
    if cfg.get("eos_token_id") is not None:
        w.add_eos_token_id(cfg["eos_token_id"])
    t = load_file(f"{src}/model.safetensors")
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                 "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
                 "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
                 "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
                 "self_attn.v_proj.bias": "attn_v.bias", "mlp.gate_proj.weight": "ffn_gate.weight",
                 "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}"] = f"blk.{i}.{gg}"
    for hf in sorted(t):
        w.add_tensor(names[hf], np.ascontiguousarray(t[hf].astype(np.float32)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
