"""Per-reason removal counts of datatrove's own filters on the synthetic filter corpus, written as the JSON the
suite compares Strata against (tests/data/filter-corpus.datatrove.json). Not part of the suite: run once with
datatrove pinned, and again whenever the corpus generator changes:

    python3 -m venv target/datatrove/venv
    target/datatrove/venv/bin/pip install "datatrove[processing]==0.10.1" spacy orjson
    target/datatrove/venv/bin/python tests/python/datatrove_counts.py tests/data/filter-corpus.datatrove.json

Runs (each over the whole corpus, one task): Gopher quality then Gopher repetition; C4 quality alone; FineWeb
quality alone — all with datatrove's defaults."""
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                        GopherRepetitionFilter)
from datatrove.pipeline.readers import JsonlReader

HERE = os.path.dirname(os.path.abspath(__file__))

RUNS = {
    "gopher": lambda: [GopherQualityFilter(), GopherRepetitionFilter()],
    "c4": lambda: [C4QualityFilter()],
    "fineweb": lambda: [FineWebQualityFilter()],
}
# datatrove's step names ("🔻 - FILTER: 🥇 Gopher Quality") → the stage names Strata reports
STAGE = {"gopherquality": "gopher_quality", "gopherrepetition": "gopher_repetition", "c4quality": "c4_quality",
         "finewebquality": "fineweb_quality"}


def value(v):
    return v.get("total", 0) if isinstance(v, dict) else v


def main():
    out = sys.argv[1]
    work = tempfile.mkdtemp()
    corpus_dir = os.path.join(work, "corpus")
    os.makedirs(corpus_dir)
    corpus = os.path.join(corpus_dir, "corpus.jsonl")
    subprocess.run([sys.executable, os.path.join(HERE, "make_filter_corpus.py"), corpus], check=True)
    with open(corpus, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    with open(corpus) as f:
        docs = sum(1 for _ in f)
    runs = {}
    for name, filters in RUNS.items():
        logs = os.path.join(work, "logs", name)
        LocalPipelineExecutor(pipeline=[JsonlReader(corpus_dir, glob_pattern="*.jsonl"), *filters()], tasks=1,
                              workers=1, logging_dir=logs).run()
        with open(os.path.join(logs, "stats.json")) as f:
            stats = json.load(f)
        stages = []
        for s in stats:
            step = next((v for k, v in STAGE.items() if k in s["name"].lower().replace(" ", "")), None)
            if step is None:
                continue
            st = s["stats"]
            stages.append({"stage": step, "kept": value(st.get("forwarded", 0)),
                           "removed": {k[len("dropped_"):]: value(v) for k, v in sorted(st.items())
                                       if k.startswith("dropped_")}})
        runs[name] = stages
    result = {
        "datatrove": importlib.metadata.version("datatrove"),
        "command": "tests/python/datatrove_counts.py (datatrove[processing]==0.10.1, defaults, one task)",
        "corpus": {"generator": "tests/python/make_filter_corpus.py (defaults)", "docs": docs, "sha256": sha},
        "runs": runs,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
