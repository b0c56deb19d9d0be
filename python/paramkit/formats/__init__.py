"""Format readers: open_table(path) turns a weight file, index or directory into a TensorTable.
Only safetensors exists so far; other formats (GGUF, PyTorch, NumPy) plug in here by magic bytes."""
from __future__ import annotations

from .safetensors import ERROR_CODES, open_table

__all__ = ["ERROR_CODES", "open_table"]
