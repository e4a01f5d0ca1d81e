#!/usr/bin/env python3
"""bench/builds: two builds of Strata side by side on the same GGUF weights, 2 threads, back to back — for a change
that must not move speed (a refactoring), measured against the build before it.

For each weight type it runs `strata bench decode --gguf FILE` (pp64, pp512, tg128 tokens/s, and tg128x8: eight
sequences decoded in one batched forward, as the server's scheduler runs them) alternately with the two binaries,
--rounds times, and prints each figure's median per build and their ratio (after / before; within noise: about
0.9–1.1 on this shared machine). Then the server under --levels concurrent streaming chat clients (bench/serve.py's
load, loopback only), each build in turn, the same seconds per level.

The weights: SmolLM2-135M-Instruct Q4_1 as published (scripts/fetch-model.sh) and its F32 and Q8_0 exports, the
same files for both builds.

usage: bench/builds.py --before PATH/TO/strata [--after target/release/strata] [--rounds 3] [--types f32,q8_0,q4_1]
       [--levels 1,8] [--seconds 15]
A previous commit's binary: git worktree add /tmp/before REV && (cd /tmp/before && cargo build --release -p strata-cli)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llamacpp import ROOT, sh  # noqa: E402
from serve import load, wait_ready  # noqa: E402

STORE = os.path.join(ROOT, "target", "bench-builds-store")


def decode(exe, gguf, threads, reps):
    env = dict(os.environ, STRATA_THREADS=str(threads))
    out = subprocess.run([exe, "--workdir", STORE, "bench", "decode", "--gguf", gguf, "--reps", str(reps), "--batch", "8"],
                         check=True, text=True, capture_output=True, env=env).stdout
    return {r["test"]: r["tokens_per_s"] for r in json.loads(out)["results"]}


def serve(exe, model, port, levels, seconds, threads):
    env = dict(os.environ, STRATA_THREADS=str(threads))
    proc = subprocess.Popen([exe, "--workdir", STORE, "serve", "--port", str(port), "--model", model, "--max-batch", "64"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc, exe)
        return {c: load(port, c, seconds, model) for c in levels}
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="the strata binary of the build to compare against")
    ap.add_argument("--after", default=os.path.join(ROOT, "target", "release", "strata"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--types", default="f32,q8_0,q4_1")
    ap.add_argument("--levels", default="1,8")
    ap.add_argument("--seconds", type=float, default=15)
    a = ap.parse_args()
    builds = {"before": a.before, "after": a.after}
    gguf = sh(["bash", os.path.join(ROOT, "scripts", "fetch-model.sh"), os.path.join(ROOT, "data")]).strip()
    strata = lambda *args: subprocess.run([a.after, "--workdir", STORE, *args], check=True, capture_output=True)  # noqa: E731
    strata("import", gguf, "--name", "smollm2")
    files = {"q4_1": gguf}
    for ty in a.types.split(","):
        if ty != "q4_1":
            files[ty] = os.path.join(ROOT, "target", f"smollm2-{ty}.gguf")
            if not os.path.exists(files[ty]):
                strata("export", "--model", "smollm2", "--type", ty, "--gguf", files[ty])
            strata("import", files[ty], "--name", f"smollm2-{ty}")
    cpu = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    fam = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("cpu family")), "?")
    print(f"{cpu} (family {fam}), {a.threads} threads; median of {a.rounds} alternating rounds; ratio = after / before")
    print(f"{'type':<5} {'test':<8} {'before t/s':>10} {'after t/s':>10} {'ratio':>6}")
    for ty in a.types.split(","):
        runs = {b: [] for b in builds}
        for _ in range(a.rounds):
            for b, exe in builds.items():
                runs[b].append(decode(exe, files[ty], a.threads, a.reps))
        for test in runs["after"][0]:
            med = {b: statistics.median(r[test] for r in runs[b]) for b in builds}
            print(f"{ty:<5} {test:<8} {med['before']:>10.1f} {med['after']:>10.1f} {med['after'] / med['before']:>6.2f}",
                  flush=True)
    levels = [int(x) for x in a.levels.split(",")]
    for ty in a.types.split(","):
        model = "smollm2" if ty == "q4_1" else f"smollm2-{ty}"
        res = {b: serve(exe, model, 18090 + i, levels, a.seconds, a.threads) for i, (b, exe) in enumerate(builds.items())}
        for c in levels:
            bf, af = res["before"][c], res["after"][c]
            errors = len(bf["errors"]) + len(af["errors"])
            print(f"serve {ty:<5} {c:>2} clients: before {bf['tps']:.1f} t/s (TTFT p50 {bf['p50'] * 1e3:.0f} ms), "
                  f"after {af['tps']:.1f} t/s (p50 {af['p50'] * 1e3:.0f} ms), ratio {af['tps'] / bf['tps']:.2f}, "
                  f"errors {errors}", flush=True)


if __name__ == "__main__":
    main()
