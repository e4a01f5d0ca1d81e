#!/usr/bin/env python3
"""bench/lora: LoRA fine-tuning of SmolLM2-135M-Instruct in Strata and in PEFT + PyTorch eager, side by side.

Both start from the same weights (the GGUF imported into a Strata store, dequantised to f32; transformers
loads that folder as it is), train a LoRA adapter r 16, alpha 32, no dropout, on q/k/v/o_proj with AdamW
(betas 0.9/0.95, lr 5e-4 constant) on the same token windows (Strata's shard read in order, sequence 256,
batch 4), and report seconds per step (median after the first), peak RSS and the first losses; then the
ratios. Goal: speed ratio >= 1.5 and Strata's memory <= PyTorch's. Runs in the torch venv of bench/train.py
(target/bench-torch/venv, plus peft).

usage: bench/lora.py [--steps 6] [--threads 2]
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train as tb  # noqa: E402  (sh, torch_python, corpus, the release binary)

WORK = os.path.join(tb.ROOT, "target", "bench-lora")
STORE = os.path.join(WORK, "store")
SEQ, BATCH, R, ALPHA, LR = 256, 4, 16, 32, 5e-4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]

TORCH = r'''
import json, resource, sys, time
import numpy as np, torch, torch.nn.functional as F
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
folder, shard, threads, steps, batch, seq, r, alpha, lr, targets, out = sys.argv[1:]
threads, steps, batch, seq, r = int(threads), int(steps), int(batch), int(seq), int(r)
torch.set_num_threads(threads)
ids = read_shard(shard)
windows = len(ids) - seq
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=r, lora_alpha=float(alpha), lora_dropout=0.0,
                                         target_modules=targets.split(","), task_type="CAUSAL_LM"))
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=float(lr), betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
losses, times = [], []
for step in range(steps):
    t0 = time.perf_counter()
    rows = [((step * batch + i) * seq) % windows for i in range(batch)]
    chunk = torch.from_numpy(np.stack([ids[s:s + seq + 1] for s in rows]))
    x, y = chunk[:, :-1], chunk[:, 1:]
    logits = model(input_ids=x).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    losses.append(loss.item())
    times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
trainable = sum(p.numel() for p in params)
json.dump({"losses": losses, "times": times, "peak_rss_mib": peak, "trainable": trainable}, open(out, "w"))
'''


def strata(*args, threads=None):
    cmd = [tb.STRATA, "--workdir", STORE]
    if threads:
        cmd += ["--threads", str(threads)]
    return tb.sh(cmd + [str(a) for a in args])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if not os.path.exists(tb.STRATA):
        tb.sh(["cargo", "build", "--release", "-q", "-p", "strata-cli"], cwd=tb.ROOT)
    py = tb.torch_python(["peft==0.21.2"])
    shard = tb.smol_store(WORK, STORE, n_docs=200)

    strata("finetune", "--name", "lora", "--parent", "smol", "--tokens", "toks", "--lora-r", R,
           "--lora-alpha", ALPHA, "--lora-targets", ",".join(TARGETS), "--steps", a.steps, "--batch-size", BATCH,
           "--seq-len", SEQ, "--lr", LR, "--warmup-steps", 0, "--schedule", "wsd", "--sampling", "sequential",
           "--eval-every", 100000, threads=a.threads)
    manifest = json.load(open(os.path.join(STORE, "adapters", "lora", "manifest.json")))
    rows = [json.loads(l) for l in open(os.path.join(STORE, "runs", manifest["counts"]["run"], "metrics.jsonl"))]
    s = {"losses": [r["loss"] for r in rows], "times": [BATCH * SEQ / r["tokens_per_s"] for r in rows],
         "peak_rss_mib": max(r["peak_rss_mib"] for r in rows), "trainable": manifest["counts"]["parameters"]}
    script = os.path.join(WORK, "torch_lora.py")
    open(script, "w").write(tb.READ_SHARD + TORCH)
    out = os.path.join(WORK, "torch.json")
    tb.sh([py, script, os.path.join(STORE, "models", "smol"), shard, str(a.threads), str(a.steps), str(BATCH),
           str(SEQ), str(R), str(ALPHA), str(LR), ",".join(TARGETS), out])
    p = json.load(open(out))

    sec = lambda r: statistics.median(r["times"][1:])
    print(f"SmolLM2-135M LoRA r {R} on {'/'.join(t[0] for t in TARGETS)}, batch {BATCH} x {SEQ}, f32, "
          f"{a.steps} steps, {a.threads} threads")
    print(f"{'tool':<16}{'trainable':>11}{'s/step':>9}{'peak RSS MiB':>15}  first losses")
    for name, r in [("strata", s), ("peft+pytorch", p)]:
        first = " ".join(f"{x:.4f}" for x in r["losses"][:3])
        print(f"{name:<16}{r['trainable']:>11}{sec(r):>9.2f}{r['peak_rss_mib']:>15.0f}  {first}")
    print(f"speed ratio strata/peft: {sec(p) / sec(s):.2f} (goal >= 1.5)")
    print(f"peak RSS ratio strata/peft: {s['peak_rss_mib'] / p['peak_rss_mib']:.2f} (goal <= 1)")


if __name__ == "__main__":
    main()
