#!/usr/bin/env python3
"""Decontamination against PubMedQA's test split, measured.

Builds a corpus of the bench corpus's documents (bench/preprocess.py builds it; any jsonl folder with
--corpus) plus, planted among them, 100 abstracts of PubMedQA's 500-question test split (upper-cased,
commas turned into semicolons, wrapped in other sentences: a reformatted leak) and 100 abstracts of its
other questions (not the test split: they must stay). Runs
`strata preprocess --eval-set pubmedqa=ori_pqal.json --eval-fields QUESTION,CONTEXTS,LONG_ANSWER
--eval-ids test_ground_truth.json` and prints how many of each kind were removed, and the time.

Reads PubMedQA from the repository (datasets/pubmedqa, zstd-compressed; the `zstd` tool decompresses it)
and needs a release build (`cargo build --release -p strata-cli`).
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "target", "bench-decontaminate")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=os.path.join(ROOT, "target", "bench-preprocess", "corpus"))
    ap.add_argument("--docs", type=int, default=20000, help="corpus documents to take")
    a = ap.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(os.path.join(WORK, "in"))
    # PubMedQA as the repository carries it: decompressed next to its test ids
    src = os.path.join(ROOT, "datasets", "pubmedqa")
    a.pubmedqa = os.path.join(WORK, "pubmedqa")
    os.makedirs(a.pubmedqa)
    subprocess.run(["zstd", "-q", "-d", os.path.join(src, "ori_pqal.json.zst"), "-o",
                    os.path.join(a.pubmedqa, "ori_pqal.json")], check=True)
    shutil.copy(os.path.join(src, "test_ground_truth.json"), a.pubmedqa)
    qa = json.load(open(os.path.join(a.pubmedqa, "ori_pqal.json")))
    test = json.load(open(os.path.join(a.pubmedqa, "test_ground_truth.json")))
    docs = []
    for path in sorted(glob.glob(os.path.join(a.corpus, "*.jsonl"))):
        for line in open(path):
            if len(docs) >= a.docs:
                break
            docs.append({"text": json.loads(line)["text"], "kind": "corpus"})
    test_ids = [k for k in qa if k in test][:100]
    other_ids = [k for k in qa if k not in test][:100]
    for i, k in enumerate(test_ids):
        leak = " ".join(qa[k]["CONTEXTS"]).upper().replace(",", ";")
        docs.insert((i * 97) % len(docs), {"text": f"Journal club notes. {leak} End of notes.", "kind": "test"})
    for i, k in enumerate(other_ids):
        docs.insert((i * 89) % len(docs), {"text": " ".join(qa[k]["CONTEXTS"]), "kind": "other"})
    with open(os.path.join(WORK, "in", "corpus.jsonl"), "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    strata = os.path.join(ROOT, "target", "release", "strata")
    store = os.path.join(WORK, "store")
    subprocess.run([strata, "--workdir", store, "acquire", "--name", "raw", "--input",
                    os.path.join(WORK, "in")], check=True, stdout=subprocess.DEVNULL)
    t0 = time.time()
    subprocess.run([strata, "--workdir", store, "preprocess", "--input", "raw", "--output", "clean",
                    "--min-chars", "0",
                    "--eval-set", "pubmedqa=" + os.path.join(a.pubmedqa, "ori_pqal.json"),
                    "--eval-fields", "QUESTION,CONTEXTS,LONG_ANSWER",
                    "--eval-ids", os.path.join(a.pubmedqa, "test_ground_truth.json")],
                   check=True, stdout=subprocess.DEVNULL)
    secs = time.time() - t0
    kept = {"corpus": 0, "test": 0, "other": 0}
    for path in sorted(glob.glob(os.path.join(store, "datasets", "clean", "*.jsonl.zst"))):
        out = subprocess.run(["zstd", "-dc", path], check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            kept[json.loads(line).get("kind", "corpus")] += 1
    stats = json.load(open(os.path.join(store, "datasets", "clean", "stats.json")))
    dec = next(s for s in stats["stages"] if s["stage"] == "decontaminate")
    total = {"corpus": len(docs) - 200, "test": 100, "other": 100}
    print(f"{len(docs)} documents, preprocess {secs:.1f} s; decontaminate removed {dec['removed']}")
    for kind, what in [("test", "PubMedQA test-split abstracts (reformatted)"),
                       ("other", "PubMedQA abstracts outside the test split"),
                       ("corpus", "corpus documents")]:
        print(f"  {what:<46} {total[kind] - kept[kind]:>6} of {total[kind]:>6} removed")
    print("(exact_dedup may remove corpus copies too; the decontaminate count is the one above)")


if __name__ == "__main__":
    main()
