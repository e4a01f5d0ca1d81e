#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script):
# format check, clippy with warnings as errors, then every test of the workspace. Tests that compare against
# Python references create .venv themselves (scripts/python-venv.sh, pinned tests/python/requirements.txt).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# One build from scratch: incremental caches would only double what the build leaves on disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
bash scripts/python-venv.sh >/dev/null
cargo test --workspace --locked
