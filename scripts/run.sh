#!/usr/bin/env bash
# Set-up, build, seed the default local registry (./registry) with a demo
# model on first run, and mount it read-only at ./mnt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup.sh
cargo build --release --quiet
bin="$root/target/release/modelfs"
registry="$root/registry"
mnt="$root/mnt"

if ! "$bin" ls "$registry/demo-model" >/dev/null 2>&1; then
    demo="$(mktemp -d)"
    trap 'rm -rf "$demo"' EXIT
    .venv/bin/python scripts/make_demo_model.py "$demo/demo-model"
    "$bin" import "$demo/demo-model" "$registry/demo-model"
fi

mkdir -p "$mnt"
if grep -q " $mnt " /proc/self/mountinfo; then
    echo "$mnt is already mounted"
else
    "$bin" mount "$registry" "$mnt" --log-file "$root/modelfs.log"
fi
ls -l "$mnt/demo-model"
cat <<MSG

Mounted $registry at $mnt (log: $root/modelfs.log).
Try:   .venv/bin/python -c 'from safetensors.numpy import load_file; print(list(load_file("$mnt/demo-model/model.safetensors"))[:3])'
Stop:  $bin unmount $mnt
MSG
