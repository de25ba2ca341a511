#!/usr/bin/env bash
# Set up everything modelfs needs on a fresh Debian machine, idempotently:
#   - Debian's fuse3 (fusermount3), for mounts as a non-root user, and
#     rsync, which tests/fuse_tools.rs runs against a mount;
#   - Debian's s3fs and rclone, the peers the S3 column of scripts/bench.sh
#     reads the same file through;
#   - Debian's libacl1-dev, which the POSIX suite pjdfstest links (built by
#     scripts/posix_suites.sh on first use);
#   - a project-local virtual environment .venv with TileDB-Py 0.36.1, which
#     ships libtiledb 2.30 (the library the Rust binding links), plus
#     safetensors, numpy, ml_dtypes (bfloat16 for numpy) and pytest for the
#     interoperability tests and the benchmark.
# Quiet when everything is already there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
pip_pkgs=(tiledb==0.36.1 safetensors numpy pytest ml_dtypes)
# With --tests (scripts/test.sh): torch (with its CUDA libraries, PyPI's
# only build: about 6 GB, 2 minutes here), transformers and accelerate for
# tests/python/test_transformers.py.
test_pkgs=(torch==2.15.0 transformers==5.25.0 accelerate==1.16.0)
tests=0
[ "${1:-}" = "--tests" ] && tests=1

say() { echo "setup: $*" >&2; }

missing=()
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
# The S3 column of scripts/bench.sh reads the same file through both.
command -v s3fs >/dev/null 2>&1 || missing+=(s3fs)
command -v rclone >/dev/null 2>&1 || missing+=(rclone)
if command -v dpkg-query >/dev/null 2>&1 &&
    ! dpkg-query -W -f='${Status}' libacl1-dev 2>/dev/null | grep -q "ok installed"; then
    missing+=(libacl1-dev)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian's ${missing[*]}"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        say "warning: missing ${missing[*]}; fuse3 (fusermount3) mounts as a non-root user, rsync is needed by tests/fuse_tools.rs, libacl1-dev to build pjdfstest (scripts/posix_suites.sh), s3fs and rclone by scripts/bench.sh's S3 column"
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    "$python" -m venv "$venv"
fi

# Exits 1 unless every package named is installed, at its pinned version.
installed() {
    "$venv/bin/python" - "$@" <<'PY' >/dev/null 2>&1
import importlib.metadata as m, sys
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    if m.version(name) != (want or m.version(name)):
        sys.exit(1)
PY
}
if ! installed "${pip_pkgs[@]}"; then
    say "installing ${pip_pkgs[*]} into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pip_pkgs[@]}"
fi
if [ "$tests" -eq 1 ] && ! installed "${test_pkgs[@]}"; then
    # torch is about 6 GB installed, and pip keeps the downloaded wheels
    # (about 3 GB more) in its temporary folder until it is done: that
    # folder goes beside the environment, and no cache is kept after.
    # Say so up front rather than leave pip to fail half-way with ENOSPC.
    if ! installed torch==2.15.0; then
        need_kib=$((10 * 1024 * 1024))
        free_kib=$(df -Pk "$venv" | awk 'NR == 2 { print $4 }')
        if [ "$free_kib" -lt "$need_kib" ]; then
            say "error: torch needs about 10 GiB free beside $venv to install; $((free_kib / 1024 / 1024)) GiB free"
            exit 1
        fi
    fi
    say "installing ${test_pkgs[*]} into $venv (for the tests)"
    pip_tmp="$venv/pip-tmp"
    mkdir -p "$pip_tmp"
    TMPDIR="$pip_tmp" "$venv/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check "${test_pkgs[@]}"
    rm -rf "$pip_tmp"
fi

lib=$(ls "$venv"/lib/python3*/site-packages/tiledb.libs/libtiledb-*.so.2.30 2>/dev/null | head -n 1 || true)
if [ -z "$lib" ]; then
    say "error: libtiledb 2.30 not found in $venv after installing tiledb==0.36.1"
    exit 1
fi
