#!/usr/bin/env python3
"""bench/arch_parity: architectures that transformers itself writes, read by Strata, logits compared.

For each architecture (Gemma 3: gains 1 + w, q/k norms, sandwich norms, GeGLU, the scaled embedding,
query_pre_attn_scalar, sliding layers with their own RoPE base around a full one, the text longer than the
window; Qwen3: an RMSNorm of each query and key head before RoPE, a head size that is not hidden / heads; Qwen2
and Llama beside them as the known-good rows), transformers builds a small model with random
weights (torch.manual_seed; every norm gain drawn around 1 so a forward that skipped one would show) and saves
it with save_pretrained; a byte-level BPE tokenizer made with `tokenizers` goes beside it. `strata import`
brings the folder into a store; `strata bench logits` gives the training forward's logits and `--engine` the
inference engine's, on the same ids; transformers' own logits (eager attention, f32) are the reference.

Goal (issue 24): largest |difference| / largest |logit| <= 1e-5 on every row. Runs in the torch venv of
bench/train.py (target/bench-torch/venv). Prints the CPU family (/proc/cpuinfo: 25 = Zen 4, 26 = Zen 5).

usage: bench/arch_parity.py
"""
import json
import os
import random
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train as tb  # noqa: E402  (sh, torch_python, the release binary)

WORK = os.path.join(tb.ROOT, "target", "bench-arch")
ARCHS = os.environ.get("ARCHS", "gemma3,qwen3,qwen2,llama").split(",")
ENGINE = os.environ.get("ENGINE", "1") == "1"
STORE = os.path.join(WORK, "store")

MAKE = r'''
import json, sys, torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
import transformers
arch, out, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
common = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=True,
              bos_token_id=0, eos_token_id=1, attn_implementation="eager")
if arch == "gemma3":
    cfg = transformers.Gemma3TextConfig(head_dim=32, query_pre_attn_scalar=48, sliding_window=8,
                                        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                        **{**common, "num_hidden_layers": 3})
    cls = transformers.Gemma3ForCausalLM
elif arch == "qwen3":
    cfg = transformers.Qwen3Config(head_dim=32, rope_theta=1e6, **common)
    cls = transformers.Qwen3ForCausalLM
elif arch == "qwen2":
    cfg = transformers.Qwen2Config(rope_theta=1e6, **common)
    cls = transformers.Qwen2ForCausalLM
else:
    cfg = transformers.LlamaConfig(rope_theta=1e4, **{**common, "tie_word_embeddings": False})
    cls = transformers.LlamaForCausalLM
torch.manual_seed(0)
model = cls(cfg).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):  # Gemma's gains are 1 + w
            p.copy_((0 if arch == "gemma3" else 1) + 0.3 * torch.randn_like(p))
        elif name.endswith(".bias"):
            p.copy_(0.5 * torch.randn_like(p))
        else:
            p.copy_(0.08 * torch.randn_like(p))
model.save_pretrained(out, safe_serialization=True)
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=["<s>", "</s>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(["The liver measures 14.2 cm and the spleen is normal in size."] * 20, trainer)
tok.save(f"{out}/tokenizer.json")
json.dump({"bos_token": "<s>", "eos_token": "</s>"}, open(f"{out}/tokenizer_config.json", "w"))
with torch.no_grad():
    logits = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
import numpy as np
np.save(f"{out}/../{arch}-hf.npy", logits)
'''

COMPARE = r'''
import json, sys
import numpy as np
from safetensors.numpy import load_file
ref = np.load(sys.argv[1]).astype(np.float64)
out = {}
for path in sys.argv[2:]:
    got = load_file(path)["logits"].astype(np.float64)
    out[path] = float(np.abs(got - ref).max() / np.abs(ref).max())
print(json.dumps(out))
'''


def cpu_family():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("cpu family"):
                return line.split(":")[1].strip()
    except OSError:
        pass
    return "?"


def main():
    if not os.path.exists(tb.STRATA):
        tb.sh(["cargo", "build", "--release", "-q", "-p", "strata-cli"], cwd=tb.ROOT)
    py = tb.torch_python()
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    make, compare = os.path.join(WORK, "make.py"), os.path.join(WORK, "compare.py")
    open(make, "w").write(MAKE)
    open(compare, "w").write(COMPARE)
    rng = random.Random(0)
    ids = [0] + [rng.randrange(2, 320) for _ in range(31)]
    rows = []
    for arch in ARCHS:
        folder = os.path.join(WORK, arch)
        tb.sh([py, make, arch, folder, json.dumps(ids)])
        tb.sh([tb.STRATA, "--workdir", STORE, "import", folder, "--name", arch])
        outs = []
        for engine in [False, True][: 2 if ENGINE else 1]:
            out = os.path.join(WORK, f"{arch}-{'engine' if engine else 'train'}.safetensors")
            tb.sh([tb.STRATA, "--workdir", STORE, "bench", "logits", "--model", arch, "--ids",
                   ",".join(map(str, ids)), "--out", out, *(["--engine"] if engine else [])])
            outs.append(out)
        rel = json.loads(tb.sh([py, compare, os.path.join(WORK, f"{arch}-hf.npy"), *outs]))
        rows.append((arch, rel[outs[0]], rel[outs[-1]] if ENGINE else float("nan")))
    print(f"transformers 5.24 (torch 2.15, eager, f32) vs Strata, {len(ids)} positions; cpu family {cpu_family()}")
    print(f"{'architecture':<14}{'training forward':>18}{'inference engine':>18}")
    worst = 0.0
    for arch, a, b in rows:
        worst = max(worst, a, b if ENGINE else a)
        print(f"{arch:<14}{a:>18.2e}{b:>18.2e}")
    print(f"largest: {worst:.2e} (goal <= 1e-5, relative to the largest logit)")
    sys.exit(0 if worst <= 1e-5 else 1)


if __name__ == "__main__":
    main()
