#!/usr/bin/env bash
# Benchmark of modelfs, whole-process measurements on this machine.
#
# Makes a safetensors file of SIZE_MIB MiB (default 1 GiB: 285 BF16/F32
# tensors from 4 bytes to tens of MiB, random weights), imports it into a
# fresh registry under bench-out/, and measures, each figure the median of
# RUNS runs (default 5), "cold" meaning the page cache dropped just before:
#   - sequential read (1 MiB reads) of the file through the mount, cold and
#     warm (re-read with the page cache kept), and of the local file;
#   - the same bytes read by the library straight from TileDB, no FUSE
#     (`modelfs export REG/file /dev/null`), cold;
#   - safetensors.numpy.load_file from the mount and from local disk, cold;
#   - safe_open(...).keys() (header only) on a mount that is up: its first
#     open (fresh mount, page cache dropped) in ms, and a second open;
#   - 1,000 random 64 KiB preads (fixed seed), cold: p50 and p99;
#   - cp of the file into a read-write mount, `modelfs import` of it into a
#     fresh path, and cp to local disk (source in the page cache; the `sync`
#     right after each is timed apart);
#   - with a disk cache (issue 14): the first cold read filling it, the warm
#     re-read and a warm mmap-based load_file through FUSE passthrough, and a
#     read and a load_file on a fresh daemon with the page cache dropped but
#     the disk cache warm, beside the local file's, with the daemon's CPU;
#   - the mount daemon's peak RSS (VmHWM) during the reads and during the cp,
#     each phase with its own mounts, at the default --cache-size, and its
#     CPU time during the cold read and the cp.
# Every mount is fresh (empty chunk cache). Prints a table, the targets with
# PASS/FAIL, and writes everything to bench-out/bench.json.
#
# Then the S3 column (unless S3=0), on a Garage node on loopback started by
# scripts/garage.sh (built first if missing: about 12 minutes): the cold
# sequential read through the mount against the library's direct read, the
# S3 requests of a mount start, of `ls -l` of a 10-file model directory and
# of a full read, the disk cache's first cold read and a fresh daemon reading
# it (with its S3 requests), the same file as a plain object read cold
# through s3fs and rclone mount (Debian packages, installed by setup.sh;
# each timed from a fresh mount, its lookup of the file included, as the
# mount's is), and `ls` and mount start-up on registries of 10 and 1,000
# model directories (scripts/bench/bench_s3.py; bench-out/bench-s3.json).
# While it runs, delayed ACKs are off on the loopback routes (as root; put
# back after; S3_QUICKACK=0 keeps them): Garage's ranged GET answers
# otherwise wait 40 ms each for one, which TileDB's small reads pay and a
# real object store does not charge.
#
# Then the TileDB-ML column (unless ML=0), when torch and tiledb-ml are in
# .venv (`pip install torch tiledb-ml tensorboard`; skipped with a note
# otherwise): a PyTorch model of ML_SIZE_MIB MiB (default 480) saved by
# tiledb-ml's own save(), tiledb-ml's load() of it against the first read
# of its model.safetensors through a fresh mount, and the daemon's peak RSS
# (scripts/bench/bench_tiledb_ml.py; bench-out/bench-tiledb-ml.json), each
# the median of ML_RUNS runs (default 3). Saving the model takes ~2 minutes
# and each run ~1.5 minutes on this machine.
#
# SCALE=1 runs the scale column alone (scripts/bench/bench_scale.py;
# bench-out/bench-scale-local.json and -s3.json): registries whose root
# holds 10,000 and 100 model directories made through the registry API, and
# on fresh mounts of each: mount start-up, `ls`, `ls -l`, `mkdir` and
# create-and-close of a small file beside them (on S3 with the requests
# Garage answered, and `ls -l` again after 1,000 of the directories changed
# behind the mounts' back, on two fresh mounts); then 10,000 `mkdir`s and
# 1,000 `rmdir`s one after another through a mount, the time of the 100th against the 10,000th, and
# the bytes the directory's member lists take afterwards. Locally about 10
# minutes; on Garage SCALE_S3_GROW (default 2,000) mkdirs, 30 minutes.
#
# Run as root (it drops the page cache), from anywhere:
#   scripts/bench.sh                     # 1 GiB, 5 runs: several minutes
#   SIZE_MIB=64 RUNS=3 scripts/bench.sh  # quick check
#   KEEP=1 scripts/bench.sh              # keep bench-out/model-*.safetensors
#                                        # (reused next time) and the registry
#   ML_ONLY=1 scripts/bench.sh           # the TileDB-ML column alone
#   S3_DIRS=0 scripts/bench.sh           # S3 column without the registries
#                                        # of 10 and 1,000 directories
# Other load on the machine (compiles) makes the figures noisy.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

SIZE_MIB="${SIZE_MIB:-1024}"
RUNS="${RUNS:-5}"
KEEP="${KEEP:-0}"
S3="${S3:-1}"
ML="${ML:-1}"
ML_ONLY="${ML_ONLY:-0}"
ML_SIZE_MIB="${ML_SIZE_MIB:-480}"
ML_RUNS="${ML_RUNS:-3}"
SCALE="${SCALE:-0}"
SCALE_S3_GROW="${SCALE_S3_GROW:-2000}"

die() { echo "bench: error: $*" >&2; exit 1; }
say() { echo "bench: $*" >&2; }

[[ "$SIZE_MIB" =~ ^[1-9][0-9]*$ ]] || die "SIZE_MIB must be a positive integer (MiB), not '$SIZE_MIB'"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, not '$RUNS'"
[[ "$ML_SIZE_MIB" =~ ^[1-9][0-9]*$ ]] || die "ML_SIZE_MIB must be a positive integer (MiB), not '$ML_SIZE_MIB'"
[[ "$ML_RUNS" =~ ^[1-9][0-9]*$ ]] || die "ML_RUNS must be a positive integer, not '$ML_RUNS'"
[ "$RUNS" -ge 3 ] || say "warning: RUNS=$RUNS; medians of fewer than 3 runs say little"
[ "$(id -u)" -eq 0 ] || die "run as root: cold figures need 'echo 3 > /proc/sys/vm/drop_caches'"
[ -e /dev/fuse ] || die "/dev/fuse is missing: no FUSE on this machine"

out="$root/bench-out"
bin="$root/target/release/modelfs"
python="$root/.venv/bin/python"
file="$out/model-${SIZE_MIB}MiB.safetensors"
registry="$out/registry"
ml_registry="$out/tiledb-ml-${ML_SIZE_MIB}MiB"
garage_state="$out/garage"
mkdir -p "$out"

# Unmount whatever a run (this one, or one killed earlier) left mounted under
# bench-out/, then remove the big work files unless KEEP=1.
unmount_all() {
    local m
    for m in "$out"/mnt-*; do
        [ -d "$m" ] || continue
        if grep -qF " $m " /proc/self/mountinfo; then
            say "unmounting $m"
            "$bin" unmount --lazy "$m" 2>/dev/null || umount -l "$m" || true
        fi
    done
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    unmount_all
    rmdir "$out"/mnt-* 2>/dev/null || true  # never rm -r: one could still be mounted
    rm -rf "$out/scratch" "$out/cp-local.safetensors" "$file.part" "$out/s3-model" "$out/scale" \
        "$out/disk-cache" "$out/disk-cache-s3" "$out/s3fs-passwd"
    scripts/garage.sh stop "$garage_state" 2>/dev/null || true
    rm -rf "$garage_state"
    if [ "$KEEP" = 1 ]; then
        say "KEEP=1: keeping $file, $registry and $ml_registry"
    else
        rm -rf "$file" "$registry" "$ml_registry"
    fi
    [ "$rc" -eq 0 ] || say "failed (exit $rc); the mount daemons' log is $out/mount.log"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

unmount_all

say "set-up and release build"
scripts/setup.sh
# safetensors.numpy loads BF16 tensors only when ml_dtypes gives numpy a bfloat16.
if ! "$python" -c 'import ml_dtypes' 2>/dev/null; then
    say "installing ml_dtypes into .venv (for BF16 in safetensors.numpy.load_file)"
    "$python" -m pip install -q --disable-pip-version-check ml_dtypes
fi
cargo build --release --quiet
[ -x "$bin" ] || die "$bin was not built"
# What the binary was built from (others may be editing src/ meanwhile).
built_from="$(git describe --always --dirty 2>/dev/null || echo unknown)"
changed="$(git status --short --untracked-files=no 2>/dev/null | tr -s ' \n' ' ' || true)"
[ -z "$changed" ] || built_from="$built_from (changed:${changed% })"

# The TileDB-ML column: tiledb-ml's load() against the first read of the
# model's view through the mount.
tiledb_ml_column() {
    if ! "$python" -c 'import torch, tiledb.ml.models.pytorch' 2>/dev/null; then
        say "TileDB-ML column skipped: torch and tiledb-ml are not in .venv" \
            "(.venv/bin/pip install torch tiledb-ml tensorboard)"
        return 0
    fi
    if [ -d "$ml_registry/model" ]; then
        say "reusing $ml_registry/model"
    else
        say "saving a ${ML_SIZE_MIB} MiB PyTorch model with tiledb-ml into $ml_registry/model"
        rm -rf "$ml_registry"
        mkdir -p "$ml_registry"
        "$python" scripts/bench/bench_tiledb_ml.py make "$ml_registry/model" "$ML_SIZE_MIB"
    fi
    "$python" scripts/bench/bench_tiledb_ml.py run --bin "$bin" --out "$out" \
        --registry "$ml_registry" --runs "$ML_RUNS" --built-from "$built_from"
}

start=$SECONDS
if [ "$SCALE" = 1 ]; then
    rm -rf "$out/scale"
    mkdir -p "$out/scale"
    "$python" scripts/bench/bench_scale.py --bin "$bin" --out "$out" --base "$out/scale" \
        --label local --built-from "$built_from"
    if [ "$S3" = 1 ]; then
        scripts/garage.sh install
        rm -rf "$garage_state"
        scripts/garage.sh start "$garage_state" 1
        (
            # shellcheck disable=SC1091
            source "$garage_state/env"
            "$python" scripts/bench/bench_scale.py --bin "$bin" --out "$out" \
                --base "$MODELFS_TEST_S3/scale-$(date +%s)" --label s3 --built-from "$built_from" \
                --grow "$SCALE_S3_GROW" --remove "$((SCALE_S3_GROW / 10))" \
                --admin-port "${GARAGE_ADMIN_PORTS%%,*}" --changed 1000
        )
        scripts/garage.sh stop "$garage_state"
    fi
    say "done in $((SECONDS - start)) s (after the build)"
    exit 0
fi
if [ "$ML_ONLY" = 1 ]; then
    tiledb_ml_column
    say "done in $((SECONDS - start)) s (after the build)"
    exit 0
fi
if [ -f "$file" ]; then
    say "reusing $file"
else
    say "writing $file"
    "$python" scripts/bench/bench.py make "$file" "$SIZE_MIB"
fi

say "importing it into $registry"
rm -rf "$registry"
"$bin" import --quiet "$file" "$registry/model.safetensors"
: >"$out/mount.log"

"$python" scripts/bench/bench.py run --bin "$bin" --out "$out" --file "$file" \
    --registry "$registry" --runs "$RUNS" --built-from "$built_from"

if [ "$ML" = 1 ]; then
    tiledb_ml_column
fi

if [ "$S3" = 1 ]; then
    scripts/garage.sh install
    rm -rf "$garage_state"
    scripts/garage.sh start "$garage_state" 1
    (
        # shellcheck disable=SC1091
        source "$garage_state/env"
        s3_registry="$MODELFS_TEST_S3/bench-$(date +%s)/registry"
        say "importing the file into $s3_registry"
        "$bin" import --quiet "$file" "$s3_registry/model.safetensors"
        "$python" scripts/bench/bench_s3.py --bin "$bin" --out "$out" --file "$file" \
            --registry "$s3_registry" --runs "$RUNS" --built-from "$built_from" \
            --admin-port "${GARAGE_ADMIN_PORTS%%,*}"
    )
    scripts/garage.sh stop "$garage_state"
fi
say "done in $((SECONDS - start)) s (after the build)"
