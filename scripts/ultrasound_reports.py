#!/usr/bin/env python3
"""Seeded generator of SYNTHETIC ultrasound reports from the ultrasound findings of radiology-semantic-dict.

No registry carries real ultrasound report text (see DATA.md), so the ultrasound corpus is built here: each
report names an examination and organ, lists findings drawn from one pathology's ultrasound signs, gives
measurements in plausible ranges, and ends with an impression. Every record is marked "synthetic": true.
The same findings file and seed always give byte-identical output (tested in test_ultrasound_reports.py).

Usage: ultrasound_reports.py --findings imaging_findings.json --out reports.jsonl [--count N] [--seed S]
"""
import argparse
import json
import os
import random
import sys

# keyword in pathology/finding (lower case) -> (organ, examination)
ORGANS = [
    ("breast", ("breast", "Breast ultrasound")),
    ("fibroadenoma", ("breast", "Breast ultrasound")),
    ("testic", ("testis", "Scrotal ultrasound")),
    ("scrot", ("testis", "Scrotal ultrasound")),
    ("epididym", ("testis", "Scrotal ultrasound")),
    ("varicocele", ("testis", "Scrotal ultrasound")),
    ("thyroid", ("thyroid", "Thyroid ultrasound")),
    ("parathyroid", ("thyroid", "Neck ultrasound")),
    ("branchial", ("neck", "Neck ultrasound")),
    ("lymph", ("neck", "Neck ultrasound")),
    ("kidney", ("kidney", "Renal ultrasound")),
    ("renal", ("kidney", "Renal ultrasound")),
    ("hydronephrosis", ("kidney", "Renal ultrasound")),
    ("angiomyolipoma", ("kidney", "Renal ultrasound")),
    ("bladder", ("bladder", "Pelvic ultrasound")),
    ("gallbladder", ("gallbladder", "Right upper quadrant ultrasound")),
    ("chole", ("gallbladder", "Right upper quadrant ultrasound")),
    ("biliary", ("biliary tree", "Right upper quadrant ultrasound")),
    ("hepat", ("liver", "Abdominal ultrasound")),
    ("liver", ("liver", "Abdominal ultrasound")),
    ("cirrhosis", ("liver", "Abdominal ultrasound")),
    ("portal", ("liver", "Abdominal Doppler ultrasound")),
    ("pancrea", ("pancreas", "Abdominal ultrasound")),
    ("spleen", ("spleen", "Abdominal ultrasound")),
    ("splen", ("spleen", "Abdominal ultrasound")),
    ("append", ("appendix", "Right lower quadrant ultrasound")),
    ("intussusception", ("bowel", "Abdominal ultrasound")),
    ("pyloric", ("pylorus", "Abdominal ultrasound")),
    ("aort", ("aorta", "Abdominal aortic ultrasound")),
    ("carotid", ("carotid artery", "Carotid Doppler ultrasound")),
    ("thromb", ("deep veins", "Venous Doppler ultrasound")),
    ("venous", ("deep veins", "Venous Doppler ultrasound")),
    ("ovar", ("ovary", "Pelvic ultrasound")),
    ("follic", ("ovary", "Pelvic ultrasound")),
    ("endometri", ("uterus", "Pelvic ultrasound")),
    ("uter", ("uterus", "Pelvic ultrasound")),
    ("fibroid", ("uterus", "Pelvic ultrasound")),
    ("leiomyoma", ("uterus", "Pelvic ultrasound")),
    ("ectopic", ("adnexa", "Transvaginal ultrasound")),
    ("pelvic", ("adnexa", "Pelvic ultrasound")),
    ("pregnan", ("uterus", "Obstetric ultrasound")),
    ("placent", ("placenta", "Obstetric ultrasound")),
    ("fetal", ("fetus", "Obstetric ultrasound")),
    ("prostat", ("prostate", "Transrectal ultrasound")),
    ("hip", ("hip", "Hip ultrasound")),
    ("tendon", ("tendon", "Musculoskeletal ultrasound")),
    ("rotator", ("shoulder", "Shoulder ultrasound")),
    ("hydrocephalus", ("brain", "Cranial ultrasound")),
    ("intraventricular", ("brain", "Cranial ultrasound")),
]
TOPIC_ORGANS = {
    "Breast Imaging": ("breast", "Breast ultrasound"),
    "Genitourinary Imaging": ("kidney", "Renal ultrasound"),
    "Gastrointestinal Imaging": ("liver", "Abdominal ultrasound"),
    "Vascular and Interventional Radiology": ("vessels", "Doppler ultrasound"),
    "Pediatric Radiology": ("abdomen", "Pediatric abdominal ultrasound"),
    "Musculoskeletal Imaging": ("soft tissues", "Musculoskeletal ultrasound"),
    "Neuroradiology": ("neck", "Neck ultrasound"),
    "Cardiac Imaging": ("heart", "Echocardiography"),
}
DEFAULT_ORGAN = ("abdomen", "Abdominal ultrasound")
# organ -> (normal size range in cm, what is measured)
SIZES = {
    "liver": ((12.0, 16.5), "craniocaudal length"),
    "spleen": ((8.0, 12.5), "length"),
    "kidney": ((9.5, 12.5), "bipolar length"),
    "thyroid": ((4.0, 6.0), "lobe length"),
    "gallbladder": ((6.0, 9.5), "length"),
    "uterus": ((6.5, 9.0), "length"),
    "ovary": ((2.5, 4.5), "length"),
    "testis": ((3.5, 5.0), "length"),
    "aorta": ((1.6, 2.4), "diameter"),
    "prostate": ((3.0, 4.5), "transverse diameter"),
}
INDICATIONS = ["pain", "palpable abnormality", "follow-up of prior finding", "abnormal laboratory values",
               "screening", "swelling", "evaluation of known condition", "fever"]
LEAD = ["There is", "Sonography demonstrates", "Images show", "Evaluation reveals"]


def organ_for(finding):
    text = (finding["pathology_name"] + " " + finding["name"]).lower()
    for key, organ in ORGANS:
        if key in text:
            return organ
    return TOPIC_ORGANS.get(finding.get("acr_topic"), DEFAULT_ORGAN)


def load_findings(path):
    with open(path, encoding="utf-8") as f:
        rows = [r for r in json.load(f) if r.get("modality") == "US"]
    by_pathology = {}
    for r in rows:
        by_pathology.setdefault(r["pathology_name"], []).append(r)
    # sorted keys: the output depends only on the file's content and the seed
    return [(name, by_pathology[name]) for name in sorted(by_pathology)], len(rows)


def sentence(s):
    s = s.strip().rstrip(".")
    return s[0].upper() + s[1:] + "." if s else ""


def report(rng, pathology, findings):
    organ, exam = organ_for(findings[0])
    chosen = rng.sample(findings, k=min(len(findings), rng.randint(1, 3)))
    lines = [f"EXAMINATION: {exam}.", f"INDICATION: {sentence(rng.choice(INDICATIONS))}",
             f"ORGAN: {organ}.", "FINDINGS:"]
    seen = set()
    for f in chosen:
        if f["name"] in seen:
            continue
        seen.add(f["name"])
        text = f"{rng.choice(LEAD)} {f['name'][0].lower() + f['name'][1:]}"
        if f.get("description"):
            text += f". {sentence(f['description'])}"
        lines.append(sentence(text))
    measurements = []
    if organ in SIZES:
        (lo, hi), what = SIZES[organ]
        measurements.append(f"The {organ} measures {rng.uniform(lo, hi):.1f} cm in {what}.")
    dims = sorted((round(rng.uniform(0.4, 4.5), 1) for _ in range(3)), reverse=True)
    measurements.append(f"The dominant abnormality measures {dims[0]} x {dims[1]} x {dims[2]} cm.")
    lines.append("MEASUREMENTS: " + " ".join(measurements))
    certainty = rng.choice(["Findings consistent with", "Findings suggestive of", "Appearance compatible with"])
    lines.append(f"IMPRESSION: {certainty} {pathology}.")
    return "\n".join(lines), organ, dims


def generate(findings_path, count, seed):
    pathologies, _ = load_findings(findings_path)
    rng = random.Random(seed)
    for i in range(count):
        pathology, findings = pathologies[rng.randrange(len(pathologies))]
        text, organ, _ = report(rng, pathology, findings)
        yield {"text": text, "source": "synthetic-ultrasound", "synthetic": True, "id": f"us-{seed}-{i:06d}",
               "pathology": pathology, "organ": organ}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--findings", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=20261128)
    args = ap.parse_args(argv)
    if os.path.exists(args.out):
        return 0
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in generate(args.findings, args.count, args.seed):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, args.out)
    print(f"ultrasound: {args.out}: {args.count} synthetic reports", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
