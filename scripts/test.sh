#!/usr/bin/env bash
# Every test of modelfs: set-up (idempotent), formatting and lint checks, the
# Rust unit and integration tests (real TileDB arrays, real FUSE mounts), and
# the Python interoperability tests (TileDB-Py, safetensors, numpy).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --quiet --all-targets -- -D warnings
echo "== cargo test"
cargo test --quiet 2>&1
echo "== pytest"
export MODELFS_BIN="$root/target/debug/modelfs"
.venv/bin/python -m pytest -q tests/python
