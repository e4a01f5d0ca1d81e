#!/usr/bin/env python3
"""Vision towers against transformers: the small random DINOv2, CLIP and SigLIP towers that
tests/python/vision_reference.py writes (transformers' names and config fields) are loaded by transformers
itself (`AutoModel.from_pretrained`, f32, eager attention) and run on the same pixels with
`output_hidden_states=True`; every hidden state, the last hidden state and the pooled output are compared with
the numpy forward stored beside them, at the towers' own image size and at others (positions resampled). The test suite checks Strata's `VisionEncoder` against that same numpy
forward (crates/strata-cli/tests/vision.rs, <= 1e-5), so the two together say Strata = transformers; this
script is the half that needs torch (~3 GB of wheels, kept out of the test suite).

Runs in the torch venv of bench/train.py (target/bench-torch/venv: torch 2.15.0, transformers 5.24.0),
created on first use.

usage: bench/vision_parity.py"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "target", "bench-torch", "venv")
PINS = ["torch==2.15.0", "transformers==5.24.0", "safetensors==0.8.0", "numpy==2.4.6"]
WORK = os.path.join(ROOT, "target", "vision-parity")

CHECK = r'''
import sys, numpy as np, torch
from safetensors.numpy import load_file
from transformers import AutoModel
d = sys.argv[1]
ref = load_file(f"{d}/reference.safetensors")
m = AutoModel.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()
kw = {}
if ref["pixel_values"].shape[-1] != m.config.image_size or ref["pixel_values"].shape[-2] != m.config.image_size:
    if m.config.model_type != "dinov2":  # DINOv2 always resamples its positions; CLIP and SigLIP when asked
        kw["interpolate_pos_encoding"] = True
with torch.no_grad():
    out = m(pixel_values=torch.from_numpy(ref["pixel_values"]), output_hidden_states=True, **kw)
def rel(a, b):
    a = a.numpy() if hasattr(a, "numpy") else a
    return float(np.abs(a - b).max() / np.abs(b).max())
worst = 0.0
assert len(out.hidden_states) == sum(k.startswith("hidden_state.") for k in ref), "hidden state count"
for i, h in enumerate(out.hidden_states):
    worst = max(worst, rel(h, ref[f"hidden_state.{i}"]))
worst = max(worst, rel(out.last_hidden_state, ref["last_hidden_state"]))
if "pooler_output" in ref:
    worst = max(worst, rel(out.pooler_output, ref["pooler_output"]))
else:
    assert getattr(out, "pooler_output", None) is None, "transformers pooled, the reference did not"
print(f"{type(m).__name__:<20} {worst:.2e}")
'''


def main():
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        print("installing torch + transformers (~3 GB) ...", file=sys.stderr)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q", *PINS], check=True)
    print("tower                relative difference, transformers vs the numpy forward (goal <= 1e-5)")
    for name, args in [("dinov2", []), ("dinov2-swiglu", ["--swiglu", "--seed", "5"]),
                       ("clip", ["--family", "clip", "--seed", "7"]),
                       ("siglip", ["--family", "siglip", "--seed", "9"]),
                       ("siglip-no-head", ["--family", "siglip", "--no-head"]),
                       # other image sizes: the position embeddings resampled bicubically
                       ("dinov2-24x12", ["--pixels", "24", "12", "--seed", "4"]),
                       ("clip-28x28", ["--family", "clip", "--pixels", "28", "28", "--seed", "6"]),
                       ("siglip-12x20", ["--family", "siglip", "--pixels", "12", "20", "--seed", "8"])]:
        d = os.path.join(WORK, name)
        subprocess.run([py, os.path.join(ROOT, "tests", "python", "vision_reference.py"), d, *args], check=True)
        out = subprocess.run([py, "-c", CHECK, d], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name}: FAILED\n{out.stderr[-3000:]}")
            continue
        print(f"{name:<15} {out.stdout.strip()}")


if __name__ == "__main__":
    main()
