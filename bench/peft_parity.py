#!/usr/bin/env python3
"""bench/peft_parity: Strata's model folders and LoRA adapters against transformers + PEFT, both ways.

1. SmolLM2-135M-Instruct imported from its GGUF (scripts/fetch-model.sh) into a Strata store; transformers'
   AutoModelForCausalLM loads the store's folder as it is, and its logits on a fixed sequence are compared
   with Strata's (`strata bench logits`).
2. Strata trains a LoRA adapter on it (all seven projections, 3 steps, so B is no longer zero); PEFT's
   PeftModel loads the store's adapter folder as it is; logits compared with Strata's.
3. PEFT makes an adapter (r 4, q/v/up, B initialised at random so it changes the logits) and saves it;
   `strata import DIR --base smol` brings it in; Strata's logits compared with PEFT's.

Goal: every largest difference ≤ 1e-4 relative to the largest logit. Runs in the torch venv of bench/train.py
(target/bench-torch/venv, plus peft).

usage: bench/peft_parity.py
"""
import json
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train as tb  # noqa: E402  (sh, torch_python, corpus, the release binary)

WORK = os.path.join(tb.ROOT, "target", "bench-peft")
STORE = os.path.join(WORK, "store")
PEFT = ["peft==0.21.2"]


def strata(*args):
    return tb.sh([tb.STRATA, "--workdir", STORE, *map(str, args)])


CHECK = r'''
import json, sys, torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM
from peft import LoraConfig, PeftModel, get_peft_model
mode, store, ids, work = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
x = torch.tensor([ids])
def rel(ours, theirs):
    d = abs(ours - theirs).max() / abs(theirs).max()
    return float(d)
def logits(m):
    with torch.no_grad():
        return m(input_ids=x).logits[0].float().numpy()
out = {}
if mode == "load":
    base = AutoModelForCausalLM.from_pretrained(f"{store}/models/smol", dtype=torch.float32)
    out["model folder (transformers vs strata)"] = rel(load_file(f"{work}/base.safetensors")["logits"], logits(base))
    lora = PeftModel.from_pretrained(base, f"{store}/adapters/smol-lora")
    out["strata adapter (peft vs strata)"] = rel(load_file(f"{work}/lora.safetensors")["logits"], logits(lora))
else:
    base = AutoModelForCausalLM.from_pretrained(f"{store}/models/smol", dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.0,
                     init_lora_weights=False, task_type="CAUSAL_LM")
    pm = get_peft_model(base, cfg)
    pm.save_pretrained(f"{work}/peft-made")
    import numpy as np
    np.save(f"{work}/peft-made.npy", logits(pm))
    out["saved"] = True
json.dump(out, sys.stdout)
'''

COMPARE = r'''
import json, sys, numpy as np
from safetensors.numpy import load_file
work = sys.argv[1]
ours, theirs = load_file(f"{work}/peft-made.safetensors")["logits"], np.load(f"{work}/peft-made.npy")
json.dump({"peft adapter (strata vs peft)": float(abs(ours - theirs).max() / abs(theirs).max())}, sys.stdout)
'''


def main():
    if not os.path.exists(tb.STRATA):
        tb.sh(["cargo", "build", "--release", "-q", "-p", "strata-cli"], cwd=tb.ROOT)
    py = tb.torch_python(PEFT)
    tb.smol_store(WORK, STORE, n_docs=60)
    strata("finetune", "--name", "smol-lora", "--parent", "smol", "--tokens", "toks", "--lora",
           "--lora-targets", "all-linear", "--steps", 3, "--batch-size", 2, "--seq-len", 64, "--lr", "5e-3",
           "--warmup-steps", 0)
    rng = random.Random(0)
    ids = [1] + [rng.randrange(100, 40000) for _ in range(23)]
    ids_arg = ",".join(map(str, ids))
    strata("bench", "logits", "--model", "smol", "--ids", ids_arg, "--out", os.path.join(WORK, "base.safetensors"))
    strata("bench", "logits", "--model", "smol-lora", "--ids", ids_arg, "--out", os.path.join(WORK, "lora.safetensors"))
    script = os.path.join(WORK, "check.py")
    open(script, "w").write(CHECK)
    results = json.loads(tb.sh([py, script, "load", STORE, json.dumps(ids), WORK]))
    tb.sh([py, script, "make", STORE, json.dumps(ids), WORK])
    strata("import", os.path.join(WORK, "peft-made"), "--name", "peft-made", "--base", "smol")
    strata("bench", "logits", "--model", "peft-made", "--ids", ids_arg,
           "--out", os.path.join(WORK, "peft-made.safetensors"))
    compare = os.path.join(WORK, "compare.py")
    open(compare, "w").write(COMPARE)
    results.update(json.loads(tb.sh([py, compare, WORK])))
    print(f"SmolLM2-135M-Instruct (GGUF → Strata store), {len(ids)} positions, f32")
    print(f"{'check':<42}{'max |diff| / max |logit|':>26}")
    worst = 0.0
    for k, v in results.items():
        worst = max(worst, v)
        print(f"{k:<42}{v:>26.2e}")
    print(f"largest: {worst:.2e} (goal <= 1e-4)")
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
