#!/usr/bin/env python3
"""Writes a Hugging Face folder (f32 safetensors, Qwen2 or Llama) as a GGUF file laid out the way llama.cpp's
converter does it, using only the `gguf`, `safetensors` and `numpy` packages:

- ARCH qwen2: `qwen2.*` metadata, Q/K/V biases, Q and K rows as HF has them (llama.cpp runs qwen2 with the
  NEOX rotation); ARCH qwen3 likewise, with the query and key norms (`attn_q_norm`, `attn_k_norm`) and the head
  size as `qwen3.attention.key_length`; ARCH llama: `llama.*` metadata, Q and K rows permuted for llama.cpp's interleaved rotation;
  ARCH gemma3: `gemma3.*` metadata with the window (`attention.sliding_window`) and head size, Q and K as HF
  has them, the norms renamed as llama.cpp's converter does (post_attention_norm, ffn_norm for the
  pre-feedforward norm, post_ffw_norm) and their gains written as 1 + w (Gemma's RMSNorm factor).
- VOCAB qwen2 | llama-bpe: the folder's byte-level BPE vocabulary and merges under that `tokenizer.ggml.pre`.
  VOCAB spm: a SentencePiece vocabulary (`tokenizer.ggml.model` "llama": <unk>, <s>, </s>, 256 byte tokens,
  then pieces made from the folder's vocabulary, with scores) and, in EXPECT_JSON, the ids that llama.cpp's
  SentencePiece algorithm gives for a set of texts, computed here by a direct implementation of it (join the
  adjacent pair whose joined piece scores highest, leftmost first; bytes for what is not in the vocabulary;
  "▁" for spaces and one before each text segment).

With ROPE_FREQS=1 in the environment it adds a `rope_freqs.weight` tensor (Llama 3.1's RoPE factors).

usage: hf_to_gguf.py HF_DIR OUT.gguf ARCH VOCAB [EXPECT_JSON]
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFWriter
from safetensors.numpy import load_file

TEXTS = [
    "The liver measures 14.2 cm.",
    "  two  spaces and a tab\there",
    "超声 ok naïve café",
    "line one\nline two",
    "<s>hello</s> world",
    "",
]


def byte_decoder():
    # GPT-2's byte ↔ printable-character map, to turn byte-level pieces back into text
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def spm_vocab(tok, size):
    # every SentencePiece vocabulary has "▁" itself
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581"]
    types = [2, 3, 3] + [6] * 256 + [1]
    dec = byte_decoder()
    seen = set(tokens)
    for piece, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1]):
        if len(tokens) == size:
            break
        try:
            text = bytes(dec[c] for c in piece).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue
        text = text.replace(" ", "\u2581")
        if not text or text in seen or text.startswith("<"):
            continue
        seen.add(text)
        tokens.append(text)
        types.append(1)
    assert len(tokens) == size, f"only {len(tokens)} pieces for a vocabulary of {size}"
    scores = [0.0] * 259 + [-float(i) for i in range(size - 259)]
    return tokens, types, scores


def spm_encode(text, tokens, types, scores):
    ids = {t: i for i, t in enumerate(tokens) if types[i] in (1, 4)}
    specials = {t: i for i, t in enumerate(tokens) if types[i] in (2, 3)}
    out = []
    # split out special tokens; a space goes before every text segment that starts the text or follows one
    segments, i, start = [], 0, 0
    while i < len(text):
        hit = next((s for s in specials if text.startswith(s, i)), None)
        if hit:
            if i > start:
                segments.append(text[start:i])
            segments.append(specials[hit])
            i += len(hit)
            start = i
        else:
            i += 1
    if start < len(text):
        segments.append(text[start:])
    prev_special = True
    for seg in segments:
        if isinstance(seg, int):
            out.append(seg)
            prev_special = True
            continue
        s = ((" " if prev_special else "") + seg).replace(" ", "\u2581")
        prev_special = False
        sym = list(s)
        while True:
            best = None
            for k in range(len(sym) - 1):
                j = ids.get(sym[k] + sym[k + 1])
                if j is not None and (best is None or scores[j] > scores[best[1]]):
                    best = (k, j)
            if best is None:
                break
            k, _ = best
            sym[k : k + 2] = [sym[k] + sym[k + 1]]
        for p in sym:
            if p in ids:
                out.append(ids[p])
            else:
                out.extend(tokens.index(f"<0x{b:02X}>") for b in p.encode("utf-8"))
    return out


def main():
    src, out, arch, vocab = sys.argv[1:5]
    cfg = json.load(open(f"{src}/config.json"))
    tok = json.load(open(f"{src}/tokenizer.json"))
    w = GGUFWriter(out, arch)
    w.add_name(f"synthetic {arch}")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    if arch == "gemma3":
        w.add_sliding_window(cfg["sliding_window"])
    if cfg.get("head_dim"):
        # as llama.cpp's converter states a head size that is not hidden / heads (Qwen3)
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    if vocab == "spm":
        tokens, types, scores = spm_vocab(tok, cfg["vocab_size"])
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        expect = {t: spm_encode(t, tokens, types, scores) for t in TEXTS}
        with open(sys.argv[5], "w") as f:
            json.dump(expect, f, ensure_ascii=False)
    else:
        toks = [None] * len(tok["model"]["vocab"])
        for t, i in tok["model"]["vocab"].items():
            toks[i] = t
        types = [1] * len(toks)
        for a in tok["added_tokens"]:
            if a["id"] < len(toks):
                toks[a["id"]] = a["content"]
                types[a["id"]] = 3 if a["special"] else 4
        merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(vocab)
        w.add_token_list(toks)
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
                 "self_attn.v_proj.bias": "attn_v.bias", "self_attn.q_norm.weight": "attn_q_norm.weight",
                 "self_attn.k_norm.weight": "attn_k_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
                 "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    if arch == "gemma3":
        per_layer.update({"post_attention_layernorm.weight": "post_attention_norm.weight",
                          "pre_feedforward_layernorm.weight": "ffn_norm.weight",
                          "post_feedforward_layernorm.weight": "post_ffw_norm.weight"})
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}"] = f"blk.{i}.{gg}"

    def permute(x, heads):
        # llama.cpp's convert: rows (heads, 2, hd/2) → (heads, hd/2, 2), for its interleaved rotation
        return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    for hf in sorted(t):
        x = t[hf].astype(np.float32)
        if arch == "gemma3" and hf.endswith("norm.weight"):
            x = x + np.float32(1.0)
        if arch == "llama" and hf.endswith("q_proj.weight"):
            x = permute(x, nh)
        elif arch == "llama" and hf.endswith("k_proj.weight"):
            x = permute(x, nkv)
        w.add_tensor(names[hf], np.ascontiguousarray(x))
    if os.environ.get("ROPE_FREQS"):
        # Llama 3.1's frequency factors, as llama.cpp's converter stores them
        w.add_tensor("rope_freqs.weight", np.ones(cfg["hidden_size"] // nh // 2, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
