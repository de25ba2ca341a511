#!/usr/bin/env bash
# The standard POSIX suites on real modelfs mounts (as root):
#
#   pjdfstest  the Rust pjdfstest, every case, as root and as two other
#              users (the mount uses --allow-other), against a fresh
#              registry; the result must be exactly the one pinned in
#              tests/posix/pjdfstest.toml (its configuration too).
#   fsx        the Rust fsx with tests/posix/fsx.toml: reads, writes,
#              truncates, mmap reads and writes, fsyncs and close/reopen
#              (each a commit) on one file of up to 8 MiB, every read
#              checked; then the registry is mounted again read-only and
#              the committed file compared byte for byte with the same
#              sequence run on a local file.
#
#   scripts/posix_suites.sh [pjdfstest] [fsx]     (both when none is named)
#
# Environment: FSX_OPS (default 20000), FSX_SEED (default 20261202;
# `random` draws one and prints it), FSX_TIMEOUT (seconds, default 1200;
# 0 for none), MODELFS_BIN (default target/debug/modelfs, built when
# missing).
#
# Installs pjdfstest and fsx (cargo install --locked, pinned versions)
# when missing and creates the system user `pjdfstest` when missing.
# Everything it mounts is unmounted on every exit path, and every daemon it
# started is stopped. Without root it says so and does nothing (exit 0):
# most pjdfstest cases need root.
set -euo pipefail

PJDFSTEST_VERSION=0.2.2
FSX_VERSION=0.3.2

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
pjd_conf="$root/tests/posix/pjdfstest.toml"
fsx_conf="$root/tests/posix/fsx.toml"
python="$root/.venv/bin/python"

say() { echo "posix: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    say "skipped: pjdfstest needs root (it switches users and makes device nodes)"
    exit 0
fi

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(pjdfstest fsx)
for s in "${suites[@]}"; do
    case "$s" in
    pjdfstest | fsx) ;;
    *)
        echo "usage: $0 [pjdfstest] [fsx]" >&2
        exit 2
        ;;
    esac
done
# Several suites: each in its own run of this script (its own mounts, its
# own clean-up), all of them run, the exit status says whether all passed.
if [ ${#suites[@]} -gt 1 ]; then
    child=
    # Passed on, so the running suite unmounts before this exits.
    trap '[ -z "$child" ] || kill -TERM "$child" 2>/dev/null; wait; exit 130' INT
    trap '[ -z "$child" ] || kill -TERM "$child" 2>/dev/null; wait; exit 143' TERM
    status=0
    for s in "${suites[@]}"; do
        "$0" "$s" &
        child=$!
        if ! wait "$child"; then
            say "$s: FAILED"
            status=1
        fi
        child=
    done
    exit "$status"
fi

# --- tools ---------------------------------------------------------------

cargo_bin="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin"

# Installs crate $1 at version $2 unless that version is there already.
install_tool() {
    local name="$1" version="$2"
    if [ -x "$cargo_bin/$name" ] && [ "$("$cargo_bin/$name" --version 2>/dev/null)" = "$name $version" ]; then
        return
    fi
    say "installing $name $version (cargo install, a few minutes once)"
    cargo install --locked "$name" --version "$version"
}

# --- mounts --------------------------------------------------------------

modelfs="${MODELFS_BIN:-$root/target/debug/modelfs}"
if [ -z "${MODELFS_BIN:-}" ]; then
    cargo build --quiet
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/modelfs-posix.XXXXXX")"
# Other users must reach the mounts below it.
chmod 755 "$work"
mounted=() # "mountpoint pid" of each mount this script started

is_mounted() {
    awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# Unmounts $1 and waits for its daemon $2 to exit (killing it after 30 s).
stop_mount() {
    local mnt="$1" pid="$2"
    if is_mounted "$mnt"; then
        "$modelfs" unmount "$mnt" 2>/dev/null ||
            "$modelfs" unmount --lazy "$mnt" 2>/dev/null ||
            umount -l "$mnt" 2>/dev/null || true
    fi
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "daemon $pid did not exit after unmounting $mnt; killing it"
        kill -9 "$pid" 2>/dev/null || true
        is_mounted "$mnt" && umount -l "$mnt" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# The suite's tool runs in the background under timeout(1) (its own process
# group), so a signal reaches this shell at once and clean-up can stop it.
tool_pid=
run_tool() { # LIMIT_SECONDS (0: none) COMMAND...
    local limit="$1" rc=0
    shift
    timeout -s KILL "$limit" "$@" &
    tool_pid=$!
    wait "$tool_pid" || rc=$?
    tool_pid=
    return "$rc"
}

cleanup() {
    local status=$?
    local entry still=0
    if [ -n "$tool_pid" ]; then
        kill -TERM -- "-$tool_pid" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$tool_pid" 2>/dev/null || true
    fi
    for entry in "${mounted[@]}"; do
        # shellcheck disable=SC2086
        stop_mount $entry
    done
    for entry in "${mounted[@]}"; do
        if is_mounted "${entry%% *}"; then
            still=1
        fi
    done
    if [ "$still" = 1 ]; then
        say "a mount under $work is still there; not removing it"
    elif [ "$status" != 0 ]; then
        # Logs, outputs and fsx's artifacts, for a look at what failed.
        rm -rf "$work/fsx/registry" "$work/fsx/local" "$work/staging"
        say "kept $work (logs, outputs, fsx artifacts)"
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Mounts registry $1 at $2 (logging to $3) with extra flags $4...; sets
# mount_pid. Fails, showing the log, if the mount does not come up.
start_mount() {
    local reg="$1" mnt="$2" log="$3"
    shift 3
    mkdir -p "$mnt"
    RUST_LOG=info,fuser=error "$modelfs" mount --foreground "$reg" "$mnt" \
        --staging-dir "$work/staging" "$@" 2>"$log" &
    mount_pid=$!
    mounted+=("$mnt $mount_pid")
    for _ in $(seq 1 400); do
        if is_mounted "$mnt"; then
            return 0
        fi
        if ! kill -0 "$mount_pid" 2>/dev/null; then
            break
        fi
        sleep 0.05
    done
    say "the mount at $mnt did not come up:"
    cat "$log" >&2
    return 1
}

# Unmounts the mount at $1 (started by start_mount) and forgets it.
end_mount() {
    local entry keep=()
    for entry in "${mounted[@]}"; do
        if [ "${entry%% *}" = "$1" ]; then
            # shellcheck disable=SC2086
            stop_mount $entry
        else
            keep+=("$entry")
        fi
    done
    mounted=("${keep[@]+"${keep[@]}"}")
    if is_mounted "$1"; then
        say "could not unmount $1"
        return 1
    fi
}

# An empty registry (a TileDB group) at $1.
new_registry() {
    local out
    mkdir -p "$work/empty"
    if ! out="$("$modelfs" import "$work/empty" "$1" 2>&1)"; then
        say "could not make an empty registry at $1: $out"
        return 1
    fi
}

# Fails when a daemon log shows a panic.
check_log() {
    if grep -q "panicked" "$1"; then
        say "the daemon panicked; its log ($1):"
        grep -B2 -A10 "panicked" "$1" >&2
        return 1
    fi
}

# --- pjdfstest -------------------------------------------------------------

run_pjdfstest() {
    install_tool pjdfstest "$PJDFSTEST_VERSION"
    if ! getent passwd pjdfstest >/dev/null; then
        say "creating the system user pjdfstest (for pjdfstest's other-user cases)"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin pjdfstest
    fi
    local pinned
    pinned="$("$python" - "$pjd_conf" "$PJDFSTEST_VERSION" <<'PY'
import sys, tomllib
conf = tomllib.load(open(sys.argv[1], "rb"))
pin = conf["modelfs"]
if pin["pjdfstest_version"] != sys.argv[2]:
    sys.exit(f"{sys.argv[1]} is pinned for pjdfstest {pin['pjdfstest_version']}, the script installs {sys.argv[2]}")
print(pin["passed"], pin["skipped"], len(set(conf["settings"]["expected_failures"])))
PY
    )"
    local want_pass want_skip want_xfail
    read -r want_pass want_skip want_xfail <<<"$pinned"

    local dir="$work/pjdfstest"
    mkdir -p "$dir"
    new_registry "$dir/registry"
    start_mount "$dir/registry" "$dir/mnt" "$dir/modelfs.log" --allow-other
    say "pjdfstest $PJDFSTEST_VERSION on $dir/mnt (about 4 minutes)"
    local rc=0
    run_tool 1800 env NO_COLOR=1 RUST_BACKTRACE=0 \
        "$cargo_bin/pjdfstest" -c "$pjd_conf" -p "$dir/mnt" >"$dir/out" 2>&1 || rc=$?
    end_mount "$dir/mnt"
    sed -i 's/\x1b\[[0-9;]*m//g' "$dir/out"

    local summary
    summary="$(grep '^Summary:' "$dir/out" || true)"
    if [ -z "$summary" ]; then
        say "pjdfstest ended without a summary (exit $rc); its output ends with:"
        tail -n 30 "$dir/out" >&2
        check_log "$dir/modelfs.log" || true
        return 1
    fi
    echo "pjdfstest: $summary"
    local failed skipped passed xfail
    read -r failed skipped passed xfail < <(sed -E \
        's/^Summary: ([0-9]+) failed, ([0-9]+) skipped, ([0-9]+) passed, ([0-9]+) expected failures.*/\1 \2 \3 \4/' \
        <<<"$summary")
    local ok=1
    if [ "$failed" != 0 ] || [ "$rc" != 0 ]; then
        say "pjdfstest: cases that failed or passed against the pin (see $pjd_conf):"
        grep -E -A4 ' (FAILED|PASSED UNEXPECTEDLY)$' "$dir/out" >&2 || true
        ok=0
    fi
    if [ "$passed" != "$want_pass" ] || [ "$skipped" != "$want_skip" ] || [ "$xfail" != "$want_xfail" ]; then
        say "pjdfstest: $passed passed, $skipped skipped, $xfail expected failures;" \
            "pinned: $want_pass, $want_skip, $want_xfail ($pjd_conf)"
        ok=0
    fi
    check_log "$dir/modelfs.log" || ok=0
    [ "$ok" = 1 ]
}

# --- fsx -------------------------------------------------------------------

exit_reason() { # EXIT_STATUS LIMIT
    if [ "$1" = 137 ] && [ "$2" != 0 ]; then
        echo "timed out after $2 s (FSX_TIMEOUT)"
    else
        echo "exit $1"
    fi
}

run_fsx() {
    install_tool fsx "$FSX_VERSION"
    local ops="${FSX_OPS:-20000}" seed="${FSX_SEED:-20261202}" limit="${FSX_TIMEOUT:-1200}"
    if [ "$seed" = random ]; then
        seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
    fi
    local dir="$work/fsx"
    mkdir -p "$dir/local" "$dir/artifacts"
    new_registry "$dir/registry"

    say "fsx $FSX_VERSION: $ops operations, seed $seed, on a local file (the reference)"
    local rc=0
    run_tool "$limit" "$cargo_bin/fsx" -q -f "$fsx_conf" -N "$ops" -S "$seed" \
        -P "$dir/artifacts" "$dir/local/fsx.bin" >"$dir/local.out" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then
        say "fsx failed on the local file (the reference, not modelfs): $(exit_reason "$rc" "$limit")"
        tail -n 40 "$dir/local.out" >&2
        return 1
    fi

    start_mount "$dir/registry" "$dir/mnt" "$dir/modelfs.log"
    say "fsx $FSX_VERSION: $ops operations, seed $seed, on the mount"
    local start=$SECONDS
    run_tool "$limit" "$cargo_bin/fsx" -q -f "$fsx_conf" -N "$ops" -S "$seed" \
        -P "$dir/artifacts" "$dir/mnt/fsx.bin" >"$dir/mount.out" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then
        say "fsx failed on the mount (seed $seed, $ops operations): $(exit_reason "$rc" "$limit"); its log:"
        tail -n 60 "$dir/mount.out" >&2
        say "modelfs log:"
        tail -n 20 "$dir/modelfs.log" >&2
        return 1
    fi
    echo "fsx: $ops operations, seed $seed: all reads checked ($((SECONDS - start)) s)"
    end_mount "$dir/mnt"
    check_log "$dir/modelfs.log"

    start_mount "$dir/registry" "$dir/ro" "$dir/modelfs-ro.log" --read-only
    if ! cmp "$dir/local/fsx.bin" "$dir/ro/fsx.bin"; then
        say "fsx: the committed file differs from the reference (seed $seed, $ops operations)"
        ls -l "$dir/local/fsx.bin" "$dir/ro/fsx.bin" >&2
        return 1
    fi
    echo "fsx: read-only remount: fsx.bin ($(stat -c %s "$dir/ro/fsx.bin") bytes) is identical to the reference"
    end_mount "$dir/ro"
    check_log "$dir/modelfs-ro.log"
}

# One suite, with `set -e` in force: any failure ends the run (and the
# EXIT trap unmounts).
"run_${suites[0]}"
