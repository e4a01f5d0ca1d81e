#!/usr/bin/env python3
"""bench/train: Strata and PyTorch eager (transformers' LlamaForCausalLM) training the same model side by side.

Model: Llama, 6 layers, hidden 384, 6 heads, intermediate 1024, context 256, vocab 8192, f32, untied
embeddings (13.8M parameters). Both start from the same weights (PyTorch initialises them, saves a Hugging
Face folder with safetensors, Strata imports that folder), train on the same token windows (Strata encodes
a seeded synthetic corpus; both read its shard in order: row i is the window at i*256, `--sampling
sequential` in Strata), with the same optimiser and schedule: AdamW (betas 0.9/0.95, eps 1e-8, weight decay
0.1 on matrices only), lr 1e-3 cosine to 5e-5 without warmup, gradient clipping at 1.0, batch 16.

For each thread count it prints tokens/s (median over the steps after the first two) and peak RSS of each
tool, then the first 30 losses of both, their largest relative difference (goal: within 1%), and the speed
ratio Strata / PyTorch with each tool at its best thread count (goal >= 1.5).

A second row fine-tunes all of SmolLM2-135M-Instruct (imported from its GGUF and dequantised to f32;
sequence 256, batch 4) in both: seconds per step and peak RSS.

The PyTorch side runs in its own venv (target/bench-torch/venv, created on first use with the pinned
versions below; torch pulls ~3 GB of wheels). Run on a quiet machine: another process halves any figure.

usage: bench/train.py [--steps 40] [--threads 1,2] [--smol-steps 4] [--skip-smol]
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "target", "bench-train")
STORE = os.path.join(WORK, "store")
VENV = os.path.join(ROOT, "target", "bench-torch", "venv")
PINS = ["torch==2.15.0", "transformers==5.24.0", "safetensors==0.8.0", "numpy==2.4.6"]
STRATA = os.path.join(ROOT, "target", "release", "strata")
VOCAB, SEQ, BATCH, LR, MIN_LR = 8192, 256, 16, 1e-3, 5e-5


def sh(cmd, **kw):
    r = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def torch_python(extra=()):
    """The venv's python, created with PINS on first use; `extra` pinned packages are added when missing."""
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        sh([sys.executable, "-m", "venv", VENV])
        print("installing torch + transformers (~3 GB) ...", file=sys.stderr)
        sh([os.path.join(VENV, "bin", "pip"), "install", "-q", *PINS])
    if extra:
        sh([os.path.join(VENV, "bin", "pip"), "install", "-q", *extra])
    return py


def strata(*args, threads=None):
    cmd = [STRATA, "--workdir", STORE]
    if threads:
        cmd += ["--threads", str(threads)]
    return sh(cmd + list(args))


def corpus(path, n_docs=700, seed=0):
    """Documents of word tokens w0..w8191 from a seeded bigram process (so the loss has something to learn)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for d in range(n_docs):
            w = rng.randrange(VOCAB - 1) + 1
            words = []
            for _ in range(rng.randrange(300, 900)):
                words.append(f"w{w}")
                w = (w * 31 + int(rng.paretovariate(1.2))) % (VOCAB - 1) + 1
            f.write(json.dumps({"id": f"doc{d}", "text": " ".join(words)}) + "\n")


# A Strata token shard as numpy ids (header: STRATOK1, version, id width, count, vocab; then the ids).
READ_SHARD = r'''
import numpy as np
def read_shard(path):
    raw = open(path, "rb").read()
    assert raw[:8] == b"STRATOK1"
    width = int.from_bytes(raw[12:16], "little")
    return np.frombuffer(raw[32:], dtype=np.uint16 if width == 2 else np.uint32).astype(np.int64)
'''


def smol_store(work, store, n_docs):
    """A fresh store under `work` with SmolLM2-135M-Instruct imported (as `smol`) and a synthetic corpus
    encoded with its tokenizer (`toks`); returns the corpus's training shard."""
    sh(["rm", "-rf", work])
    os.makedirs(work)
    run = lambda *a: sh([STRATA, "--workdir", store, *map(str, a)])
    gguf = sh(["bash", os.path.join(ROOT, "scripts", "fetch-model.sh"), os.path.join(ROOT, "data")]).strip()
    run("import", gguf, "--name", "smol", "--safetensors", "f32")  # safetensors: transformers reads the folder
    data = os.path.join(work, "corpus.jsonl")
    corpus(data, n_docs=n_docs)
    run("acquire", "--name", "corpus", "--input", data)
    run("tokenize", "encode", "--name", "toks", "--dataset", "corpus", "--tokenizer", "smol")
    return os.path.join(store, "tokens", "toks", "train-00000.bin")


# The PyTorch side, run as its own process (one per configuration, so its peak RSS is its own).
TORCH = r'''
import json, math, resource, sys, time
import numpy as np, torch, torch.nn.functional as F
from transformers import LlamaForCausalLM

mode, folder, shard, threads, steps, batch, seq, lr, min_lr, out = sys.argv[1:]
threads, steps, batch, seq = int(threads), int(steps), int(batch), int(seq)
lr, min_lr = float(lr), float(min_lr)
torch.set_num_threads(threads)
ids = read_shard(shard)
windows = len(ids) - seq
model = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
model.train()
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=lr, betas=(0.9, 0.95), eps=1e-8)
losses, times = [], []
for step in range(steps):
    t0 = time.perf_counter()
    cur = min_lr + 0.5 * (1 + math.cos(math.pi * step / steps)) * (lr - min_lr)
    for g in opt.param_groups:
        g["lr"] = cur
    rows = [((step * batch + r) * seq) % windows for r in range(batch)]
    chunk = torch.from_numpy(np.stack([ids[s:s + seq + 1] for s in rows]))
    x, y = chunk[:, :-1], chunk[:, 1:]
    logits = model(input_ids=x).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    losses.append(loss.item())
    times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
json.dump({"losses": losses, "times": times, "peak_rss_mib": peak,
           "attn": model.config._attn_implementation}, open(out, "w"))
'''

INIT = r'''
import json, os, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
out, vocab, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=vocab, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                  num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=seq,
                  rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                  bos_token_id=0, eos_token_id=0)
LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
words = {"<eos>": 0, **{f"w{i}": i for i in range(1, vocab)}}
tok = {"version": "1.0", "truncation": None, "padding": None,
       "added_tokens": [{"id": 0, "content": "<eos>", "single_word": False, "lstrip": False, "rstrip": False,
                         "normalized": False, "special": True}],
       "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None,
       "decoder": None, "model": {"type": "WordLevel", "vocab": words, "unk_token": "<eos>"}}
json.dump(tok, open(os.path.join(out, "tokenizer.json"), "w"))
json.dump({"eos_token": "<eos>", "tokenizer_class": "PreTrainedTokenizerFast"},
          open(os.path.join(out, "tokenizer_config.json"), "w"))
'''


def run_torch(py, folder, shard, threads, steps, batch, tag):
    out = os.path.join(WORK, f"torch-{tag}-{threads}.json")
    script = os.path.join(WORK, "torch_train.py")
    open(script, "w").write(READ_SHARD + TORCH)
    sh([py, script, "train", folder, shard, str(threads), str(steps), str(batch), str(SEQ), str(LR), str(MIN_LR), out])
    return json.load(open(out))


def run_strata(name, parent, tokens, threads, steps, batch):
    strata("finetune", "--name", name, "--parent", parent, "--tokens", tokens, "--steps", str(steps),
           "--batch-size", str(batch), "--seq-len", str(SEQ), "--lr", str(LR), "--warmup-steps", "0",
           "--sampling", "sequential", "--eval-every", "100000", threads=threads)
    manifest = json.load(open(os.path.join(STORE, "models", name, "manifest.json")))
    rows = [json.loads(l) for l in open(os.path.join(STORE, "runs", manifest["counts"]["run"], "metrics.jsonl"))]
    return {"losses": [r["loss"] for r in rows], "times": [batch * SEQ / r["tokens_per_s"] for r in rows],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rows)}


def tps(r, batch):
    return batch * SEQ / statistics.median(r["times"][2:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--smol-steps", type=int, default=4)
    ap.add_argument("--skip-smol", action="store_true")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    if not os.path.exists(STRATA):
        sh(["cargo", "build", "--release", "-q", "-p", "strata-cli"], cwd=ROOT)
    py = torch_python()
    sh(["rm", "-rf", WORK])
    os.makedirs(WORK)
    init = os.path.join(WORK, "init")
    script = os.path.join(WORK, "init.py")
    open(script, "w").write(INIT)
    sh([py, script, init, str(VOCAB), str(SEQ)])
    data = os.path.join(WORK, "corpus.jsonl")
    corpus(data)
    strata("import", init, "--name", "init")
    strata("acquire", "--name", "corpus", "--input", data)
    strata("tokenize", "encode", "--name", "toks", "--dataset", "corpus", "--tokenizer", "init")
    shard = os.path.join(STORE, "tokens", "toks", "train-00000.bin")

    print(f"Llama 13.8M (6 x 384, vocab {VOCAB}), batch {BATCH} x {SEQ}, f32, AdamW, {a.steps} steps")
    print(f"{'tool':<10}{'threads':>8}{'tokens/s':>12}{'peak RSS MiB':>15}")
    results = {}
    for t in threads:
        s = run_strata(f"s{t}", "init", "toks", t, a.steps, BATCH)
        p = run_torch(py, init, shard, t, a.steps, BATCH, "small")
        results[t] = (s, p)
        print(f"{'strata':<10}{t:>8}{tps(s, BATCH):>12.0f}{s['peak_rss_mib']:>15.0f}")
        print(f"{'pytorch':<10}{t:>8}{tps(p, BATCH):>12.0f}{p['peak_rss_mib']:>15.0f}   (attention: {p['attn']})")
    bs = max(threads, key=lambda t: tps(results[t][0], BATCH))
    bp = max(threads, key=lambda t: tps(results[t][1], BATCH))
    s, p = results[bs][0], results[bp][1]
    n = min(30, a.steps)
    print(f"\nfirst {n} losses (strata @ {bs} threads | pytorch @ {bp} threads | relative difference)")
    worst = 0.0
    for i in range(n):
        d = abs(s["losses"][i] - p["losses"][i]) / abs(p["losses"][i])
        worst = max(worst, d)
        print(f"{i + 1:>4} {s['losses'][i]:>10.5f} {p['losses'][i]:>10.5f} {d:>10.2e}")
    print(f"largest relative loss difference over {n} steps: {worst:.2e} (goal <= 1e-2)")
    print(f"speed ratio strata/pytorch (best threads {bs} vs {bp}): {tps(s, BATCH) / tps(p, BATCH):.2f} (goal >= 1.5)")
    print(f"peak RSS ratio strata/pytorch: {s['peak_rss_mib'] / p['peak_rss_mib']:.2f}")

    if a.skip_smol:
        return
    gguf = sh(["bash", os.path.join(ROOT, "scripts", "fetch-model.sh"), os.path.join(ROOT, "data")]).strip()
    strata("import", gguf, "--name", "smol", "--safetensors", "f32")  # safetensors: transformers reads the folder
    strata("tokenize", "encode", "--name", "smol-toks", "--dataset", "corpus", "--tokenizer", "smol")
    t = bs
    s = run_strata("smol-ft", "smol", "smol-toks", t, a.smol_steps, 4)
    p = run_torch(py, os.path.join(STORE, "models", "smol"), os.path.join(STORE, "tokens", "smol-toks", "train-00000.bin"),
                  bp, a.smol_steps, 4, "smol")
    sec = lambda r: statistics.median(r["times"][1:])
    print(f"\nSmolLM2-135M full fine-tuning step, batch 4 x {SEQ}, f32")
    print(f"{'tool':<10}{'threads':>8}{'s/step':>10}{'peak RSS MiB':>15}")
    print(f"{'strata':<10}{t:>8}{sec(s):>10.2f}{s['peak_rss_mib']:>15.0f}")
    print(f"{'pytorch':<10}{bp:>8}{sec(p):>10.2f}{p['peak_rss_mib']:>15.0f}")
    print(f"speed ratio strata/pytorch: {sec(p) / sec(s):.2f}; first losses {s['losses'][0]:.4f} vs {p['losses'][0]:.4f}")


if __name__ == "__main__":
    main()
