#!/usr/bin/env bash
# Seeds the default local registry (./registry) with a demo model on first
# run, then lists it. Once the mount lands this mounts it at ./mnt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup.sh
cargo build --release --quiet
bin="$root/target/release/modelfs"
registry="$root/registry"

if ! "$bin" ls "$registry/demo-model" >/dev/null 2>&1; then
    demo="$(mktemp -d)"
    trap 'rm -rf "$demo"' EXIT
    .venv/bin/python scripts/make_demo_model.py "$demo/demo-model"
    "$bin" import "$demo/demo-model" "$registry/demo-model"
fi
"$bin" ls -l "$registry/demo-model"
echo
echo "Registry: $registry (try: $bin info $registry/demo-model/model.safetensors)"
