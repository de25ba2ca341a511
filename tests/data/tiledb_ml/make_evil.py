"""Pickles that would run code if loaded with Python's pickle.

Usage: python3 tests/data/tiledb_ml/make_evil.py   (never loads anything it writes)
Writes evil/*.pkl and evil/manifest.json (beside this script): a list of
{"file", "module", "name", "via"} naming the forbidden global the Rust
reader must report; "via" is "pickle" when the outer pickle itself calls
it, "torch" when it hides in a storage stream read by torch_legacy.
"""
import collections
import json
import os
import pickle
import pickletools

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "evil")
os.makedirs(OUT, exist_ok=True)
MANIFEST = []


def write(name, data, module, global_name, via="pickle"):
    # Sanity: the stream must parse as a pickle (without being executed).
    for _ in pickletools.genops(data):
        pass
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    MANIFEST.append({"file": name, "module": module, "name": global_name, "via": via})


class System:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('echo pwned')",))


sys_module = os.system.__module__  # "posix" on Linux
for proto in range(0, 6):
    write(f"os_system_p{proto}.pkl", pickle.dumps(System(), protocol=proto), sys_module, "system")
    write(f"eval_p{proto}.pkl", pickle.dumps(Eval(), protocol=proto), "builtins"
          if proto >= 3 else "__builtin__", "eval")

# Hidden inside allowed containers: an OrderedDict value and a list item.
nested = collections.OrderedDict([("weight", [1, 2, System()])])
write("nested_in_ordereddict_p4.pkl", pickle.dumps(nested, protocol=4), sys_module, "system")

# Hand-assembled streams for the other call opcodes.
write("newobj_popen.pkl", b"\x80\x04\x8c\nsubprocess\x8c\x05Popen\x93)\x81.", "subprocess", "Popen")
write(
    "newobj_ex_popen.pkl",
    b"\x80\x04\x8c\nsubprocess\x8c\x05Popen\x93)}\x92.",
    "subprocess",
    "Popen",
)
write("inst_os_system.pkl", b"(S'ls'\nios\nsystem\n.", "os", "system")
write("obj_os_system.pkl", b"(cos\nsystem\nS'ls'\no.", "os", "system")
write("build_on_global.pkl", b"cos\nsystem\n}b.", "os", "system")
write("copyreg_reconstructor.pkl", b"\x80\x02ccopyreg\n_reconstructor\n(tR.", "copyreg", "_reconstructor")
write("torch_load.pkl", b"\x80\x02ctorch\nload\nX\x01\x00\x00\x00xq\x00\x85R.", "torch", "load")
# getattr-style gadget: builtins.getattr(builtins, 'eval')
write(
    "getattr_gadget.pkl",
    b"\x80\x04\x8c\x08builtins\x8c\x07getattr\x93\x8c\x08builtins\x8c\x08__dict__\x93\x8c\x04eval\x86R.",
    "builtins",
    "getattr",
)
# A legacy torch storage stream whose object pickle calls os.system:
# caught when torch_legacy reads the inner stream.
inner = (
    pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    + pickle.dumps(1001, protocol=2)
    + pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    + pickle.dumps(System(), protocol=2)
)
outer = (
    b"\x80\x04\x8c\x0ctorch._utils\x8c\x12_rebuild_tensor_v2\x93("
    b"\x8c\x0dtorch.storage\x8c\x10_load_from_bytes\x93B"
    + len(inner).to_bytes(4, "little")
    + inner
    + b"\x85RK\x00))\x89}tR."
)
write("storage_stream_os_system.pkl", outer, sys_module, "system", via="torch")

with open(os.path.join(OUT, "manifest.json"), "w") as f:
    json.dump(MANIFEST, f, indent=1)
print(len(MANIFEST), "evil pickles written to", OUT)
