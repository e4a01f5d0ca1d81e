#!/usr/bin/env python3
"""Seed inputs for the fuzz targets: a tiny valid llama GGUF (F32, Q8_0 and Q4_1 tensors, written with the `gguf`
package) and a tiny safetensors file (`safetensors` package), so that libFuzzer starts from files that reach
every stage of the readers.

usage: make_seeds.py CORPUS_DIR   (writes CORPUS_DIR/gguf/seed.gguf and CORPUS_DIR/safetensors/seed.safetensors)
"""
import os
import sys

import numpy as np
from gguf import GGUFWriter, GGMLQuantizationType
from gguf.quants import quantize
from safetensors.numpy import save_file


def main():
    out = sys.argv[1]
    os.makedirs(os.path.join(out, "gguf"), exist_ok=True)
    os.makedirs(os.path.join(out, "safetensors"), exist_ok=True)
    rng = np.random.default_rng(0)
    d, f, v, heads, kv = 32, 64, 16, 2, 1
    hd = d // heads
    w = GGUFWriter(os.path.join(out, "gguf", "seed.gguf"), "llama")
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_block_count(1)
    w.add_feed_forward_length(f)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(v)

    def t(name, shape, qtype=GGMLQuantizationType.F32):
        x = rng.standard_normal(shape).astype(np.float32)
        if qtype == GGMLQuantizationType.F32:
            w.add_tensor(name, x)
        else:
            w.add_tensor(name, quantize(x, qtype), raw_dtype=qtype)

    t("token_embd.weight", (v, d), GGMLQuantizationType.Q8_0)
    t("blk.0.attn_norm.weight", (d,))
    t("blk.0.attn_q.weight", (heads * hd, d), GGMLQuantizationType.Q4_1)
    t("blk.0.attn_k.weight", (kv * hd, d), GGMLQuantizationType.Q8_0)
    t("blk.0.attn_v.weight", (kv * hd, d), GGMLQuantizationType.Q4_0)
    t("blk.0.attn_output.weight", (d, heads * hd))
    t("blk.0.ffn_norm.weight", (d,))
    t("blk.0.ffn_gate.weight", (f, d), GGMLQuantizationType.Q4_1)
    t("blk.0.ffn_up.weight", (f, d), GGMLQuantizationType.Q4_1)
    t("blk.0.ffn_down.weight", (d, f), GGMLQuantizationType.Q8_0)
    t("output_norm.weight", (d,))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(
        {
            "a": rng.standard_normal((4, 8)).astype(np.float32),
            "b": rng.standard_normal((3,)).astype(np.float16),
        },
        os.path.join(out, "safetensors", "seed.safetensors"),
        metadata={"format": "pt"},
    )


if __name__ == "__main__":
    main()
