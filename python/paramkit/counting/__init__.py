"""Exact parameter counting from a TensorTable (headers + config.json, no tensor data): the role of every tensor
(roles; quantized checkpoints in quant/, one detector per method), ties, MoE total vs active, the totals.
count_table is the entry point; this package exports what callers import."""
from __future__ import annotations

from .config import config_get, config_has
from .roles import ROLES, TensorRole
from .totals import Counting, count_table

__all__ = ["count_table", "Counting", "TensorRole", "ROLES", "config_get", "config_has"]
