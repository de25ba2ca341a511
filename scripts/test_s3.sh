#!/usr/bin/env bash
# The S3 tests: the import/export, mount-read, write, tools, disk cache,
# versions and Python interop suites again on an s3:// registry on a single
# Garage node, then the two-daemon tests on a 3-node Garage cluster. Mounts of
# s3:// registries keep a disk cache by default: it goes to a temporary
# XDG_CACHE_HOME here, not the user's own. Garage is built if missing,
# runs on loopback only, and is stopped by PID on any exit.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/garage.sh install
state="$(mktemp -d "${TMPDIR:-/tmp}/modelfs-garage.XXXXXX")"
cleanup() {
    scripts/garage.sh stop "$state/single" || true
    scripts/garage.sh stop "$state/cluster" || true
    rm -rf "$state"
}
trap cleanup EXIT
export XDG_CACHE_HOME="$state/cache"

echo "== S3 suite on one Garage node"
scripts/garage.sh start "$state/single" 1
(
    # shellcheck disable=SC1091
    source "$state/single/env"
    cargo test --quiet --test tiledb_import_export --test fuse_read --test fuse_write --test fuse_attrs \
        --test fuse_namespace --test tiledb_crash --test fuse_tools --test group_compaction \
        --test fuse_disk_cache --test fuse_versions --test tiledb_versions --test dir_stats --test stored_tiles 2>&1
    MODELFS_BIN="$root/target/debug/modelfs" .venv/bin/python -m pytest -q \
        tests/python/test_interop.py tests/python/test_mount.py tests/python/test_write.py \
        tests/python/test_versions.py tests/python/test_transformers.py
)
scripts/garage.sh stop "$state/single"

echo "== two daemons on a 3-node Garage cluster"
scripts/garage.sh start "$state/cluster" 3
(
    # shellcheck disable=SC1091
    source "$state/cluster/env"
    cargo test --quiet --test s3_cluster -- --ignored 2>&1
)
