"""TileDB-ML model arrays through `modelfs export` and `modelfs info`, checked
with Python's safetensors: the fixture arrays written by the real tiledb-ml
against their expected/ files, and arrays made here with TileDB-Py for what
the fixtures lack (a pickle naming os.system, a size key left from an older
save)."""
import collections
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import safetensors
import tiledb
from safetensors import safe_open
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "data" / "tiledb_ml" / "fixtures"
EXPECTED = FIXTURES / "expected"
NAMES = ["keras_mlp", "pytorch_mixed", "pytorch_mlp", "sklearn_linreg"]


def copy_fixture(name, dest):
    """The fixtures are read-only: copy, then make the copy writable."""
    shutil.copytree(FIXTURES / name, dest)
    for root, _dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


def raw_tensors(path):
    """name -> (dtype, shape, bytes), BF16 included (numpy has no bfloat16)."""
    return {
        name: (info["dtype"], list(info["shape"]), bytes(info["data"]))
        for name, info in safetensors.deserialize(Path(path).read_bytes())
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory, modelfs_bin):
    """Every fixture copied into one plain directory, exported once."""
    tmp = tmp_path_factory.mktemp("tiledb_ml")
    reg = tmp / "registry"
    reg.mkdir()
    for name in NAMES:
        copy_fixture(name, reg / name)
    out = tmp / "out"
    p = subprocess.run([modelfs_bin, "export", "--quiet", reg, out], capture_output=True, text=True)
    assert p.returncode == 0 and "panicked" not in p.stderr, p.stderr
    return out


def test_every_fixture_is_exported():
    assert sorted(p.name for p in EXPECTED.iterdir()) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_exported_views_load_and_match_expected(exported, name):
    got_dir, want_dir = exported / name, EXPECTED / name
    assert sorted(p.name for p in got_dir.iterdir()) == sorted(p.name for p in want_dir.iterdir())
    for want in sorted(want_dir.iterdir()):
        got = got_dir / want.name
        if want.suffix == ".safetensors":
            assert raw_tensors(got) == raw_tensors(want), want.name
            with safe_open(str(got), "np") as fg, safe_open(str(want), "np") as fw:
                assert fg.metadata() == fw.metadata()
                assert sorted(fg.keys()) == sorted(fw.keys())
                for key in fw.keys():
                    sl = fg.get_slice(key)
                    assert sl.get_dtype() == fw.get_slice(key).get_dtype(), key
                    assert sl.get_shape() == fw.get_slice(key).get_shape(), key
                    if sl.get_dtype() != "BF16":
                        np.testing.assert_array_equal(fg.get_tensor(key), fw.get_tensor(key))
            if not any(d == "BF16" for d, _, _ in raw_tensors(want).values()):
                lg, lw = load_file(str(got)), load_file(str(want))
                assert lg.keys() == lw.keys()
                for key in lw:
                    assert lg[key].dtype == lw[key].dtype and lg[key].shape == lw[key].shape
                    np.testing.assert_array_equal(lg[key], lw[key])
        elif want.suffix == ".json":
            assert json.loads(got.read_text()) == json.loads(want.read_text())
        else:
            assert got.read_bytes() == want.read_bytes(), want.name


def tiledb_ml_array(uri, fields, meta, timestamp=None, create=True):
    """An array laid out as tiledb-ml 0.10 writes it: dense, `offset` UINT64
    [0, 2^64-1026] with tiles of 1024, zstd, one UINT8 attribute per field,
    all written over [0, longest) and zero-padded; `<field>_size` for each
    non-empty field."""
    zstd = tiledb.FilterList([tiledb.ZstdFilter(level=-1)])
    if create:
        dom = tiledb.Domain(
            tiledb.Dim(name="offset", domain=(0, 2**64 - 1026), tile=1024, dtype=np.uint64, filters=zstd)
        )
        attrs = [tiledb.Attr(name=f, dtype=np.uint8, filters=zstd) for f in fields]
        tiledb.Array.create(str(uri), tiledb.ArraySchema(domain=dom, sparse=False, attrs=attrs))
    longest = max(len(b) for b in fields.values())
    buffers = {}
    for field, data in fields.items():
        buf = np.zeros(longest, dtype=np.uint8)
        buf[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        buffers[field] = buf
    with tiledb.open(str(uri), "w", timestamp=timestamp) as A:
        A[0:longest] = buffers
        for field, data in fields.items():
            if data:
                A.meta[f"{field}_size"] = len(data)
        for key, value in meta.items():
            A.meta[key] = value


def evil(marker):
    """A pickle that runs os.system("touch MARKER") when Python loads it."""

    class System:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(collections.OrderedDict([("weight", System())]), protocol=4)


def test_the_evil_payload_is_real(tmp_path):
    # The check below means something only if loading the pickle would
    # really create the marker: prove it, in this process, on another path.
    control = tmp_path / "control"
    pickle.loads(evil(control))
    assert control.exists()


def test_a_pickle_calling_os_system_is_refused_and_never_run(tmp_path, run):
    marker = tmp_path / "pwned"
    reg = tmp_path / "registry"
    reg.mkdir()
    uri = reg / "model"
    meta = {"TILEDB_ML_MODEL_ML_FRAMEWORK": "PYTORCH", "TILEDB_ML_MODEL_STAGE": "STAGING"}
    tiledb_ml_array(uri, {"model": evil(marker)}, meta)
    out = tmp_path / "out"
    p = run("export", reg, out, check=False)
    assert p.returncode != 0
    assert f"forbidden global {os.system.__module__}.system" in p.stderr, p.stderr
    assert str(uri) in p.stderr, p.stderr
    got = json.loads((out / "model" / "metadata.json").read_text())
    assert got == {**meta, "model_size": len(evil(marker))}
    assert sorted(p.name for p in (out / "model").iterdir()) == ["metadata.json"]
    info = run("info", uri).stdout
    assert "not shown: pickle calls forbidden global" in info, info
    assert not marker.exists(), "modelfs ran the pickle"


def test_a_good_field_is_exported_beside_a_refused_one(tmp_path, run):
    marker = tmp_path / "pwned"
    weights = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, -2], dtype=np.int64)]
    uri = tmp_path / "keras"
    fields = {"model": pickle.dumps(weights, protocol=4), "optimizer": evil(marker), "tensorboard": b""}
    tiledb_ml_array(uri, fields, {"TILEDB_ML_MODEL_ML_FRAMEWORK": "TENSORFLOW KERAS"})
    out = tmp_path / "out"
    p = run("export", uri, out, check=False)
    assert p.returncode != 0 and "`optimizer`" in p.stderr, p.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "model.safetensors"]
    loaded = load_file(str(out / "model.safetensors"))
    assert sorted(loaded) == ["0000", "0001"]
    np.testing.assert_array_equal(loaded["0000"], weights[0])
    np.testing.assert_array_equal(loaded["0001"], weights[1])
    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "keras"}
    assert not marker.exists()


def test_a_size_key_left_by_an_older_save(tmp_path, run):
    # Save 1 writes model and optimizer; save 2 only the model, so the
    # optimizer is zero-padded there but `optimizer_size` survives.
    uri = tmp_path / "keras"
    old = [np.full((40, 40), 1.5, dtype=np.float32)]
    new = [np.arange(6, dtype=np.float64)]
    opt = [np.ones(3, dtype=np.float32)]
    meta = {"TILEDB_ML_MODEL_ML_FRAMEWORK": "TENSORFLOW KERAS"}
    tiledb_ml_array(uri, {"model": pickle.dumps(old, protocol=4), "optimizer": pickle.dumps(opt, protocol=4)}, meta,
                    timestamp=1000)
    tiledb_ml_array(uri, {"model": pickle.dumps(new, protocol=4), "optimizer": b""}, meta, timestamp=2000,
                    create=False)
    with tiledb.open(str(uri)) as A:
        assert A.meta["optimizer_size"] == len(pickle.dumps(opt, protocol=4))
    out = tmp_path / "out"
    run("export", "--quiet", uri, out)
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "model.safetensors"]
    np.testing.assert_array_equal(load_file(str(out / "model.safetensors"))["0000"], new[0])
    assert "left from an older save" in run("info", uri).stdout
