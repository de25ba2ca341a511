"""TileDB-Py and Python safetensors against arrays written and read by modelfs."""
import json

import numpy as np
import tiledb
from safetensors import safe_open

from models import write_mixed_safetensors


def test_tiledb_py_reads_a_modelfs_file_array(tmp_path, run, registry):
    src = tmp_path / "weights.bin"
    payload = np.random.default_rng(1).integers(0, 256, 700_001, dtype=np.uint8).tobytes()
    src.write_bytes(payload)
    uri = f"{registry}/weights.bin"
    run("import", src, uri)
    with tiledb.open(uri) as A:
        assert A.meta["file_size"] == len(payload)
        assert A.meta["original_file_name"] == "weights"
        assert A.meta["file_extension"] == "bin"
        assert A.schema.domain.dim(0).name == "position"
        data = A[0 : len(payload)]["contents"]
        assert data.tobytes() == payload
    # TileDB's own filestore reader takes the same array.
    assert tiledb.Filestore(uri).read() == payload


def test_modelfs_exports_a_tiledb_py_filestore_array(tmp_path, run, registry):
    src = tmp_path / "tokenizer.json"
    src.write_text(json.dumps({"vocab": {f"tok{i}": i for i in range(5000)}}))
    # A plain registry directory (on an object store, a prefix).
    tiledb.VFS().create_dir(registry)
    uri = f"{registry}/tokenizer.json"
    tiledb.Array.create(uri, tiledb.ArraySchema.from_file(str(src)))
    tiledb.Filestore.copy_from(uri, str(src))
    out = tmp_path / "out.json"
    run("export", uri, out)
    assert out.read_bytes() == src.read_bytes()
    # Listed from the plain registry directory, with its size.
    listing = run("ls", "-l", registry).stdout
    assert "tokenizer.json" in listing and str(src.stat().st_size) in listing


def test_tensor_index_agrees_with_safe_open(tmp_path, run, registry):
    src = tmp_path / "model.safetensors"
    write_mixed_safetensors(src)
    uri = f"{registry}/model.safetensors"
    run("import", src, uri)
    with tiledb.open(uri) as A:
        index = json.loads(A.meta["modelfs.tensors"])
        assert A.meta["modelfs.kind"] == "safetensors"
        assert A.meta["modelfs.header_size"] == index["header_len"]
    raw = src.read_bytes()
    by_name = {t["name"]: t for t in index["tensors"]}
    with safe_open(str(src), "np") as f:
        assert sorted(f.keys()) == sorted(by_name)
        assert index["metadata"] == f.metadata()
        for name in f.keys():
            sl = f.get_slice(name)
            t = by_name[name]
            assert t["dtype"] == sl.get_dtype(), name
            assert t["shape"] == list(sl.get_shape()), name
            begin, end = t["range"]
            if t["dtype"] != "BF16":
                assert raw[begin:end] == f.get_tensor(name).tobytes(), name
    info = run("info", uri).stdout
    for name in by_name:
        assert name in info
    row = next(l for l in info.splitlines() if "layer.0.bf16.weight" in l).split()
    assert row[:3] == ["layer.0.bf16.weight", "BF16", "[10,"]


def test_exported_safetensors_load_in_python(tmp_path, run, registry):
    src = tmp_path / "model.safetensors"
    tensors = write_mixed_safetensors(src, seed=5)
    run("import", src, f"{registry}/m/model.safetensors")
    out = tmp_path / "out"
    run("export", f"{registry}/m", out)
    with safe_open(str(out / "model.safetensors"), "np") as f:
        for name, value in tensors.items():
            np.testing.assert_array_equal(f.get_tensor(name), value)
