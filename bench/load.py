#!/usr/bin/env python3
"""bench/load: 64 concurrent streaming clients for 60 s against one `strata serve`, loopback only, spread over
a base model and two LoRA adapters stacked on it (the demo's base, `med-lora` on it, `us-lora` on that).

Checks, and prints: no errors; no lost or mixed streams — every stream is compared with what the same request
(same model, prompt and seed) produces alone on an idle server afterwards; the server's RSS flat after
warm-up (sampled every second; the mean of the last quarter against the end of the first quarter, within 5% or
within three 2 MiB huge pages, whichever is more: the heap grows in such steps).
Exit status 1 if a check fails.

The store is the quick demo plus two 8-step LoRA adapters, made in target/load-store on first run (a few
seconds); --workdir and --models use another store.

usage: bench/load.py [--clients 64] [--seconds 60] [--workdir DIR --models base,a,b] [--strata-args '--quant q4_1']
"""
import argparse
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sse import percentile, stream  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRATA = os.path.join(ROOT, "target", "release", "strata")
PROMPTS = ["The liver", "Findings: the gallbladder", "Impression:", "The patient was seen for", "Ultrasound of the",
           "The kidneys are", "No free fluid", "The spleen measures"]


def make_store(store):
    def run(*args):
        subprocess.run([STRATA, "--workdir", store, *args], check=True, capture_output=True)
    if not os.path.exists(os.path.join(store, "models", "base")):
        run("demo", "--quick")
    for name, parent, tokens in (("med-lora", "base", "medical-tokens"), ("us-lora", "med-lora", "ultrasound-tokens")):
        if not os.path.exists(os.path.join(store, "adapters", name)):
            run("finetune", "--name", name, "--parent", parent, "--tokens", tokens, "--batch-size", "4", "--seq-len",
                "64", "--lr", "1e-2", "--steps", "8", "--lora-r", "4", "--lora-targets",
                "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "target", "load-store"))
    ap.add_argument("--models", default="base,med-lora,us-lora")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--port", type=int, default=18090)
    ap.add_argument("--strata-args", default="", help="more flags for strata serve, e.g. '--quant q4_1'")
    a = ap.parse_args()
    models = a.models.split(",")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "strata-cli"], cwd=ROOT, check=True)
    if a.workdir == os.path.join(ROOT, "target", "load-store"):
        make_store(a.workdir)
    server = subprocess.Popen([STRATA, "--workdir", a.workdir, "serve", "--port", str(a.port), "--max-batch", "64",
                               *a.strata_args.split()],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{a.port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        done, errors, rss = [], [], []
        lock = threading.Lock()
        stop_at = time.perf_counter() + a.seconds

        def body(model, prompt, seed):
            return {"model": model, "prompt": prompt, "max_tokens": a.max_tokens, "temperature": 0.8, "seed": seed,
                    "stream_options": {"include_usage": True}}

        def client(k):
            rng = random.Random(k)
            while time.perf_counter() < stop_at:
                req = (models[rng.randrange(len(models))], rng.choice(PROMPTS), rng.randrange(1 << 30))
                text, first, total, usage, err = stream("127.0.0.1", a.port, "/v1/completions", body(*req))
                with lock:
                    (errors if err else done).append((req, text, first, usage) if not err else (req, err))

        def sampler():
            while time.perf_counter() < stop_at:
                rss.append(rss_kib(server.pid))
                time.sleep(1)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)] + [threading.Thread(target=sampler)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        tokens = sum(d[3] or 0 for d in done)
        ttft = [d[2] for d in done if d[2] is not None]
        print(f"{a.clients} clients, {wall:.0f} s, models {models}: {len(done)} requests, {len(errors)} errors, "
              f"{tokens / wall:.0f} tokens/s, time to first token p50 {percentile(ttft, 50) * 1e3:.0f} ms "
              f"p99 {percentile(ttft, 99) * 1e3:.0f} ms")
        # each stream against the same request alone (the server idle now)
        rng = random.Random(0)
        sample = done if len(done) <= 300 else rng.sample(done, 300)
        mixed = []
        for req, text, _, _ in sample:
            alone, _, _, _, err = stream("127.0.0.1", a.port, "/v1/completions", body(*req))
            if err or alone != text:
                mixed.append((req, text, alone, err))
        print(f"streams compared with the same request alone: {len(sample)}, different: {len(mixed)}")
        for m in mixed[:3]:
            print("  ", m)
        # RSS: the last sample of the first quarter (warm-up: the allocator's pools and the prefix cache fill
        # in the first seconds) against the mean of the last quarter
        q = max(1, len(rss) // 4)
        warm = rss[q - 1] if rss else 0
        tail = rss[-q:] or [0]
        growth = (sum(tail) / len(tail)) / warm - 1 if len(rss) > 2 else 0.0
        print(f"RSS: {rss[0] / 1024 if rss else 0:.0f} MiB at the start, {warm / 1024:.0f} MiB after warm-up "
              f"({q} s), {tail[-1] / 1024:.0f} MiB at the end ({growth:+.1%}); peak {max(rss or [0]) / 1024:.0f} MiB")
        for e in errors[:3]:
            print("  error:", e)
        # flat: within 5%, or within 3 of the 2 MiB huge pages the allocator's heap grows by (transparent huge
        # pages), whichever is more; a per-request leak grows without bound over tens of thousands of requests
        flat = growth < 0.05 or (sum(tail) / len(tail)) - warm < 3 * 2048
        ok = not errors and not mixed and flat and done
        print("OK" if ok else "FAILED")
        sys.exit(0 if ok else 1)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
