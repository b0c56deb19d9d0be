"""config.json lookup for counting: a key in the top-level config or in a nested text/LLM config, and the keys
that name the MoE top-k, expert count and shared-expert count."""
from __future__ import annotations

from typing import Any

_NESTED_CONFIGS = ("text_config", "language_config", "llm_config", "ffn_config", "thinker_config")


def config_get(config: dict | None, *keys: str, default: Any = None) -> Any:
    """First non-None value of any of ``keys`` in config.json, then in its nested text/LLM config."""
    if not isinstance(config, dict):
        return default
    scopes = [config]
    for sub in _NESTED_CONFIGS:
        if isinstance(config.get(sub), dict):
            scopes.append(config[sub])
            inner = config[sub].get("text_config")
            if isinstance(inner, dict):
                scopes.append(inner)
    for scope in scopes:
        for k in keys:
            v = scope.get(k)
            if v is not None:
                return v
    return default


def config_has(config: dict | None, key: str) -> bool:
    if not isinstance(config, dict):
        return False
    if key in config:
        return True
    return any(isinstance(config.get(s), dict) and key in config[s] for s in _NESTED_CONFIGS)


TOPK_KEYS = ("num_experts_per_tok", "num_experts_per_token", "experts_per_token", "moe_top_k",
             "num_selected_experts", "moe_k", "top_k", "router_top_k")
NEXPERTS_KEYS = ("num_local_experts", "n_routed_experts", "num_experts", "moe_num_experts",
                 "num_routed_experts", "n_experts", "expert_num")
NSHARED_KEYS = ("n_shared_experts", "num_shared_experts", "moe_num_shared_experts")
