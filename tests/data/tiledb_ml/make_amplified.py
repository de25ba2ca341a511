"""Small pickles that make a decoder copy one memoised object many times.

Usage: .venv/bin/python tests/data/tiledb_ml/make_amplified.py
(numpy from that venv; PyTorch pickles go through a stand-in `torch`
module with the same global names, as in make_handmade.py.)

Writes amplified/*.pkl and amplified/manifest.json (beside this script): a
list of {"file", "framework", "field", "references", "bytes_each"}. Each
file is about 100 KiB; decoded naively, it materialises references *
bytes_each bytes (over 1 GiB). Python's own pickle shares the object, so
these load in Python as small values.
"""
import collections
import io
import json
import os
import pickle
import struct
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "amplified")
os.makedirs(OUT, exist_ok=True)
MANIFEST = []
REFS = 20_000
BIG = 64 << 10


def write(name, obj, framework, field, refs, each):
    data = pickle.dumps(obj, protocol=4)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    MANIFEST.append(
        {"file": name, "framework": framework, "field": field, "references": refs, "bytes_each": each}
    )


def fake_module(name):
    m = types.ModuleType(name)
    sys.modules[name] = m
    return m


torch = fake_module("torch")
torch._utils = fake_module("torch._utils")
torch.storage = fake_module("torch.storage")
torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})


def _rebuild_tensor_v2(*a):
    raise RuntimeError("never called")


def _load_from_bytes(b):
    raise RuntimeError("never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
_load_from_bytes.__module__ = "torch.storage"
torch._utils._rebuild_tensor_v2 = _rebuild_tensor_v2
torch.storage._load_from_bytes = _load_from_bytes


class Storage:
    """A one-element float storage, pickled like torch's legacy storage."""

    def __init__(self, value):
        self.value = value

    def legacy_bytes(self):
        f = io.BytesIO()
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        storage = self

        class P(pickle.Pickler):
            def persistent_id(self, obj):
                return ("storage", torch.FloatStorage, "1", "cpu", 1, None) if obj is storage else None

        P(f, protocol=2).dump(self)
        pickle.dump(["1"], f, protocol=2)
        f.write(struct.pack("<q", 1) + struct.pack("<f", self.value))
        return f.getvalue()

    def __reduce__(self):
        return (_load_from_bytes, (self.legacy_bytes(),))


class Broadcast:
    """A tensor of `n` copies of the storage's one element (stride 0)."""

    def __init__(self, storage, n):
        self.storage, self.n = storage, n

    def __reduce_ex__(self, proto):
        return (_rebuild_tensor_v2, (self.storage, 0, (self.n,), (0,), False, collections.OrderedDict()))


# 1,000 state_dict keys, each a stride-0 view of one 4-byte storage that
# materialises to 1 MiB.
one = Storage(1.5)
state = collections.OrderedDict((f"layer.{i}.weight", Broadcast(one, 1 << 18)) for i in range(1000))
write("stride0_state_dict.pkl", state, "PYTORCH", "model", 1000, 1 << 20)

# A Keras weight list: one big-endian array referenced REFS times; each
# reference is byte-swapped into its own copy.
big_endian = np.arange(BIG // 4, dtype=">f4")
write("big_endian_refs.pkl", [big_endian] * REFS, "TENSORFLOW KERAS", "model", REFS, BIG)

# An optimizer state_dict whose param_groups hold one string REFS times:
# its JSON text repeats it.
text = "x" * BIG
write("param_groups_refs.pkl", {"state": {}, "param_groups": [text] * REFS}, "PYTORCH", "optimizer", REFS, BIG)

with open(os.path.join(OUT, "manifest.json"), "w") as f:
    json.dump(MANIFEST, f, indent=1)
print(len(MANIFEST), "amplified pickles written to", OUT)
