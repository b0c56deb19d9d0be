"""Format readers: open_table(path) turns a weight file (safetensors, PyTorch zip checkpoint, NumPy .npy/.npz, GGUF),
an index or a directory into a TensorTable (formats.resolver, the same for every format; the readers are
registered there). ERROR_CODES: every FormatError code any reader or the resolver raises."""
from __future__ import annotations

from . import (gguf_file, gguf_table, known_magics, numpy_files, resolver, safetensors, stored, torch_pickle,
               torch_zip)
from .resolver import open_table

ERROR_CODES: dict[str, str] = {}
for _m in (resolver, safetensors, known_magics, stored, torch_pickle, torch_zip, numpy_files, gguf_file, gguf_table):
    for _code, _meaning in _m.ERROR_CODES.items():
        ERROR_CODES.setdefault(_code, _meaning)

__all__ = ["ERROR_CODES", "open_table"]
