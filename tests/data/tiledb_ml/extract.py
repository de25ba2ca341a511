"""Extract the raw pickle bytes of every field of every tiledb-ml fixture.

Usage: .venv/bin/python tests/data/tiledb_ml/extract.py [fixtures-dir]
(fixtures-dir defaults to fixtures/ beside this script)
Writes tests/data/tiledb_ml/<fixture>/<field>.pkl. The fixture folder is read-only, so
each array is copied to a temporary folder before TileDB opens it.
"""
import os
import shutil
import sys
import tempfile

import tiledb

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
FIXTURES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "fixtures")

for name in sorted(os.listdir(FIXTURES)):
    src = os.path.join(FIXTURES, name)
    if name == "expected" or not os.path.isdir(src):
        continue
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, name)
        shutil.copytree(src, copy)
        for root, dirs, files in os.walk(copy):
            os.chmod(root, 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        with tiledb.open(copy) as A:
            meta = {k: A.meta[k] for k in A.meta.keys()}
            out = os.path.join(HERE, name)
            os.makedirs(out, exist_ok=True)
            for key, size in meta.items():
                if not key.endswith("_size"):
                    continue
                field = key[: -len("_size")]
                data = A[0:size][field]
                raw = bytes(data.tobytes())
                assert len(raw) == size, (name, field, len(raw), size)
                with open(os.path.join(out, field + ".pkl"), "wb") as fh:
                    fh.write(raw)
                print(name, field, size, raw[:2].hex())
