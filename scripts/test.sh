#!/usr/bin/env bash
# Every test of modelfs: set-up (idempotent), formatting and lint checks, the
# Rust unit and integration tests (real TileDB arrays, real FUSE mounts), the
# Python interoperability tests (TileDB-Py, safetensors, numpy), the POSIX
# suites pjdfstest and fsx on real mounts (scripts/posix_suites.sh, as root;
# installed on first use), and the same suites again on S3 (Garage on
# loopback, built on first use) with the two-daemon cluster tests
# (scripts/test_s3.sh). MODELFS_SKIP_POSIX=1 and MODELFS_SKIP_S3=1 skip those
# parts.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup.sh --tests

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --quiet --all-targets -- -D warnings
echo "== cargo test"
cargo test --quiet 2>&1
echo "== pytest"
export MODELFS_BIN="$root/target/debug/modelfs"
.venv/bin/python -m pytest -q tests/python
if [ "${MODELFS_SKIP_POSIX:-0}" = 1 ]; then
    echo "== POSIX suites skipped (MODELFS_SKIP_POSIX=1)"
else
    echo "== POSIX suites (pjdfstest, fsx)"
    scripts/posix_suites.sh
fi
if [ "${MODELFS_SKIP_S3:-0}" = 1 ]; then
    echo "== S3 tests skipped (MODELFS_SKIP_S3=1)"
else
    scripts/test_s3.sh
fi
