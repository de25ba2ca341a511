"""Framework loaders on a real mount: safetensors (load_file, safe_open with
partial slices), numpy.memmap, and the header-only open's TileDB traffic."""
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from models import write_mixed_safetensors


def stats(mnt):
    return json.loads((Path(mnt) / ".modelfs-stats").read_text())


def test_safetensors_loaders_read_the_same_tensors(tmp_path, run, mount, registry):
    src = tmp_path / "model.safetensors"
    write_mixed_safetensors(src, seed=3)
    big = {f"layer.{i}.weight": np.random.default_rng(i).standard_normal((256, 256)).astype(np.float32) for i in range(40)}
    save_file(big, str(tmp_path / "big.safetensors"))
    run("import", src, f"{registry}/m/model.safetensors")
    run("import", tmp_path / "big.safetensors", f"{registry}/m/big.safetensors")
    mnt = mount(registry)

    got = load_file(str(mnt / "m" / "big.safetensors"))
    assert sorted(got) == sorted(big)
    for k, v in big.items():
        np.testing.assert_array_equal(got[k], v)

    with safe_open(str(src), "np") as want, safe_open(str(mnt / "m" / "model.safetensors"), "np") as f:
        assert sorted(f.keys()) == sorted(want.keys())
        assert f.metadata() == want.metadata()
        for name in f.keys():
            if f.get_slice(name).get_dtype() == "BF16":
                continue
            a, b = f.get_slice(name), want.get_slice(name)
            shape = a.get_shape()
            if len(shape) >= 1 and shape[0] > 2:
                np.testing.assert_array_equal(a[1:shape[0] - 1], b[1:shape[0] - 1])
            np.testing.assert_array_equal(f.get_tensor(name), want.get_tensor(name))


def test_numpy_memmap_reads_the_right_bytes(tmp_path, run, mount, registry):
    data = np.random.default_rng(9).integers(0, 2**31, 3_000_001, dtype=np.int64)
    raw = tmp_path / "data.bin"
    data.tofile(raw)
    run("import", raw, f"{registry}/data.bin")
    mnt = mount(registry)
    mm = np.memmap(mnt / "data.bin", dtype=np.int64, mode="r")
    assert mm.shape == data.shape
    idx = np.random.default_rng(1).integers(0, data.size, 5000)
    np.testing.assert_array_equal(mm[idx], data[idx])
    np.testing.assert_array_equal(mm[-1000:], data[-1000:])
    np.testing.assert_array_equal(np.asarray(mm), data)


def test_header_only_open_of_256_mib_asks_few_tiles(tmp_path, run, mount, registry):
    rng = np.random.default_rng(0)
    tensors = {f"model.layers.{i}.mlp.weight": rng.integers(0, 255, (1024, 1024), dtype=np.uint8).view(np.float32)
               .reshape(512, 512) for i in range(256)}
    src = tmp_path / "big.safetensors"
    save_file(tensors, str(src))
    assert src.stat().st_size >= 256 << 20
    run("import", src, f"{registry}/big.safetensors")
    src.unlink()
    mnt = mount(registry)
    before = stats(mnt)
    with safe_open(str(mnt / "big.safetensors"), "np") as f:
        keys = list(f.keys())
    after = stats(mnt)
    assert len(keys) == 256
    tile = 256 * 1024
    asked = after["tiledb_bytes"] - before["tiledb_bytes"]
    # The header is ~20 KB; the kernel's first readahead may pull up to 1 MiB.
    assert asked <= 8 * tile, f"header-only open asked TileDB for {asked} bytes"
