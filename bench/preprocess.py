#!/usr/bin/env python3
"""bench/preprocess: Strata and datatrove side by side on the same corpus, same pipeline, same workers.

Pipeline: jsonl reader -> Gopher quality -> Gopher repetition -> MinHash near-dedup -> jsonl writer.
datatrove runs it as its documented four MinHash steps (signatures, buckets, clusters, filter) with
LocalPipelineExecutor(tasks=W, workers=W); Strata runs `strata pipeline run` (acquire + preprocess) with
STRATA_THREADS=W. Printed: MB/s of input for each and the ratio, peak memory (RSS summed over each tool's
process tree, sampled from /proc every 50 ms), and the documents each stage kept and removed.

The corpus (default 200 MB) is built from the fetched corpora (scripts/fetch-data.sh): documents are runs of
20-40 sentences drawn at random (seeded), and 10% of them are planted near-duplicates of an earlier document
with 1-10% of their words replaced.

Needs datatrove 0.10.1 (`pip install "datatrove[processing]==0.10.1" spacy orjson`);
it is installed into target/datatrove/venv unless DATATROVE_PYTHON points at a python that has it.

usage: bench/preprocess.py [--mb 200] [--workers 2]
"""
import argparse
import glob
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "target", "bench-preprocess")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def build_corpus(mb, out_dir):
    """Shards of jsonl, about `mb` MB in all; returns (bytes, documents)."""
    stamp = os.path.join(out_dir, f".done-{mb}")
    if os.path.exists(stamp):
        with open(stamp) as f:
            return tuple(json.load(f))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    sh(["bash", os.path.join(ROOT, "scripts", "fetch-data.sh"), os.path.join(ROOT, "data")])
    sentences = []
    for path in sorted(glob.glob(os.path.join(ROOT, "data", "raw", "*", "*.jsonl"))):
        with open(path) as f:
            for line in f:
                text = json.loads(line).get("text", "")
                sentences.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 20)
    rng = random.Random(42)
    words = [w for s in sentences[:20000] for w in s.split()]
    docs, total, shard, n_shards = [], 0, None, 8
    files = [open(os.path.join(out_dir, f"part-{i:02d}.jsonl"), "w") for i in range(n_shards)]
    n = 0
    while total < mb * 1_000_000:
        if docs and rng.random() < 0.1:
            src = rng.choice(docs).split(" ")
            for _ in range(max(1, int(len(src) * rng.uniform(0.01, 0.10)))):
                src[rng.randrange(len(src))] = rng.choice(words)
            text = " ".join(src)
        else:
            text = " ".join(rng.choice(sentences) for _ in range(rng.randint(20, 40)))
            if len(docs) < 50000:
                docs.append(text)
            else:
                docs[rng.randrange(len(docs))] = text
        line = json.dumps({"text": text}) + "\n"
        files[n % n_shards].write(line)
        total += len(line.encode())
        n += 1
    for f in files:
        f.close()
    with open(stamp, "w") as f:
        json.dump([total, n], f)
    return total, n


class PeakRss:
    """Peak of the summed RSS of a process and all its descendants, read from /proc."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def tree(self):
        kids = {}
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    with open(f"/proc/{p}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                    kids.setdefault(ppid, []).append(int(p))
                except (OSError, ValueError, IndexError):
                    pass
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(kids.get(p, []))
        return out

    def run(self):
        while not self.stop:
            rss = 0
            for p in self.tree():
                try:
                    with open(f"/proc/{p}/status") as f:
                        for line in f:
                            if line.startswith("VmRSS:"):
                                rss += int(line.split()[1]) * 1024
                except OSError:
                    pass
            self.peak = max(self.peak, rss)
            time.sleep(0.05)

    def done(self):
        self.stop = True
        self.t.join()
        return self.peak


def timed(cmd, env=None):
    t0 = time.time()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mon = PeakRss(p.pid)
    out, err = p.communicate()
    peak = mon.done()
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{err[-3000:]}")
    return time.time() - t0, peak, out


DATATROVE_SCRIPT = r'''
import json, os, sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.dedup import MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.writers.jsonl import JsonlWriter

def main():
    src, work, w = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = MinhashConfig()

    def ex(pipeline, name, tasks):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(w, tasks),
                              logging_dir=f"{work}/logs/{name}").run()

    ex([JsonlReader(src, glob_pattern="*.jsonl"), GopherQualityFilter(), GopherRepetitionFilter(), JsonlWriter(f"{work}/filtered"),
        MinhashDedupSignature(output_folder=f"{work}/sigs", config=cfg)], "1-filter-signatures", w)
    ex([MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=cfg)],
       "2-buckets", cfg.num_buckets)
    ex([MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=cfg)],
       "3-cluster", 1)
    ex([JsonlReader(f"{work}/filtered"), MinhashDedupFilter(input_folder=f"{work}/remove_ids"),
        JsonlWriter(f"{work}/output")], "4-filter", w)


if __name__ == "__main__":  # the executor's worker processes import this file
    main()
'''


def datatrove_python():
    if os.environ.get("DATATROVE_PYTHON"):
        return os.environ["DATATROVE_PYTHON"]
    venv = os.path.join(ROOT, "target", "datatrove", "venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(os.path.join(venv, ".installed")):
        sh([sys.executable, "-m", "venv", venv])
        print("installing datatrove 0.10.1 (a few minutes) ...", file=sys.stderr)
        sh([py, "-m", "pip", "install", "-q", "datatrove[processing]==0.10.1", "spacy", "orjson"])
        open(os.path.join(venv, ".installed"), "w").close()
    return py


def datatrove_counts(work):
    """(stage, kept, {reason: removed}) from datatrove's merged stats."""
    rows = []
    for step in ("1-filter-signatures", "4-filter"):
        path = os.path.join(work, "logs", step, "stats.json")
        with open(path) as f:
            stats = json.load(f)
        for s in stats:
            name = s.get("name", "")
            st = s.get("stats", {})
            if "Gopher" in name or "Minhash" in name and "Filter" in name or "dedup" in name.lower():
                removed = {k[len("dropped_"):]: v.get("total", v) if isinstance(v, dict) else v
                           for k, v in st.items() if k.startswith("dropped_")}
                forwarded = st.get("forwarded", {})
                kept = forwarded.get("total", forwarded) if isinstance(forwarded, dict) else forwarded
                rows.append((name, kept, removed))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    corpus = os.path.join(WORK, "corpus")
    nbytes, ndocs = build_corpus(a.mb, corpus)
    mb = nbytes / 1e6
    sh(["cargo", "build", "--release", "-q", "-p", "strata-cli"], cwd=ROOT)

    env = dict(os.environ, STRATA_THREADS=str(a.workers), RAYON_NUM_THREADS=str(a.workers))

    def strata_run(name, extra, minhash):
        """Acquire + preprocess in Strata's own store; returns (seconds, peak RSS, stats.json)."""
        store = os.path.join(WORK, name)
        shutil.rmtree(store, ignore_errors=True)
        cfg = os.path.join(WORK, f"{name}.toml")
        with open(cfg, "w") as f:
            f.write(f'''[[step]]
type = "acquire"
name = "raw"
inputs = ["{corpus}"]

[[step]]
type = "preprocess"
name = "clean"
input = "raw"
{extra}
stages = [{{ type = "gopher_quality" }}, {{ type = "gopher_repetition" }}, {{ type = "minhash_dedup"{minhash} }}]
''')
        secs, rss, _ = timed([os.path.join(ROOT, "target", "release", "strata"), "--workdir", store,
                              "pipeline", "run", cfg], env=env)
        with open(os.path.join(store, "datasets", "clean", "stats.json")) as f:
            return secs, rss, json.load(f)

    # Strata, its default settings, one process
    st_secs, st_rss, st_stats = strata_run("strata-store", "", "")
    # Strata again with datatrove's MinHash settings (14 bands x 8 rows, no Jaccard check) and its
    # clustering (connected components), as tasks exchanging files: the removal counts to compare
    st2_secs, st2_rss, st2_stats = strata_run("strata-store-dt-settings", f"tasks = {a.workers}",
                                              ", bands = 14, rows = 8, threshold = 0.0")

    # datatrove
    py = datatrove_python()
    dt_work = os.path.join(WORK, "datatrove")
    shutil.rmtree(dt_work, ignore_errors=True)
    script = os.path.join(WORK, "datatrove_pipeline.py")
    with open(script, "w") as f:
        f.write(DATATROVE_SCRIPT)
    dt_secs, dt_rss, _ = timed([py, script, corpus, dt_work, str(a.workers)])

    print(f"corpus: {mb:.1f} MB, {ndocs} documents (10% planted near-duplicates); {a.workers} workers each")
    print(f"{'tool':<10} {'seconds':>8} {'MB/s':>8} {'peak RSS MB':>12}")
    print(f"{'datatrove':<10} {dt_secs:>8.1f} {mb / dt_secs:>8.2f} {dt_rss / 1e6:>12.0f}")
    print(f"{'strata':<10} {st_secs:>8.1f} {mb / st_secs:>8.2f} {st_rss / 1e6:>12.0f}")
    print(f"{'strata/dt':<10} {st2_secs:>8.1f} {mb / st2_secs:>8.2f} {st2_rss / 1e6:>12.0f}"
          f"   (datatrove's MinHash settings, {a.workers} tasks)")
    print(f"ratio (strata MB/s / datatrove MB/s): {dt_secs / st_secs:.1f}  (goal >= 10)")
    for title, stats in [("strata", st_stats), ("strata with datatrove's MinHash settings", st2_stats)]:
        print(f"\n{title}, per stage: input -> kept, removed by reason")
        for s in stats["stages"]:
            print(f"  {s['stage']:<20} {s['input']:>8} -> {s['kept']:>8}  {json.dumps(s['removed'])}")
    print("datatrove, per stage: kept, removed by reason")
    try:
        for name, kept, removed in datatrove_counts(dt_work):
            print(f"  {name:<28} {kept!s:>8}  {json.dumps(removed)}")
    except (OSError, ValueError) as e:
        print(f"  (stats not readable: {e})")


if __name__ == "__main__":
    main()
