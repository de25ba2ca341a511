"""Shared fixtures for the Python interoperability tests: the modelfs binary
(MODELFS_BIN, set by scripts/test.sh) and a helper to run it."""
import os
import subprocess
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
