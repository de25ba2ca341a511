"""Measures file-array layouts (tile extent x filters) on realistic weights.

Writes 256 MiB of BF16/F32 weights (normally distributed, as trained weights
are) into a dense 1-D UINT8 array per layout, then reports the stored size,
the write time, a full sequential read, and the median latency of 200 random
64 KiB reads. Used to choose the file-array layout in src/registry/file_array.rs.
Run: .venv/bin/python scripts/measure/tile_extent.py [MiB]
"""
import os, sys, time, tempfile, statistics, random
import numpy as np
import tiledb

mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
rng = np.random.default_rng(0)
f32 = (rng.standard_normal(mib * 2**20 // 8, dtype=np.float32) * 0.02)
bf16 = (f32.view(np.uint32) >> 16).astype(np.uint16)
data = np.concatenate([bf16.view(np.uint8), f32.view(np.uint8)])[: mib * 2**20]
n = data.size

layouts = []
for ext in (64 << 10, 256 << 10, 1 << 20, 4 << 20):
    layouts.append((ext, "none", tiledb.FilterList([])))
for name, fl in (
    ("zstd1", [tiledb.ZstdFilter(1)]),
    ("byteshuffle+zstd1", [tiledb.ByteShuffleFilter(), tiledb.ZstdFilter(1)]),
    ("lz4", [tiledb.LZ4Filter()]),
    ("md5", [tiledb.ChecksumMD5Filter()]),
    ("sha256", [tiledb.ChecksumSHA256Filter()]),
):
    layouts.append((256 << 10, name, tiledb.FilterList(fl)))

def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)

print(f"{'extent':>8} {'filters':>18} {'stored':>8} {'write s':>8} {'read s':>7} {'rand64k ms':>10}")
for ext, name, fl in layouts:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as d:
        uri = os.path.join(d, "a")
        dom = tiledb.Domain(tiledb.Dim("position", domain=(0, 2**62), tile=ext, dtype=np.uint64))
        tiledb.Array.create(uri, tiledb.ArraySchema(domain=dom, attrs=[tiledb.Attr("contents", dtype=np.uint8, filters=fl)]))
        t = time.perf_counter()
        with tiledb.open(uri, "w") as A:
            A[0:n] = data
        tw = time.perf_counter() - t
        os.system("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null")
        t = time.perf_counter()
        with tiledb.open(uri) as A:
            out = A[0:n]["contents"]
        tr = time.perf_counter() - t
        assert np.array_equal(out, data)
        lat = []
        with tiledb.open(uri) as A:
            r = random.Random(1)
            for _ in range(200):
                o = r.randrange(0, n - 65536)
                t = time.perf_counter()
                A[o:o + 65536]
                lat.append((time.perf_counter() - t) * 1000)
        print(f"{ext >> 10:>7}K {name:>18} {du(uri) / n:>7.3f}x {tw:>8.2f} {tr:>7.2f} {statistics.median(lat):>10.2f}")
