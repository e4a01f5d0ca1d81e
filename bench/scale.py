#!/usr/bin/env python3
"""bench/scale: data-parallel training over MPI on this machine, 1 process against 2 ranks, and what it
predicts for a cluster.

Rows: SmolLM2-135M-Instruct (imported from its GGUF) fine-tuned on a synthetic corpus, as a LoRA adapter
(r 8 on q/k/v/o, global batch 8 x 256 tokens) and in full (global batch 4 x 256). Each row runs the same job
as one process with every core (`--threads` = cores) and as `mpirun -np 2` (each rank half the cores and
half of every global batch), and prints tokens/s (median of the steps after the first two), the seconds per
step spent in collective operations (`comm_s` in metrics.jsonl: the all-reduce of the gradients, waiting
for the other rank included), peak RSS, and whether both runs' first losses agree (relative 1e-5).

Then the model of the README ("Past one machine"): weak scaling, each node a fixed batch, one ring
all-reduce of the gradients per step, not overlapped with the backward (Strata sums after the backward):

    t_step(N) = t_compute + 2(N-1)/N * G / bandwidth + 2(N-1) * latency,   efficiency = t_compute / t_step

with G the gradient bytes (trainable parameters x 4), t_compute the measured step of one process here, and
the bandwidths stated (25 Gb/s Ethernet; 200 Gb/s InfiniBand HDR) with a latency of 5 us per ring step.

Needs Debian's Open MPI (scripts/ensure-mpi.sh) and builds target/release/strata with `--features mpi`.
Run on a quiet machine.

usage: bench/scale.py [--steps 8] [--skip-full]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train as bench_train  # noqa: E402  (its SmolLM2 store and synthetic corpus)

WORK = os.path.join(ROOT, "target", "bench-scale")
STORE = os.path.join(WORK, "store")
STRATA = os.path.join(ROOT, "target", "release", "strata")
NODES = [8, 64, 512]
NETWORKS = [("25 Gb/s Ethernet", 25e9 / 8), ("200 Gb/s InfiniBand", 200e9 / 8)]
LATENCY = 5e-6


def sh(cmd, env=None):
    r = subprocess.run(cmd, text=True, capture_output=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout + r.stderr


def cpu_family():
    for line in open("/proc/cpuinfo"):
        if line.startswith("cpu family"):
            return int(line.split(":")[1])
    return 0


def metrics(name, kind):
    manifest = json.load(open(os.path.join(STORE, kind, name, "manifest.json")))
    run = manifest["counts"]["run"]
    rows = [json.loads(l) for l in open(os.path.join(STORE, "runs", run, "metrics.jsonl"))]
    return manifest["counts"], rows


def finetune(name, ranks, steps, batch, lora, cores):
    args = ["finetune", "--name", name, "--parent", "smol", "--tokens", "toks", "--steps", str(steps),
            "--batch-size", str(batch), "--seq-len", "256", "--lr", "1e-4", "--eval-every", str(steps * 10),
            "--checkpoint-every", str(steps * 10)]
    if lora:
        args.append("--lora")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if ranks == 1:
        sh([STRATA, "--workdir", STORE, "--threads", str(cores), *args], env=env)
    else:
        sh(["mpirun", "--oversubscribe", "-np", str(ranks), STRATA, "--workdir", STORE,
            "--threads", str(max(1, cores // ranks)), *args], env=env)
    counts, rows = metrics(name, "adapters" if lora else "models")
    later = rows[2:] or rows
    return {
        "tps": statistics.median(r["tokens_per_s"] for r in later),
        "comm_s": statistics.median(r.get("comm_s", 0.0) for r in later),
        "step_s": statistics.median(batch * 256 / r["tokens_per_s"] for r in later),
        "rss": max(r["peak_rss_mib"] for r in rows),
        "losses": [r["loss"] for r in rows],
        "params": counts["parameters"],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--fast-step", type=float, default=0.1,
                    help="a faster node's compute time per step (s) for the second projection (a GPU's)")
    a = ap.parse_args()
    print("building target/release/strata with --features mpi …", file=sys.stderr)
    sh(["cargo", "build", "--release", "--locked", "-p", "strata-cli", "--features", "mpi"])
    cores = os.cpu_count()
    print(f"cpu family {cpu_family()} ({ {25: 'Zen 4', 26: 'Zen 5'}.get(cpu_family(), 'other') }), {cores} cores")
    bench_train.smol_store(WORK, STORE, n_docs=300)

    rows = [("SmolLM2-135M LoRA r8", True, 8)]
    if not a.skip_full:
        rows.append(("SmolLM2-135M full", False, 4))
    results = []
    for label, lora, batch in rows:
        tag = "lora" if lora else "full"
        one = finetune(f"{tag}-1", 1, a.steps, batch, lora, cores)
        two = finetune(f"{tag}-2", 2, a.steps, batch, lora, cores)
        agree = all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(one["losses"], two["losses"]))
        results.append((label, one, two, agree))

    print(f"\n{'row':<22} {'1 proc tok/s':>12} {'2 ranks tok/s':>13} {'ratio':>6} {'comm s/step':>11} "
          f"{'comm share':>10} {'RSS 1/2 (MiB)':>14} {'losses agree':>12}")
    for label, one, two, agree in results:
        share = two["comm_s"] / two["step_s"] if two["step_s"] else 0
        print(f"{label:<22} {one['tps']:>12.0f} {two['tps']:>13.0f} {two['tps'] / one['tps']:>6.2f} "
              f"{two['comm_s']:>11.4f} {share:>10.1%} {one['rss']:>6.0f}/{two['rss']:<7.0f} {str(agree):>12}")

    print("\nexpected efficiency, weak scaling (each node this machine's step, one ring all-reduce per step):")
    for label, one, two, _ in results:
        grad = one["params"] * 4
        t_c = one["step_s"]
        print(f"  {label}: {one['params']:,} trainable parameters, gradient {grad / 1e6:.1f} MB, "
              f"t_compute {t_c:.3f} s (measured here)")
        for t, what in [(t_c, "this machine's step"), (a.fast_step, f"a {a.fast_step:g} s step")]:
            for net, bw in NETWORKS:
                cells = []
                for n in NODES:
                    t_ar = 2 * (n - 1) / n * grad / bw + 2 * (n - 1) * LATENCY
                    cells.append(f"{n} nodes {t / (t + t_ar):6.1%}")
                print(f"    {what:<20} {net:<21} " + "   ".join(cells))


if __name__ == "__main__":
    main()
