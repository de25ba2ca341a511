"""Hand-made pickles for the Rust tests, with what each must decode to.

Usage: .venv/bin/python tests/data/tiledb_ml/make_handmade.py
(numpy comes from that venv; nothing here needs torch: PyTorch pickles are
written through a stand-in `torch` module that has the same global names.)

Writes handmade/*.pkl and handmade/manifest.json (beside this script), a list
of {"file", "kind", "expect"}:
- kind "value": expect is the value in a tagged JSON form (see `tag`), or
  {"same_as": FILE} when it is the value FILE (listed earlier) holds, which
  keeps the manifest small.
- kind "error": expect is the error kind the reader must return.
- kind "numpy": expect is {"dtype", "shape", "hex", "scalar"}.
- kind "torch": expect is a list of [name, dtype, shape, hex] for an
  OrderedDict of tensors.
- kind "tensorboard": expect is a list of [relative path, hex].
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
OUT = os.path.join(HERE, "handmade")
os.makedirs(OUT, exist_ok=True)
MANIFEST = []


def tag(v):
    """Tagged JSON of a plain Python value (the Rust test builds the same)."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return {"int": str(v)}
    if isinstance(v, float):
        return {"float": struct.pack(">d", v).hex()}
    if isinstance(v, str):
        return {"str": v}
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, bytearray):
        return {"bytearray": bytes(v).hex()}
    if isinstance(v, pickle.PickleBuffer):
        raw = v.raw()
        return {"bytes" if raw.readonly else "bytearray": raw.tobytes().hex()}
    if isinstance(v, list):
        return {"list": [tag(x) for x in v]}
    if isinstance(v, tuple):
        return {"tuple": [tag(x) for x in v]}
    if isinstance(v, collections.OrderedDict):
        return {"odict": [[tag(k), tag(x)] for k, x in v.items()]}
    if isinstance(v, dict):
        return {"dict": [[tag(k), tag(x)] for k, x in v.items()]}
    if isinstance(v, frozenset):
        return {"frozenset": [tag(x) for x in v]}
    if isinstance(v, set):
        return {"set": [tag(x) for x in v]}
    raise TypeError(type(v))


def write(name, data, kind, expect):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    MANIFEST.append({"file": name, "kind": kind, "expect": expect})


# -- plain values, every protocol ------------------------------------------
shared = [1, 2]
PLAIN = {
    "nested": {
        "a": [1, 2, {"b": (3, 4.5, None)}],
        "c": {1, 2, 3},
        "d": frozenset({"x"}),
        "e": b"\x00\xff",
        "f": bytearray(b"ab"),
        "g": "unicod\u00e9 \u2603 \U0001f600",
        "h": True,
        "i": -7,
        (1, "k"): "tuple key",
        2.5: "float key",
        None: "none key",
    },
    "bigints": [
        0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1,
        2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**200, -(2**200), 10**100,
    ],
    "memo": {"x": shared, "y": shared, "z": (shared, shared), "s": "same", "t": "same"},
    "floats": [0.0, -0.0, 1.5, 1e-300, 1e300, float("inf"), float("-inf"), 3.141592653589793],
    "strings": ["", "ascii", "\u00e9", "\u2603", "\U0001f600", "line\nbreak", "back\\slash", "q'\""],
    "bytes": [b"", b"abc", bytes(range(256)), b"x" * 300],
    "long_list": list(range(1100)),  # two APPENDS batches
    "long_dict": {f"k{i}": i for i in range(1050)},  # two SETITEMS batches
    "odict": collections.OrderedDict([("a", 1), ("b", [2, 3]), ("c", collections.OrderedDict())]),
    "empty": [[], (), {}, set(), frozenset(), bytearray(), b"", ""],
    "deep": [[[[[[[[["bottom"]]]]]]]]],
}
for case, value in PLAIN.items():
    for proto in range(0, 6):
        expect = tag(value) if proto == 0 else {"same_as": f"{case}_p0.pkl"}
        write(f"{case}_p{proto}.pkl", pickle.dumps(value, protocol=proto), "value", expect)

# Protocol 5 in-band buffers: BYTEARRAY8 for writable, bytes for read-only.
pb = [pickle.PickleBuffer(bytearray(b"abc")), pickle.PickleBuffer(b"ro")]
write("picklebuffer_p5.pkl", pickle.dumps(pb, protocol=5), "value", tag(pb))
# Out of band: NEXT_BUFFER / READONLY_BUFFER, which the reader refuses.
oob = pickle.dumps(pickle.PickleBuffer(b"x"), protocol=5, buffer_callback=lambda b: False)
write("out_of_band_p5.pkl", oob, "error", "Unsupported")

rec = []
rec.append(rec)
for proto in (0, 2, 4):
    write(f"recursive_p{proto}.pkl", pickle.dumps(rec, protocol=proto), "error", "Recursive")

# -- numpy ------------------------------------------------------------------
base = np.arange(24, dtype="f4").reshape(4, 6) / 7
ARRAYS = {
    "f4_2d": base,
    "f8_fortran": np.asfortranarray(np.arange(6, dtype="f8").reshape(3, 2) - 2.5),
    "f4_sliced": base[:, ::2],
    "f4_transposed": base.T,
    "i8_0d": np.array(42, dtype="i8"),
    "u1": np.arange(10, dtype="u1"),
    "bool": np.array([True, False, True]),
    "i2_big_endian": np.arange(5, dtype=">i2") - 2,
    "f2": np.array([0.5, -1.0, 65504.0], dtype="f2"),
    "i4_3d": np.arange(24, dtype="i4").reshape(2, 3, 4),
    "u4": np.array([1, 2**32 - 1], dtype="u4"),
    "empty": np.zeros((0, 3), dtype="f4"),
}
for case, arr in ARRAYS.items():
    le = arr.astype(arr.dtype.newbyteorder("<"))
    expect = {
        "dtype": le.dtype.str[1:],
        "shape": list(arr.shape),
        "hex": np.ascontiguousarray(le).tobytes().hex(),
        "scalar": False,
    }
    for proto in (2, 3, 4, 5):
        write(f"np_{case}_p{proto}.pkl", pickle.dumps(arr, protocol=proto), "numpy", expect)
for case, sc in {"f4": np.float32(1.5), "i8": np.int64(-7), "f8": np.float64(2.25)}.items():
    expect = {"dtype": sc.dtype.str[1:], "shape": [], "hex": sc.tobytes().hex(), "scalar": True}
    for proto in (2, 4):
        write(f"npscalar_{case}_p{proto}.pkl", pickle.dumps(sc, protocol=proto), "numpy", expect)
weights = [base, np.arange(3, dtype="f4")]
write("keras_like_weights_p4.pkl", pickle.dumps(weights, protocol=4), "value_skip", None)

# -- PyTorch, through a stand-in torch module ------------------------------
def fake_module(name):
    m = types.ModuleType(name)
    sys.modules[name] = m
    return m


torch = fake_module("torch")
torch_utils = fake_module("torch._utils")
torch_storage = fake_module("torch.storage")
torch._utils = torch_utils
torch.storage = torch_storage

STORAGE_TYPES = {
    "F32": ("FloatStorage", "f", 4),
    "F64": ("DoubleStorage", "d", 8),
    "F16": ("HalfStorage", "e", 2),
    "I64": ("LongStorage", "q", 8),
    "I32": ("IntStorage", "i", 4),
    "I16": ("ShortStorage", "h", 2),
    "I8": ("CharStorage", "b", 1),
    "U8": ("ByteStorage", "B", 1),
    "BOOL": ("BoolStorage", "?", 1),
}
for _dtype, (cls, _fmt, _size) in STORAGE_TYPES.items():
    c = type(cls, (), {"__module__": "torch"})
    setattr(torch, cls, c)


def _rebuild_tensor_v2(*a):
    raise RuntimeError("never called")


def _rebuild_parameter(*a):
    raise RuntimeError("never called")


def _load_from_bytes(b):
    raise RuntimeError("never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
_rebuild_parameter.__module__ = "torch._utils"
_load_from_bytes.__module__ = "torch.storage"
torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
torch_utils._rebuild_parameter = _rebuild_parameter
torch_storage._load_from_bytes = _load_from_bytes

MAGIC = 0x1950A86A20F9469CFC6C


class Storage:
    """A storage: dtype plus values; pickles like torch's legacy storage."""

    counter = 1000

    def __init__(self, dtype, values):
        self.dtype = dtype
        self.values = values
        Storage.counter += 1
        self.key = str(Storage.counter)

    def raw(self):
        _cls, fmt, _size = STORAGE_TYPES[self.dtype]
        return struct.pack("<" + fmt * len(self.values), *self.values)

    def legacy_bytes(self):
        f = io.BytesIO()
        pickle.dump(MAGIC, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        sys_info = {
            "protocol_version": 1001,
            "little_endian": True,
            "type_sizes": {"short": 2, "int": 4, "long": 4},
        }
        pickle.dump(sys_info, f, protocol=2)
        cls = getattr(torch, STORAGE_TYPES[self.dtype][0])
        storage = self

        class P(pickle.Pickler):
            def persistent_id(self, obj):
                if obj is storage:
                    return ("storage", cls, storage.key, "cpu", len(storage.values), None)
                return None

        P(f, protocol=2).dump(self)
        pickle.dump([self.key], f, protocol=2)
        f.write(struct.pack("<q", len(self.values)))
        f.write(self.raw())
        return f.getvalue()

    def __reduce__(self):
        return (_load_from_bytes, (self.legacy_bytes(),))


class Tensor:
    def __init__(self, storage, offset, size, stride, param=False):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.param = param

    def __reduce_ex__(self, proto):
        args = (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
                collections.OrderedDict())
        if self.param:
            inner = Tensor(self.storage, self.offset, self.size, self.stride)
            return (_rebuild_parameter, (inner, True, collections.OrderedDict()))
        return (_rebuild_tensor_v2, args)

    def expected(self):
        _cls, fmt, size = STORAGE_TYPES[self.storage.dtype]
        out = []

        def walk(dim, pos):
            if dim == len(self.size):
                out.append(self.storage.values[pos])
                return
            for i in range(self.size[dim]):
                walk(dim + 1, pos + i * self.stride[dim])

        walk(0, self.offset)
        return struct.pack("<" + fmt * len(out), *out).hex()


shared_storage = Storage("F32", [float(i) / 4 for i in range(24)])
TENSORS = collections.OrderedDict(
    [
        ("contig", Tensor(shared_storage, 0, [4, 6], [6, 1])),
        ("rows", Tensor(shared_storage, 6, [2, 6], [6, 1])),
        ("transposed", Tensor(shared_storage, 0, [6, 4], [1, 6])),
        ("strided3d", Tensor(shared_storage, 1, [2, 2, 3], [12, 3, 2])),
        ("expanded", Tensor(shared_storage, 5, [3, 4], [0, 1])),
        ("zero_d", Tensor(shared_storage, 7, [], [])),
        ("empty", Tensor(shared_storage, 0, [0, 4], [4, 1])),
        ("param", Tensor(shared_storage, 0, [24], [1], param=True)),
        ("f64", Tensor(Storage("F64", [1.5, -2.0, 3.25]), 0, [3], [1])),
        ("f16", Tensor(Storage("F16", [0.5, 1.0, -2.0, 4.0]), 0, [2, 2], [1, 2])),
        ("i64", Tensor(Storage("I64", [2**40, -5, 7]), 1, [2], [1])),
        ("i32", Tensor(Storage("I32", list(range(-3, 3))), 0, [3, 2], [2, 1])),
        ("i16", Tensor(Storage("I16", [1, -2, 3]), 0, [3], [1])),
        ("i8", Tensor(Storage("I8", [-128, 0, 127]), 0, [3], [1])),
        ("u8", Tensor(Storage("U8", [0, 128, 255]), 0, [3], [1])),
        ("bool", Tensor(Storage("BOOL", [True, False, True, True]), 0, [2, 2], [2, 1])),
    ]
)
expect = []
for name, t in TENSORS.items():
    expect.append([name, t.storage.dtype, t.size, t.expected()])
write("torch_state_dict_p4.pkl", pickle.dumps(TENSORS, protocol=4), "torch", expect)
write("torch_state_dict_p2.pkl", pickle.dumps(TENSORS, protocol=2), "torch", expect)

# A tensor whose view runs past its storage must be refused.
bad = collections.OrderedDict([("oob", Tensor(Storage("F32", [1.0, 2.0]), 1, [2], [1]))])
write("torch_out_of_bounds_p4.pkl", pickle.dumps(bad, protocol=4), "torch_error", "OutOfBounds")

# An optimizer state_dict with tensor and non-tensor state values.
step = Tensor(Storage("F32", [3.0]), 0, [], [])
exp_avg = Tensor(Storage("F32", [0.1, 0.2]), 0, [2], [1])
optim = {
    "state": {
        0: {"step": step, "exp_avg": exp_avg, "count": 3, "lr_scale": 0.5, "flag": None},
        5: {"momentum_buffer": None},
    },
    "param_groups": [
        {"lr": 1e-05, "betas": (0.9, 0.999), "eps": 1e-08, "big": 1e16, "small": 0.0001,
         "name": "caf\u00e9", "nested": {"a": [1, 2.0]}, "params": [0, 5]},
    ],
}
with open(os.path.join(OUT, "torch_optimizer_p4.pkl"), "wb") as f:
    f.write(pickle.dumps(optim, protocol=4))
MANIFEST.append({
    "file": "torch_optimizer_p4.pkl",
    "kind": "torch_optimizer",
    "expect": {
        "param_groups": json.dumps(optim["param_groups"]),
        "state.0.count": json.dumps(3),
        "state.0.lr_scale": json.dumps(0.5),
        "state.0.flag": json.dumps(None),
        "state.5.momentum_buffer": json.dumps(None),
        "tensors": [
            ["state.0.exp_avg", "F32", [2], exp_avg.expected()],
            ["state.0.step", "F32", [], step.expected()],
        ],
    },
})

# -- tensorboard -------------------------------------------------------------
TB = {
    "flat": {
        "/tmp/tb/run1/events.out.tfevents.1.host": b"abc",
        "/tmp/tb/run1/events.out.tfevents.2.host": b"defg",
    },
    "nested": {
        "/a/b/c/events.out.tfevents.1": b"\x00\x01",
        "/a/b/d/events.out.tfevents.2": b"",
    },
    "single": {"logs/events.out.tfevents.9": b"zz"},
}
for case, files in TB.items():
    paths = list(files)
    common = os.path.commonpath([os.path.dirname(p) for p in paths])
    exp = [[os.path.relpath(p, common), files[p].hex()] for p in paths]
    write(f"tb_{case}_p4.pkl", pickle.dumps(files, protocol=4), "tensorboard", exp)
write(
    "tb_dotdot_p4.pkl",
    pickle.dumps({"/tmp/tb/../etc/events.out.tfevents": b"x", "/tmp/tb/e": b"y"}, protocol=4),
    "tensorboard_error",
    "BadPath",
)

with open(os.path.join(OUT, "manifest.json"), "w") as f:
    json.dump(MANIFEST, f, separators=(",", ":"))
print(len(MANIFEST), "pickles written to", OUT)
