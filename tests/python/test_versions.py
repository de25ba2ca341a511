"""Loaders on version paths (issue #15): safetensors load_file and
safe_open on `.versions/<file>/<time>` and on a tag, each version's
tensors as they were written; a restore by copying a version over the
file; a snapshot mount (--at) loading the older weights."""
import shutil
import time

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


def weights(step):
    rng = np.random.default_rng(step)
    return {f"layer.{i}.weight": rng.standard_normal((64, 32)).astype(np.float32) for i in range(6)}


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v)


def test_loaders_read_every_version_and_a_restore(tmp_path, run, mount, registry):
    (tmp_path / "seed.json").write_text("{}")
    run("import", tmp_path / "seed.json", f"{registry}/seed.json")
    mnt = mount(registry, "--metadata-ttl", "0.2")
    (mnt / "run").mkdir()
    path = mnt / "run" / "model.safetensors"
    steps = [1, 2, 3]
    for step in steps:
        save_file(weights(step), str(path), metadata={"step": str(step)})
    vdir = mnt / "run" / ".versions" / "model.safetensors"
    names = sorted(p.name for p in vdir.iterdir())
    assert len(names) == 3, names
    for name, step in zip(names, steps):
        assert_same(load_file(str(vdir / name)), weights(step))
        with safe_open(str(vdir / name), "np") as f:
            assert f.metadata() == {"step": str(step)}
            sl = f.get_slice("layer.3.weight")[10:20]
            np.testing.assert_array_equal(sl, weights(step)["layer.3.weight"][10:20])

    # A tag is a file beside the times.
    run("tag", f"{registry}/run/model.safetensors", "best", "--at", names[0])
    time.sleep(0.4)
    assert_same(load_file(str(vdir / "best")), weights(1))

    # Restore: copy the version over the file; the copy is a new version.
    shutil.copyfile(vdir / names[0], path)
    assert_same(load_file(str(path)), weights(1))
    time.sleep(0.4)
    assert len([p for p in vdir.iterdir() if p.name[0].isdigit()]) == 4

    # A snapshot mount between the second and third versions.
    snap = mount(registry, "--at", names[1])
    assert_same(load_file(str(snap / "run" / "model.safetensors")), weights(2))
