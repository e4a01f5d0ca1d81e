#!/usr/bin/env python3
"""bench/tokenize: byte-level BPE encoding speed, Strata against HF tokenizers and tiktoken on the same text.

The tokenizer is SmolLM2's (imported from its GGUF by `strata import`, scripts/fetch-model.sh); the text is the
demo's general corpus (data/raw/general, scripts/fetch-data.sh: Brown, King James Bible, Shakespeare; 8,342
documents, ~17 MB).

1. Strata: `strata tokenize encode` — the whole step: read the dataset, encode, write the train/val shards.
2. HF tokenizers (its Python package, Rust inside) on the same documents: `encode_batch` and
   `encode_batch_fast` (no character offsets).
3. tiktoken: an Encoding built from the same vocabulary (ranks = ids through GPT-2's byte mapping; SmolLM2's
   split: each digit alone, then GPT-2's pattern), `encode_ordinary_batch`.

Every tool gets the machine's threads (2 here). MB/s of UTF-8 text, best of --rounds. Ids: Strata's shards
(each document ending with the end-of-text id, in the train or val stream) against HF tokenizers' for every
document; tiktoken's agreement with HF is printed for information (its split regex is a translation).
With `--split llama3` (or `qwen2`) the same vocabulary is given Llama 3's pre-tokenizer (a `Split` with its
regex, then `ByteLevel` without a regex; Qwen2's differs in runs of digits), and tiktoken gets that regex, the
one of its cl100k/o200k family. Prints the CPU family (/proc/cpuinfo: 25 = Zen 4, 26 = Zen 5). Goal
(issue 24): Strata >= 1x tiktoken, ids equal to `tokenizers` on every document.

usage: bench/tokenize.py [--rounds 3] [--split smollm2|llama3|qwen2]
"""
import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train as tb  # noqa: E402  (sh, torch_python, the release binary)

WORK = os.path.join(tb.ROOT, "target", "bench-tokenize")
STORE = os.path.join(WORK, "store")

PY = r'''
import json, os, sys, time
import numpy as np
import tiktoken
from tokenizers import Tokenizer
tok_json, corpus, store, rounds, eos, pat = (sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]),
                                            int(sys.argv[5]), sys.argv[6])
texts = [json.loads(l)["text"] for l in open(corpus)]
mb = sum(len(t.encode()) for t in texts) / 1e6
threads = os.cpu_count()
tk = Tokenizer.from_file(tok_json)
out = {"mb": mb, "docs": len(texts)}

def best(f):
    b = None
    for _ in range(rounds):
        t0 = time.perf_counter(); r = f(); dt = time.perf_counter() - t0
        b = dt if b is None else min(b, dt)
    return b, r

dt, hf = best(lambda: [e.ids for e in tk.encode_batch(texts, add_special_tokens=False)])
out["hf"] = mb / dt
dt, _ = best(lambda: tk.encode_batch_fast(texts, add_special_tokens=False))
out["hf_fast"] = mb / dt

# tiktoken from the same vocabulary: GPT-2's byte <-> character map undone for every token
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
cs, n = bs[:], 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
dec = {chr(c): b for b, c in zip(bs, cs)}
vocab = json.load(open(tok_json))["model"]["vocab"]
special = {a["content"] for a in json.load(open(tok_json))["added_tokens"]}
ranks = {bytes(dec[ch] for ch in t): i for t, i in vocab.items() if t not in special}
enc = tiktoken.Encoding("smollm2", pat_str=pat, mergeable_ranks=ranks, special_tokens={})
dt, tt = best(lambda: enc.encode_ordinary_batch(texts, num_threads=threads))
out["tiktoken"] = mb / dt
out["tiktoken_same"] = sum(a == b for a, b in zip(tt, hf))

# Strata's shards: documents in order, each in the train or the val stream, ending with eos
streams = []
for kind in ("train", "val"):
    ids = []
    for f in sorted(os.listdir(os.path.join(store, "tokens", "toks"))):
        if f.startswith(kind) and f.endswith(".bin"):
            raw = open(os.path.join(store, "tokens", "toks", f), "rb").read()
            assert raw[:8] == b"STRATOK1"  # header: magic, version, id width, count, vocabulary (32 bytes)
            width = int.from_bytes(raw[12:16], "little")
            ids.extend(np.frombuffer(raw[32:], dtype=np.uint16 if width == 2 else np.uint32).tolist())
    streams.append(ids)
pos, same = [0, 0], 0
for want in hf:
    for s in (0, 1):
        got = streams[s][pos[s]:pos[s] + len(want) + 1]
        if got == want + [eos]:
            pos[s] += len(want) + 1; same += 1
            break
out["strata_same"] = same
print(json.dumps(out))
'''


SMOLLM2_PAT = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2_PAT = LLAMA3_PAT.replace(r"\p{N}{1,3}", r"\p{N}")


def cpu_family():
    for line in open("/proc/cpuinfo"):
        if line.startswith("cpu family"):
            return line.split(":")[1].strip()
    return "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--split", choices=["smollm2", "llama3", "qwen2"], default="smollm2")
    a = ap.parse_args()
    if not os.path.exists(tb.STRATA):
        tb.sh(["cargo", "build", "--release", "-q", "-p", "strata-cli"], cwd=tb.ROOT)
    py = tb.torch_python(["tiktoken==0.12.0"])
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    corpus = os.path.join(WORK, "general.jsonl")
    with open(corpus, "w") as out:
        for f in sorted(os.listdir(os.path.join(tb.ROOT, "data", "raw", "general"))):
            out.write(open(os.path.join(tb.ROOT, "data", "raw", "general", f)).read())
    strata = lambda *args: tb.sh([tb.STRATA, "--workdir", STORE, *map(str, args)])  # noqa: E731
    gguf = tb.sh(["bash", os.path.join(tb.ROOT, "scripts", "fetch-model.sh"), os.path.join(tb.ROOT, "data")]).strip()
    strata("import", gguf, "--name", "smol")
    tok_json = os.path.join(STORE, "tokenizers", "smol", "tokenizer.json")
    pat = SMOLLM2_PAT
    if a.split != "smollm2":
        # the same vocabulary with Llama 3's (Qwen2's) pre-tokenizer, in the bench's own store
        pat = LLAMA3_PAT if a.split == "llama3" else QWEN2_PAT
        j = json.load(open(tok_json))
        j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pat}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
        json.dump(j, open(tok_json, "w"), ensure_ascii=False)
    strata("acquire", "--name", "general", "--input", corpus)
    best = None
    for i in range(a.rounds):
        shutil.rmtree(os.path.join(STORE, "tokens", "toks"), ignore_errors=True)
        t0 = time.perf_counter()
        strata("tokenize", "encode", "--name", "toks", "--dataset", "general", "--tokenizer", "smol")
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    eos = json.load(open(os.path.join(STORE, "tokens", "toks", "manifest.json")))["counts"]["eos_id"]
    script = os.path.join(WORK, "measure.py")
    open(script, "w").write(PY)
    r = json.loads(tb.sh([py, script, tok_json, corpus, STORE, str(a.rounds), str(eos), pat]))
    strata_mbs = r["mb"] / best
    print(f"SmolLM2's byte-level BPE with {a.split}'s split, {r['docs']} documents, {r['mb']:.1f} MB; {os.cpu_count()} threads; "
          f"cpu family {cpu_family()}; best of {a.rounds}")
    print(f"{'tool':<44}{'MB/s':>8}{'vs tiktoken':>13}")
    rows = [("strata tokenize encode (whole step)", strata_mbs),
            ("HF tokenizers encode_batch", r["hf"]),
            ("HF tokenizers encode_batch_fast", r["hf_fast"]),
            ("tiktoken encode_ordinary_batch", r["tiktoken"])]
    for name, v in rows:
        print(f"{name:<44}{v:>8.2f}{v / r['tiktoken']:>12.2f}x")
    print(f"ids: strata = tokenizers on {r['strata_same']} of {r['docs']} documents; "
          f"tiktoken = tokenizers on {r['tiktoken_same']} (information)")
    sys.exit(0 if r["strata_same"] == r["docs"] else 1)


if __name__ == "__main__":
    main()
