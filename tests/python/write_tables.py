"""Writes the same records as Parquet (pyarrow, as Hugging Face `datasets` writes them: snappy, several row
groups, large_string text) and as CSV (Python's csv module, quoting as needed), plus the expected documents as
JSON, for Strata's acquire test. Usage: write_tables.py OUT_DIR"""
import csv, json, os, sys

import pyarrow as pa
import pyarrow.parquet as pq

out = sys.argv[1]
rows = []
for i in range(2500):
    text = f"Report {i}: liver {10 + i % 7} cm, \"echogenic\" focus, comma, and\nnew line; 超声 {i}"
    if i % 500 == 7:
        text = None  # a null text: quarantined
    rows.append({"id": i, "text": text, "score": i / 4, "ok": i % 2 == 0, "ward": f"W{i % 3}"})

table = pa.table({
    "id": pa.array([r["id"] for r in rows], pa.int64()),
    "text": pa.array([r["text"] for r in rows], pa.large_string()),
    "score": pa.array([r["score"] for r in rows], pa.float64()),
    "ok": pa.array([r["ok"] for r in rows], pa.bool_()),
    "ward": pa.array([r["ward"] for r in rows], pa.string()),
})
pq.write_table(table, os.path.join(out, "train.parquet"), row_group_size=600, compression="snappy")

with open(os.path.join(out, "train.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["id", "text", "ward"])
    for r in rows:
        w.writerow([r["id"], "" if r["text"] is None else r["text"], r["ward"]])

with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump([r for r in rows if r["text"] is not None], f)
