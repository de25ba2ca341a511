"""Small, realistic safetensors files for the tests, written by Python's own
safetensors package (plus a hand-written BF16 tensor, which numpy lacks)."""
import json
import struct

import numpy as np
from safetensors.numpy import save_file


def write_mixed_safetensors(path, seed=0):
    """F32, F16, I64 and BOOL tensors via safetensors.numpy, then a BF16 tensor
    appended by rewriting the header (numpy has no bfloat16)."""
    rng = np.random.default_rng(seed)
    tensors = {
        "embed.weight": rng.standard_normal((512, 64), dtype=np.float32),
        "layer.0.attn.q.weight": rng.standard_normal((64, 64)).astype(np.float16),
        "layer.0.mask": rng.integers(0, 2, (17,)).astype(bool),
        "position_ids": np.arange(128, dtype=np.int64).reshape(1, 128),
        "scalar": np.array(3.5, dtype=np.float32),
    }
    save_file(tensors, str(path), metadata={"format": "pt"})
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    bf16 = (rng.standard_normal(1000).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
    header["layer.0.bf16.weight"] = {"dtype": "BF16", "shape": [10, 100], "data_offsets": [len(data), len(data) + len(bf16)]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data + bf16)
    return tensors
