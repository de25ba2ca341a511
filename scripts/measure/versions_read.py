"""Measures what a file's number of versions costs readers.

Writes versions of one file with `modelfs import --force` (each a whole
new version, as every commit is) and, at 1, 10, 50 and 200 versions,
reports (median of 3, warm OS cache):
- TileDB's read of the whole current version with the array opened at the
  version's own timestamp `[T, T]` (how modelfs reads a version) and as of
  `T` (every older fragment in view; how it read before issue #15);
- `modelfs export` of the file (a fresh process: open, read, write);
- a fresh mount's first read of the file, and its `ls` of
  `.versions/<file>/` (opens every version's metadata);
then prunes to one version and measures again.
Used for the "Versions" section of the README.
Run: .venv/bin/python scripts/measure/versions_read.py [MiB] [max versions]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tiledb

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("MODELFS_BIN", str(ROOT / "target" / "release" / "modelfs"))
mib = int(sys.argv[1]) if len(sys.argv) > 1 else 16
most = int(sys.argv[2]) if len(sys.argv) > 2 else 200
size = mib << 20


def run(*args):
    subprocess.run([BIN, *map(str, args)], check=True, capture_output=True)


def median(f, n=3):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tiledb_read(uri, ts):
    with tiledb.open(uri, timestamp=ts) as a:
        a[0:size]["contents"]


def measure(work, reg, uri, count):
    with tiledb.open(uri) as a:
        t = int(a.meta["modelfs.timestamp"])
    own = median(lambda: tiledb_read(uri, (t, t)))
    as_of = median(lambda: tiledb_read(uri, t))
    out = work / "out.bin"

    def export():
        if out.exists():
            out.unlink()
        run("export", uri, out)

    exp = median(export)
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    run("mount", reg, mnt)
    try:
        first = median(lambda: (mnt / "f.bin").read_bytes(), n=1)
        ls = median(lambda: os.listdir(mnt / ".versions" / "f.bin"), n=1)
    finally:
        run("unmount", mnt)
    frags = len(tiledb.FragmentInfoList(uri))
    print(f"{count:>9} {frags:>9} {own:>11.3f} {as_of:>11.3f} {exp:>9.3f} {first:>11.3f} {ls:>14.3f}", flush=True)


def main():
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as d:
        work = Path(d)
        reg = work / "registry"
        uri = f"{reg}/f.bin"
        src = work / "f.bin"
        rng = np.random.default_rng(0)
        print(f"{mib} MiB file; seconds, median of 3 (mount columns: one run)")
        print(f"{'versions':>9} {'fragments':>9} {'read [T,T]':>11} {'read as-of':>11} {'export':>9} "
              f"{'mount read':>11} {'ls .versions':>14}")
        count = 0
        for target in (1, 10, 50, 200):
            if target > most:
                break
            while count < target:
                src.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
                run("import", "--quiet", "--force", src, uri)
                count += 1
            measure(work, reg, uri, count)
        before = sum(p.stat().st_size for p in Path(uri).rglob("*") if p.is_file())
        t = time.perf_counter()
        run("prune", uri, "--keep", "1")
        took = time.perf_counter() - t
        after = sum(p.stat().st_size for p in Path(uri).rglob("*") if p.is_file())
        print(f"prune --keep 1 of {count} versions: {took:.2f} s, {before} -> {after} bytes stored")
        measure(work, reg, uri, 1)


main()
