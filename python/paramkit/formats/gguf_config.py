"""A GGUF file's model hyperparameters as the config.json keys that counting and planning read (transformers'
names): a GGUF carries no config.json, but its `{arch}.*` metadata says the same things (layers, heads, kv heads,
head sizes, context, sliding window, MLA latent size, experts), so plan() works on a GGUF alone."""
from __future__ import annotations

from typing import Any

from .gguf_file import GGUFArray

# llama.cpp's fixed sliding-window layer patterns (every Nth layer attends globally), per architecture: the
# GGUF has no key for them (llama-model.cpp sets them in code)
_SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4}

# {arch}.<key> -> config.json key
_DIRECT = {
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "context_length": "max_position_embeddings",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.key_length": "head_dim",
    "attention.value_length": "v_head_dim",
    "attention.sliding_window": "sliding_window",
    "attention.kv_lora_rank": "kv_lora_rank",
    "attention.q_lora_rank": "q_lora_rank",
    "rope.dimension_count": "qk_rope_head_dim",
    "expert_count": "num_local_experts",
    "expert_used_count": "num_experts_per_tok",
    "expert_shared_count": "n_shared_experts",
    "expert_feed_forward_length": "moe_intermediate_size",
    "leading_dense_block_count": "first_k_dense_replace",
    "vocab_size": "vocab_size",
}


def _scalar(v: Any) -> Any:
    """A per-layer list (some architectures vary heads or FFN width by layer) as its largest value."""
    if isinstance(v, list):
        nums = [x for x in v if isinstance(x, (int, float)) and not isinstance(x, bool)]
        return max(nums) if nums else None
    if isinstance(v, GGUFArray):
        return None
    return v


def config_from_gguf(metadata: dict[str, Any], tensor_names: list[str]) -> dict[str, Any] | None:
    """The config.json-style dict of a GGUF's metadata (None without general.architecture). Keys absent from
    the metadata are absent here; tie_word_embeddings is True when the file has no output.weight (llama.cpp
    then uses token_embd.weight for the output projection)."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        return None
    cfg: dict[str, Any] = {"model_type": arch, "_from": "GGUF metadata"}
    for key, name in _DIRECT.items():
        v = _scalar(metadata.get(f"{arch}.{key}"))
        if v is not None:
            cfg[name] = v
    per_layer_kv = metadata.get(f"{arch}.attention.head_count_kv")
    if isinstance(per_layer_kv, list):
        cfg["num_key_value_heads_per_layer"] = list(per_layer_kv)
    if "vocab_size" not in cfg:
        tokens = metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, (list, GGUFArray)):
            cfg["vocab_size"] = len(tokens) if isinstance(tokens, list) else tokens.count
    if arch in _SWA_PATTERN and "sliding_window" in cfg:
        cfg["sliding_window_pattern"] = _SWA_PATTERN[arch]
    names = set(tensor_names)
    if "token_embd.weight" in names:
        cfg["tie_word_embeddings"] = "output.weight" not in names
    return cfg
