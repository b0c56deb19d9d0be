"""The embedded default input: writes a small, realistic checkpoint (a 2-layer Llama-style model in
bf16 with an int64 buffer and a config.json) so `paramkit demo` scans real bytes with no download."""
from __future__ import annotations

import json
import os

import numpy as np

from .formats.writer import write_safetensors

DEMO_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
    "intermediate_size": 704, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
    "head_dim": 32, "vocab_size": 4096, "max_position_embeddings": 2048, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (NaN kept quiet)."""
    b = x.astype(np.float32).view(np.uint32)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), r)


def demo_tensors(seed: int = 0) -> list[tuple[str, str, tuple[int, ...], np.ndarray]]:
    c = DEMO_CONFIG
    rng = np.random.default_rng(seed)
    h, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    out = [("model.embed_tokens.weight", "BF16", (v, h), rng.normal(0, 0.02, (v, h)))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (h, h)), ("self_attn.k_proj", (kv, h)), ("self_attn.v_proj", (kv, h)),
                            ("self_attn.o_proj", (h, h)), ("mlp.gate_proj", (f, h)), ("mlp.up_proj", (f, h)),
                            ("mlp.down_proj", (h, f))):
            w = rng.normal(0, 0.02, shape)
            if name == "mlp.down_proj" and i == 1:
                w[rng.random(shape) < 0.25] = 0.0     # a sparse matrix, so "zeros" shows something
            out.append((p + name + ".weight", "BF16", shape, w))
        out.append((p + "input_layernorm.weight", "BF16", (h,), 1 + rng.normal(0, 0.05, h)))
        out.append((p + "post_attention_layernorm.weight", "BF16", (h,), 1 + rng.normal(0, 0.05, h)))
    out.append(("model.norm.weight", "BF16", (h,), np.ones(h)))
    out.append(("lm_head.weight", "BF16", (v, h), rng.normal(0, 0.02, (v, h))))
    out.append(("model.rotary_emb.position_ids", "I64", (1, 512), np.arange(512).reshape(1, 512)))
    return out


def write_demo_checkpoint(directory: str | None = None) -> str:
    """Write the demo model (model.safetensors + config.json) and return the safetensors path.
    Default directory: $PARAMKIT_DEMO_DIR or ~/.cache/paramkit/demo."""
    directory = directory or os.environ.get("PARAMKIT_DEMO_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "paramkit", "demo")
    os.makedirs(directory, exist_ok=True)
    srcs = []
    for name, dtype, shape, arr in demo_tensors():
        data = (_bf16_bits(np.asarray(arr, np.float32)) if dtype == "BF16" else np.asarray(arr, np.int64)).tobytes()
        srcs.append((name, dtype, shape, len(data), (lambda d=data: [d])))
    path = write_safetensors(os.path.join(directory, "model.safetensors"), srcs,
                             metadata={"format": "pt", "source": "paramkit demo checkpoint"})
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(DEMO_CONFIG, f, indent=2)
    return path
