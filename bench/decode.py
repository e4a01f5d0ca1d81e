#!/usr/bin/env python3
"""bench/decode: Strata and llama.cpp side by side on the same GGUF weights, 2 threads, back to back.

For F32, Q8_0 and Q4_1 it prints prompt tokens/s (pp64, pp512) and decode tokens/s (tg128) for each engine
and their ratio (Strata / llama.cpp; goal >= 1.2, issue 24), plus Strata's decode speed as a fraction of the
memory-bandwidth limit (weight bytes per token / measured copy bandwidth).

The weights: SmolLM2-135M-Instruct (scripts/fetch-model.sh, Q4_1 as published). Strata imports it, then exports
F32 and Q8_0 GGUFs; both engines then run each GGUF file as it is (`strata bench decode --gguf FILE` keeps its
Q8_0/Q4_1 blocks, as llama.cpp does), with the same number of threads. llama-bench is built from the
llama-cpp-python sdist on PyPI (pinned) unless LLAMA_BENCH points at one; the build (~10 min on 2 vCPUs) is
cached in target/llama.cpp.

usage: bench/decode.py [--threads 2] [--reps 3]
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llamacpp import sh, tool  # noqa: E402


def strata(*args):
    return sh([os.path.join(ROOT, "target", "release", "strata"), "--workdir", os.path.join(ROOT, "target", "bench-store"), *args])


def run_llama(exe, gguf, threads, reps):
    out = sh([exe, "-m", gguf, "-t", str(threads), "-p", "64,512", "-n", "128", "-r", str(reps), "-o", "json"])
    rows = {}
    for r in json.loads(out):
        key = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
        rows[key] = r["avg_ts"]
    return rows


def run_strata(gguf, threads, reps):
    env_threads = dict(os.environ, STRATA_THREADS=str(threads))
    out = subprocess.run([os.path.join(ROOT, "target", "release", "strata"), "--workdir", os.path.join(ROOT, "target", "bench-store"),
                          "bench", "decode", "--gguf", gguf, "--reps", str(reps)],
                         check=True, text=True, capture_output=True, env=env_threads).stdout
    doc = json.loads(out)
    res = doc["results"]
    rows = {r["test"]: r["tokens_per_s"] for r in res}
    tg = next(r for r in res if r["test"].startswith("tg"))
    run_strata.peak_rss_mib = doc.get("peak_rss_mib", float("nan"))
    return rows, tg["fraction_of_bandwidth_limit"], tg["copy_bandwidth_gb_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    sh(["cargo", "build", "--release", "-q", "-p", "strata-cli"], cwd=ROOT)
    gguf_q41 = sh(["bash", os.path.join(ROOT, "scripts", "fetch-model.sh"), os.path.join(ROOT, "data")]).strip()
    exe = tool("llama-bench")
    strata("import", gguf_q41, "--name", "smollm2")
    files = {"q4_1": gguf_q41}
    for ty in ("f32", "q8_0"):
        path = os.path.join(ROOT, "target", f"smollm2-{ty}.gguf")
        strata("export", "--model", "smollm2", "--type", ty, "--gguf", path)
        files[ty] = path
    print(f"SmolLM2-135M, {a.threads} threads, median of {a.reps}; ratio = Strata / llama.cpp (goal >= 1.2, issue 24)")
    print(f"{'type':<6} {'test':<6} {'llama.cpp t/s':>14} {'strata t/s':>11} {'ratio':>7}")
    for ty in ("f32", "q8_0", "q4_1"):
        ll = run_llama(exe, files[ty], a.threads, a.reps)
        st, frac, bw = run_strata(files[ty], a.threads, a.reps)
        for test in ("pp64", "pp512", "tg128"):
            print(f"{ty:<6} {test:<6} {ll[test]:>14.1f} {st[test]:>11.1f} {st[test] / ll[test]:>7.2f}")
        print(f"{ty:<6} strata decode = {frac:.0%} of the memory-bandwidth limit (copy bandwidth {bw:.1f} GB/s)")


if __name__ == "__main__":
    main()
