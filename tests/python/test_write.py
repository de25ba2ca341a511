"""Python savers writing straight into a read-write mount, read back after
a remount: safetensors, a saver that seeks back to patch its header (as
zip-based savers do), and numpy.save."""
import struct

import numpy as np
from safetensors.numpy import load_file, save_file


def test_savers_write_into_the_mount_and_read_back_after_remount(tmp_path, run, mount, registry):
    (tmp_path / "seed.json").write_text("{}")
    run("import", tmp_path / "seed.json", f"{registry}/seed.json")
    mnt = mount(registry)
    rng = np.random.default_rng(7)
    tensors = {f"layer.{i}.weight": rng.standard_normal((128, 64)).astype(np.float32) for i in range(20)}
    tensors["ids"] = np.arange(1000, dtype=np.int64)
    (mnt / "ckpt").mkdir()
    save_file(tensors, str(mnt / "ckpt" / "model.safetensors"), metadata={"step": "42"})

    # A saver that writes a placeholder header, the data, then seeks back.
    payload = rng.integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    with open(mnt / "ckpt" / "patched.bin", "wb") as f:
        f.write(b"\0" * 16)
        f.write(payload)
        f.seek(0)
        f.write(b"MAGIC!!!" + struct.pack("<Q", len(payload)))

    arr = rng.standard_normal((300, 300))
    np.save(mnt / "ckpt" / "arr.npy", arr)

    mnt2 = mount(registry, "--read-only")
    got = load_file(str(mnt2 / "ckpt" / "model.safetensors"))
    assert sorted(got) == sorted(tensors)
    for k, v in tensors.items():
        np.testing.assert_array_equal(got[k], v)
    raw = (mnt2 / "ckpt" / "patched.bin").read_bytes()
    assert raw[:8] == b"MAGIC!!!" and struct.unpack("<Q", raw[8:16])[0] == len(payload)
    assert raw[16:] == payload
    np.testing.assert_array_equal(np.load(mnt2 / "ckpt" / "arr.npy"), arr)
    info = run("info", f"{registry}/ckpt/model.safetensors").stdout
    assert "kind:       safetensors" in info and "layer.19.weight" in info
