#!/usr/bin/env python3
"""DICOM read + de-identify side by side: `strata deid dicom` against the tools people use for this, on the same
files in one run: dicognito 0.19.0 and dicom-anonymizer 2.1.0 (pure Python on pydicom), and dcmanon 0.3.1 (Rust
underneath, called from Python). Files/s of reading, de-identifying and writing each file, and what each
tool leaves behind.

Throughput set: `strata domain ultrasound-images --dicom` (simulated B-mode scans with invented patient data in
the header, a private tag, a nested sequence and a burned-in header band), --files of --size² pixels,
--frames each. The Python tools run on one thread; Strata is timed on one thread (--threads 1) and on every core.
Each tool runs twice; the faster run counts. Strata does more per file than the others: it blanks the
burned-in band (rewriting the pixels), runs kept descriptors through its text de-identifier, and flushes what
it wrote to disk before renaming it into place (syncfs per batch); the others leave their files in the page
cache.

Leftovers: tests/python/dicom_deid_check.py writes three files with invented PHI in every attribute of PS3.15
Table E.1-1 that pydicom knows, in nested sequences, private tags and a burned-in band; each tool's output is
read back with pydicom and scored the same way: attributes the table says to remove or replace that kept their
value, private attributes left, the band's brightest pixel (0 = blanked), descriptors still naming the patient.

Tools are installed into target/dicom-bench/venv (pinned below). Needs a release build
(`cargo build --release -p strata-cli`). Quote the CPU (/proc/cpuinfo "cpu family") with the figures.

usage: bench/dicom.py [--files 200] [--size 512] [--frames 1]"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PINS = ["dicognito==0.19.0", "dicom-anonymizer==2.1.0", "dcmanon==0.3.1", "pydicom==3.0.2", "numpy==2.3.5"]

RUNNER = r'''
import os, sys, time, pathlib, warnings, logging
warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)
tool, src, dst = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
files = sorted(p for p in src.iterdir() if p.suffix == ".dcm")
dst.mkdir(parents=True, exist_ok=True)
import pydicom
if tool == "dicognito":
    from dicognito.anonymizer import Anonymizer
    a = Anonymizer()
    def one(f, o):
        ds = pydicom.dcmread(f)
        a.anonymize(ds)
        ds.save_as(o)
elif tool == "dicom-anonymizer":
    from dicomanonymizer.simpledicomanonymizer import anonymize_dataset
    def one(f, o):
        ds = pydicom.dcmread(f)
        anonymize_dataset(ds, delete_private_tags=True)
        ds.save_as(o)
elif tool == "dcmanon":
    from dcmanon import Anonymizer
    a = Anonymizer()
    def one(f, o):
        o.write_bytes(a.anonymize(str(f)))
failed = 0
t = time.perf_counter()
for f in files:
    try:
        one(f, dst / f.name)
    except Exception as e:
        failed += 1
        print(f"{tool}: {f.name}: {e}", file=sys.stderr)
print(f"{time.perf_counter() - t} {len(files)} {failed}")
'''


def venv_python():
    venv = os.path.join(ROOT, "target", "dicom-bench", "venv")
    py = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, ".pins")
    if not (os.path.exists(py) and os.path.exists(stamp) and open(stamp).read() == "\n".join(PINS)):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS], check=True)
        open(stamp, "w").write("\n".join(PINS))
    return py


def strata_bin():
    exe = os.path.join(ROOT, "target", "release", "strata")
    if not os.path.exists(exe):
        sys.exit("build Strata first: cargo build --release -p strata-cli")
    return exe


def run_strata(src, dst, threads):
    shutil.rmtree(dst, ignore_errors=True)
    cmd = [strata_bin(), "deid", "dicom", src, dst, "--lexicon", "none"]
    env = dict(os.environ, STRATA_DEID_SECRET="bench-secret")
    if threads:
        env["STRATA_THREADS"] = str(threads)
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    secs = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(out.stderr)
    files = len([f for f in os.listdir(src) if f.endswith(".dcm")])
    quarantined = int(out.stdout.split("; ")[-1].split()[0]) if "quarantined" in out.stdout else 0
    return secs, files, quarantined


def run_tool(py, tool, src, dst):
    shutil.rmtree(dst, ignore_errors=True)
    out = subprocess.run([py, "-c", RUNNER, tool, src, dst], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{tool}: {out.stderr}")
    secs, files, failed = out.stdout.split()
    return float(secs), int(files), int(failed)


def leftovers(py, table, phi, out):
    check = os.path.join(ROOT, "tests", "python", "dicom_deid_check.py")
    r = subprocess.run([py, check, "check", table, phi, out], capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"}
    rep = json.loads(r.stdout)
    names = [n for n in rep["descriptions"]]
    return {
        "kept_values": len(rep["violations"]),
        "private_left": rep["private_left"],
        "band_max": max(rep["band_max"].values()),
        "descriptor_names": sum(1 for n in names if "JANE" in rep["descriptions"][n] or "RICHARD" in rep["descriptions"][n]),
        "checked": rep["checked"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=1)
    a = ap.parse_args()
    work = os.path.join(ROOT, "target", "dicom-bench", "run")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    py = venv_python()
    sim = os.path.join(work, "sim")
    subprocess.run([strata_bin(), "domain", "ultrasound-images", "--dicom", "--count", str(a.files), "--size",
                    str(a.size), "--frames", str(a.frames), "--seed", "1", "--out", sim], check=True,
                   capture_output=True)
    src = os.path.join(sim, "dicom")
    table = os.path.join(ROOT, "crates", "strata-image", "data", "annex_e.tsv")
    phi = os.path.join(work, "phi")
    subprocess.run([py, os.path.join(ROOT, "tests", "python", "dicom_deid_check.py"), "make", table, phi],
                   check=True, capture_output=True)
    os.sync()  # the inputs on disk before anything is timed (Strata's syncfs would flush them otherwise)
    cpu = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("cpu family")), "?")
    model = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"{a.files} files of {a.size}x{a.size} x {a.frames} frame(s); CPU: {model} (family {cpu}), {os.cpu_count()} cores")
    rows = []
    # every tool runs twice and keeps its faster run: the first pays for cold caches
    for name, threads in [("strata (1 thread)", 1), (f"strata ({os.cpu_count()} threads)", None)]:
        secs, files, q = min(run_strata(src, os.path.join(work, "out-strata"), threads) for _ in range(2))
        run_strata(phi, os.path.join(work, "phi-strata"), threads)
        rows.append((name, files / secs, q, leftovers(py, table, phi, os.path.join(work, "phi-strata"))))
    for tool in ["dcmanon", "dicognito", "dicom-anonymizer"]:
        secs, files, failed = min(run_tool(py, tool, src, os.path.join(work, f"out-{tool}")) for _ in range(2))
        run_tool(py, tool, phi, os.path.join(work, f"phi-{tool}"))
        rows.append((tool, files / secs, failed, leftovers(py, table, phi, os.path.join(work, f"phi-{tool}"))))
    one, every = rows[0][1], rows[1][1]
    print("ratios: Strata's files/s over the tool's (1t: Strata on one thread; all: on every core)")
    print(f"{'tool':<22}{'files/s':>10}{'1t ×':>8}{'all ×':>8}{'failed':>8}  left behind (of the PHI set)")
    for name, rate, failed, left in rows:
        if "error" in left:
            lb = left["error"]
        else:
            lb = (f"{left['kept_values']} values kept, {left['private_left']} private, band max {left['band_max']}, "
                  f"{left['descriptor_names']} descriptors naming the patient")
        print(f"{name:<22}{rate:>10.1f}{one / rate:>8.2f}{every / rate:>8.2f}{failed:>8}  {lb}")
    print(json.dumps({"rows": [{"tool": r[0], "files_per_s": r[1], "failed": r[2], "left": r[3]} for r in rows]}))


if __name__ == "__main__":
    main()
