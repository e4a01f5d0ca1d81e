#!/usr/bin/env python3
"""bench/serve: Strata's server and llama.cpp's llama-server side by side on the same GGUF, 2 threads each,
loopback only, under 1, 8 and 32 concurrent streaming chat clients.

Each client sends chat requests (a ~45-token user turn starting with its own case number, so no server answers
a prompt it has already read; 64 tokens out with ignore_eos, so both servers generate exactly as much) one after
another for --seconds; the servers are measured in turn at each
level (llama-server, then Strata). Printed per level: aggregate completion tokens/s, time to first token
p50/p99, and the ratios Strata / llama.cpp (goal: >= 1.0 at 1 client, >= 1.5 at 32), and Strata's own
8-client aggregate over its 1-client figure (goal >= 2.5: batching reads the weights once for all).

The weights: SmolLM2-135M-Instruct Q4_1 as published (scripts/fetch-model.sh) and its Q8_0 export, each imported
into target/bench-store and given to both servers as the same file. llama-server is built from the pinned
llama-cpp-python sdist (bench/llamacpp.py; LLAMA_SERVER=path skips the build). TTFT ratio = llama.cpp's p50 /
Strata's (> 1: Strata answers sooner).

usage: bench/serve.py [--threads 2] [--seconds 20] [--levels 1,8,32] [--types q8_0,q4_1] [--strata-args '…']
"""
import argparse
import os
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llamacpp import ROOT, sh, tool  # noqa: E402
from sse import percentile, stream  # noqa: E402

STORE = os.path.join(ROOT, "target", "bench-store")
STRATA = os.path.join(ROOT, "target", "release", "strata")
PROMPT = ("Summarise for the referring physician: the liver is normal in size with smooth contour and homogeneous "
          "echotexture; no focal lesion; gallbladder without stones; common bile duct 4 mm.")
MAX_TOKENS = 64


def wait_ready(port, proc, what):
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} did not become ready")


def load(port, clients, seconds, model):
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS,
            "temperature": 0.0, "ignore_eos": True, "stream_options": {"include_usage": True}}
    results, errors = [], []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k):
        n = 0
        while time.perf_counter() < stop_at:
            # every request its own user turn (a case number first), so neither server answers a prompt it has
            # already read (llama-server reuses a slot's cached prefix; the shared chat-template head stays shared)
            n += 1
            req = dict(body, messages=[{"role": "user", "content": f"Case {k}-{n}. {PROMPT}"}])
            text, first, total, usage, err = stream("127.0.0.1", port, "/v1/chat/completions", req)
            with lock:
                if err or first is None:
                    errors.append(err or "no content")
                else:
                    results.append((first, total, usage or MAX_TOKENS))

    # one request first, so that loading and warm-up are not measured
    stream("127.0.0.1", port, "/v1/chat/completions", dict(body, max_tokens=4))
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tokens = sum(r[2] for r in results)
    ttft = [r[0] for r in results]
    return {"tps": tokens / wall, "p50": percentile(ttft, 50), "p99": percentile(ttft, 99), "n": len(results),
            "errors": errors}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--types", default="q8_0,q4_1")
    ap.add_argument("--strata-args", default="", help="more flags for strata serve, e.g. '--prefix-cache-mib 0'")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    sh(["cargo", "build", "--release", "-q", "-p", "strata-cli"], cwd=ROOT)
    gguf = sh(["bash", os.path.join(ROOT, "scripts", "fetch-model.sh"), os.path.join(ROOT, "data")]).strip()
    server = tool("llama-server")
    strata = lambda *args: subprocess.run([STRATA, "--workdir", STORE, *args], check=True, capture_output=True)  # noqa: E731
    strata("import", gguf, "--name", "smollm2")
    files = {"q4_1": gguf}
    for ty in a.types.split(","):
        if ty != "q4_1":
            files[ty] = os.path.join(ROOT, "target", f"smollm2-{ty}.gguf")
            strata("export", "--model", "smollm2", "--type", ty, "--gguf", files[ty])
            strata("import", files[ty], "--name", f"smollm2-{ty}")
    for ty in a.types.split(","):
        run_type(ty, files[ty], "smollm2" if ty == "q4_1" else f"smollm2-{ty}", server, levels, a)


def run_type(ty, gguf, model, server, levels, a):
    top = max(levels)
    llama = subprocess.Popen([server, "-m", gguf, "-t", str(a.threads), "-tb", str(a.threads), "--host", "127.0.0.1",
                              "--port", "18081", "-np", str(top), "-c", str(top * 256), "--no-webui"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, STRATA_THREADS=str(a.threads))
    strata = subprocess.Popen([STRATA, "--workdir", STORE, "serve", "--port", "18082", "--model", model,
                               "--max-batch", str(max(top, 64)), *a.strata_args.split()], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(18081, llama, "llama-server")
        wait_ready(18082, strata, "strata serve")
        print(f"\nSmolLM2-135M {ty.upper()}, {a.threads} threads each, {MAX_TOKENS} tokens per request, "
              f"{a.seconds:.0f} s per level; ratio = Strata / llama.cpp")
        print(f"{'clients':>7} | {'llama t/s':>9} {'p50 ms':>7} {'p99 ms':>7} | {'strata t/s':>10} {'p50 ms':>7} "
              f"{'p99 ms':>7} | {'t/s ratio':>9} {'TTFT ratio':>10}")
        ours = {}
        for c in levels:
            ll = load(18081, c, a.seconds, model)
            st = load(18082, c, a.seconds, model)
            ours[c] = st["tps"]
            print(f"{c:>7} | {ll['tps']:>9.1f} {ll['p50'] * 1e3:>7.0f} {ll['p99'] * 1e3:>7.0f} | {st['tps']:>10.1f} "
                  f"{st['p50'] * 1e3:>7.0f} {st['p99'] * 1e3:>7.0f} | {st['tps'] / ll['tps']:>9.2f} "
                  f"{ll['p50'] / st['p50']:>10.2f}", flush=True)
            for name, r in (("llama-server", ll), ("strata", st)):
                if r["errors"]:
                    print(f"  {name}: {len(r['errors'])} errors, first: {r['errors'][0]}")
        if 1 in ours and 8 in ours:
            print(f"strata 8 clients / 1 client: {ours[8] / ours[1]:.2f}x (goal >= 2.5)")
    finally:
        for p in (llama, strata):
            p.terminate()
            p.wait()

if __name__ == "__main__":
    main()
