#!/usr/bin/env bash
# Installs Debian's Open MPI (mpirun, and the development files and libclang that the `mpi` cargo feature
# builds against) when missing: the data-parallel tests run `mpirun -np 2 strata …`.
# Serialised with the other installers (one apt at a time). Needs root or sudo, as apt does.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec 9>"$root/.chromium.lock"
flock 9
if command -v mpirun >/dev/null && command -v mpicc >/dev/null \
  && ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  exit 0
fi
sudo=""
if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
packages=(openmpi-bin libopenmpi-dev libclang-dev)
# the package lists another installer of this run already fetched serve; fetched once when they do not
$sudo apt-get install -y -qq "${packages[@]}" >&2 \
  || { $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq "${packages[@]}" >&2; }
