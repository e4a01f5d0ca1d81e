#!/usr/bin/env python3
"""bench/vlm: a LLaVA model (SmolLM2-135M-Instruct + the DINOv2 ViT-S/14 of scripts/fetch-model.sh --vision, 112 px
images: 64 patch tokens and the class token) in Strata and in PyTorch/transformers, side by side, on one machine.

1. Training step, stage 1 (the projector trained; tower and decoder frozen, the backward through the decoder):
   the same model (Strata's published LlavaForConditionalGeneration folder, loaded by transformers), the same
   batch of 8 image-report examples (every step the same 8: the dataset has 8 images), the same optimiser
   (AdamW, lr 1e-3). Strata reads the tower's cached features; transformers runs the frozen tower in every
   step (about 2% of the step's arithmetic). Seconds per step (median after the first two) and peak RSS of
   each process.
2. One image question: encode + prompt + 64 new tokens, greedy, end-of-sequence ignored: `strata generate
   --image` (the decoder on the inference engine with its KV cache) against transformers' `generate`.
3. Parity: the greedy answer of each (until end of sequence, at most 48 tokens) on the same pixels (the images
   are already 112 px, so both only normalise them).

Prints the CPU family (/proc/cpuinfo: 25 = Zen 4, 26 = Zen 5) and the ratios. Goals (issue 23): training
>= 1.5x PyTorch at no more memory; latency >= 3x transformers.

usage: bench/vlm.py [--steps 8]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "target", "bench-vlm")
STORE = os.path.join(WORK, "store")
VENV = os.path.join(ROOT, "target", "bench-torch", "venv")
PINS = ["torch==2.15.0", "transformers==5.24.0", "safetensors==0.8.0", "numpy==2.4.6"]
STRATA = os.path.join(ROOT, "target", "release", "strata")
QUESTION = "Write the report for this ultrasound image."

TORCH = r'''
import json, resource, sys, time, statistics
import numpy as np, torch
from safetensors.numpy import load_file
from transformers import AutoTokenizer, LlavaForConditionalGeneration
model_dir, images_json, steps, question = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
imgs = json.load(open(images_json))
tok = AutoTokenizer.from_pretrained(model_dir)
m = LlavaForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
cfg = m.config
img_id, rows = cfg.image_token_index, cfg.image_seq_length
pre = json.load(open(f"{model_dir}/preprocessor_config.json"))
mean, std = np.array(pre["image_mean"]).reshape(3, 1, 1), np.array(pre["image_std"]).reshape(3, 1, 1)

def pixels(gray):
    g = np.asarray(gray, dtype=np.float64).reshape(1, *np.shape(gray)) / 255.0
    return ((np.repeat(g, 3, 0) - mean) / std).astype(np.float32)

def expand(ids):
    out = []
    for i in ids:
        out.extend([i] * rows if i == img_id else [i])
    return out

def encode(q, a=None):
    msgs = [{"role": "user", "content": "<image>\n" + q}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    p = expand(tok(prompt, add_special_tokens=False).input_ids)
    if a is None:
        return p, []
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": a}], tokenize=False)
    f = expand(tok(full, add_special_tokens=False).input_ids)
    return f, [-100] * len(p) + f[len(p):]

m.eval()
# 2. latency and 3. parity, on the weights as stored (before the training steps change the projector)
q, _ = encode(question)
x = torch.tensor([q])
p0 = torch.tensor(pixels(imgs[0]["gray"])[None])
with torch.no_grad():
    m.generate(input_ids=x, pixel_values=p0, max_new_tokens=4, do_sample=False)  # warm-up
    t = time.perf_counter()
    g = m.generate(input_ids=x, pixel_values=p0, max_new_tokens=64, min_new_tokens=64, do_sample=False)
    latency = time.perf_counter() - t
    a = m.generate(input_ids=x, pixel_values=p0, max_new_tokens=48, do_sample=False)
answer = tok.decode(a[0, x.shape[1]:], skip_special_tokens=True)
# 1. training steps: the projector only
for n, p_ in m.named_parameters():
    p_.requires_grad = "multi_modal_projector" in n
batch = [encode(question, im["text"]) for im in imgs]
L = max(len(x) for x, _ in batch)
pad = tok.pad_token_id if tok.pad_token_id is not None else 0
ids = torch.tensor([x + [pad] * (L - len(x)) for x, _ in batch])
labels = torch.tensor([y + [-100] * (L - len(y)) for _, y in batch])
px = torch.tensor(np.stack([pixels(im["gray"]) for im in imgs]))
opt = torch.optim.AdamW([p_ for p_ in m.parameters() if p_.requires_grad], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
m.train()
times = []
for s in range(steps):
    t = time.perf_counter()
    out = m(input_ids=ids, pixel_values=px, labels=labels)
    out.loss.backward()
    opt.step(); opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t)
train_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"step_s": statistics.median(times[2:]), "train_rss_mib": train_rss, "latency_s": latency,
                  "new_tokens": int(g.shape[1] - x.shape[1]), "answer": answer, "batch_tokens": int(ids.numel())}))
'''


def sh(cmd, **kw):
    r = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stdout}\n{r.stderr}")
    return r


def strata(*args):
    return sh([STRATA, "--workdir", STORE, *args], cwd=ROOT)


def cpu_family():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu family"):
                f = int(line.split(":")[1])
                return f"{f} ({ {25: 'Zen 4', 26: 'Zen 5'}.get(f, 'other') })"
    except OSError:
        pass
    return "unknown"


def torch_python():
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        sh([sys.executable, "-m", "venv", VENV])
        print("installing torch + transformers (~3 GB) ...", file=sys.stderr)
        sh([os.path.join(VENV, "bin", "pip"), "install", "-q", *PINS])
    return py


def setup(steps):
    if not os.path.exists(STRATA):
        sh(["cargo", "build", "--release", "-p", "strata-cli"], cwd=ROOT)
    gguf = sh(["bash", "scripts/fetch-model.sh", "data"], cwd=ROOT).stdout.strip()
    tower = sh(["bash", "scripts/fetch-model.sh", "--vision", "data"], cwd=ROOT).stdout.strip()
    if not os.path.isdir(os.path.join(STORE, "models", "smol")):
        strata("import", gguf, "--name", "smol")
    raw = os.path.join(WORK, "images")
    if not os.path.isdir(os.path.join(STORE, "datasets", "us8")):
        strata("domain", "ultrasound-images", "--out", raw, "--count", "8", "--size", "112", "--seed", "5")
        strata("acquire", "--name", "us8", "--input", raw)
    r = strata("finetune", "--images", "us8", "--parent", "smol", "--vision", os.path.join(ROOT, tower),
               "--name", f"vlm-{steps}", "--steps", str(steps), "--batch-size", "8", "--lr", "1e-3",
               "--eval-every", "1000", "--vision-layer", "-2", "--vision-features", "full")
    return r


def strata_metrics(steps):
    runs = [d for d in os.listdir(os.path.join(STORE, "runs")) if d.startswith(f"vlm-{steps}-")]
    rows = [json.loads(line) for line in open(os.path.join(STORE, "runs", runs[0], "metrics.jsonl"))]
    secs, prev = [], 0
    for m in rows:
        toks = m["tokens_seen"] - prev + 8  # tokens_seen counts inputs (len - 1) of the 8 examples
        prev = m["tokens_seen"]
        secs.append(toks / m["tokens_per_s"])
    return statistics.median(secs[2:]), rows[-1]["peak_rss_mib"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    setup(a.steps)
    model = os.path.join(STORE, "models", f"vlm-{a.steps}")
    s_step, s_rss = strata_metrics(a.steps)
    # the 8 images and reports, for the PyTorch side
    recs = [json.loads(line) for line in open(os.path.join(STORE, "datasets", "us8", "records.jsonl"))]
    py = torch_python()
    images = [{"file": os.path.join(STORE, "datasets", "us8", r["file"]), "text": r["text"]} for r in recs]
    # decode the PNGs with the standard library's zlib (8-bit gray, as the simulator writes them)
    for im in images:
        im["gray"] = read_gray_png(im["file"])
    spec = os.path.join(WORK, "images.json")
    json.dump(images, open(spec, "w"))
    t = json.loads(sh([py, "-c", TORCH, model, spec, str(a.steps), QUESTION]).stdout.strip().splitlines()[-1])
    # Strata's latency (64 tokens, end ignored) and greedy answer
    g = strata("generate", "--model", f"vlm-{a.steps}", "--image", images[0]["file"], "--prompt", QUESTION,
               "--max-tokens", "64", "--ignore-eos", "--temperature", "0", "--quant", "f32")
    timing = json.loads(g.stderr.strip().splitlines()[-1])
    s_latency = (timing["encode_ms"] + timing["generate_ms"]) / 1e3
    ans = strata("generate", "--model", f"vlm-{a.steps}", "--image", images[0]["file"], "--prompt", QUESTION,
                 "--max-tokens", "48", "--temperature", "0", "--quant", "f32").stdout.strip()
    print(f"cpu family {cpu_family()}; LLaVA: SmolLM2-135M + ViT-S/14 at 112 px (65 image tokens), batch 8 "
          f"({t['batch_tokens']} tokens padded)")
    print(f"{'':34}{'Strata':>12}{'PyTorch':>12}{'ratio':>9}")
    print(f"{'train step, stage 1 (s)':34}{s_step:>12.3f}{t['step_s']:>12.3f}{t['step_s'] / s_step:>8.2f}x")
    print(f"{'peak RSS while training (MiB)':34}{s_rss:>12.0f}{t['train_rss_mib']:>12.0f}"
          f"{s_rss / t['train_rss_mib']:>8.2f}x")
    print(f"{'image question, 64 tokens (s)':34}{s_latency:>12.3f}{t['latency_s']:>12.3f}"
          f"{t['latency_s'] / s_latency:>8.2f}x")
    same = ans.strip() == t["answer"].strip()
    print(f"greedy answers equal: {same}")
    if not same:
        print(f"  strata:       {ans!r}\n  transformers: {t['answer']!r}")


def read_gray_png(path):
    """An 8-bit grayscale, non-interlaced PNG's rows (what the simulator and `strata acquire` write)."""
    import struct
    import zlib
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    i, idat, w, h = 8, b"", 0, 0
    while i < len(data):
        n, kind = struct.unpack(">I4s", data[i:i + 8])
        body = data[i + 8:i + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color == 0, f"{path}: not 8-bit gray"
        elif kind == b"IDAT":
            idat += body
        i += 12 + n
    raw = zlib.decompress(idat)
    rows, prev, stride = [], [0] * w, w + 1
    for y in range(h):
        f, line = raw[y * stride], list(raw[y * stride + 1:(y + 1) * stride])
        for x in range(w):
            a = line[x - 1] if x else 0
            b, c = prev[x], (prev[x - 1] if x else 0)
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return rows


if __name__ == "__main__":
    main()
