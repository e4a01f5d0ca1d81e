"""Reads a dataset's Parquet shards with pyarrow and prints them as JSON lines (id, text, metadata parsed), in
shard order, for comparison with the jsonl.zst shards. Usage: read_parquet.py DATASET_DIR"""
import glob, json, os, sys

import pyarrow.parquet as pq

for path in sorted(glob.glob(os.path.join(sys.argv[1], "part-*.parquet"))):
    t = pq.read_table(path)
    assert t.column_names == ["id", "text", "metadata"], t.column_names
    for row in t.to_pylist():
        print(json.dumps({"id": row["id"], "text": row["text"], "meta": json.loads(row["metadata"])}))
