"""Writes a small Hugging Face style model directory (config, tokenizer,
safetensors weights) for the demo registry. Usage: make_demo_model.py DIR"""
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

out = Path(sys.argv[1])
(out / "tokenizer").mkdir(parents=True, exist_ok=True)
hidden, layers, vocab = 256, 4, 4096
rng = np.random.default_rng(42)
tensors = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float16)}
for i in range(layers):
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        tensors[f"model.layers.{i}.self_attn.{name}.weight"] = rng.standard_normal((hidden, hidden)).astype(np.float16)
    tensors[f"model.layers.{i}.input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
(out / "config.json").write_text(json.dumps({"architectures": ["DemoForCausalLM"], "hidden_size": hidden,
                                             "num_hidden_layers": layers, "vocab_size": vocab, "torch_dtype": "float16"}, indent=2))
(out / "tokenizer" / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {f"t{i}": i for i in range(vocab)}}}))
(out / "generation_config.json").write_text(json.dumps({"max_new_tokens": 32}))
