"""Shared fixtures for the Python interoperability tests: the modelfs binary
(MODELFS_BIN, set by scripts/test.sh), a helper to run it, where a test's
registry lives, and real mounts."""
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def modelfs_bin():
    path = os.environ.get("MODELFS_BIN", str(ROOT / "target" / "debug" / "modelfs"))
    assert Path(path).exists(), f"{path} missing: build with cargo build first"
    return path


@pytest.fixture
def run(modelfs_bin):
    def run(*args, check=True):
        p = subprocess.run([modelfs_bin, *map(str, args)], capture_output=True, text=True)
        assert "panicked" not in p.stderr, p.stderr
        if check:
            assert p.returncode == 0, f"modelfs {args} failed: {p.stderr}"
        return p

    return run


@pytest.fixture
def registry(tmp_path):
    """The URI of a fresh registry: under tmp_path, or under the bucket in
    MODELFS_TEST_S3 (set by scripts/test_s3.sh with TileDB's S3 settings), so
    the same tests run on both."""
    base = os.environ.get("MODELFS_TEST_S3")
    if base:
        return f"{base.rstrip('/')}/{uuid.uuid4().hex}/registry"
    return str(tmp_path / "registry")


def is_mounted(path):
    target = str(Path(path).resolve())
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == target for line in f)


@pytest.fixture
def mount(modelfs_bin, tmp_path):
    """mount(registry) -> mountpoint; unmounted at the end even on failure."""
    procs = []

    def mount(registry, *flags):
        mnt = tmp_path / f"mnt{len(procs)}"
        mnt.mkdir()
        log = open(tmp_path / f"mnt{len(procs)}.log", "w")
        p = subprocess.Popen([modelfs_bin, "mount", "--foreground", str(registry), str(mnt), *flags],
                             stdout=subprocess.DEVNULL, stderr=log)
        procs.append((p, mnt))
        deadline = time.time() + 20
        while not is_mounted(mnt):
            assert p.poll() is None, (tmp_path / f"mnt{len(procs) - 1}.log").read_text()
            assert time.time() < deadline, "mount did not come up"
            time.sleep(0.02)
        return mnt

    yield mount
    for p, mnt in procs:
        if is_mounted(mnt):
            subprocess.run([modelfs_bin, "unmount", "--lazy", str(mnt)], capture_output=True)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


