"""What a GGUF file says about its quantization, for the report's "gguf" section: the file type label
(`general.file_type`, llama.cpp's LlamaFileType: Q4_K_M), stored bytes and bits per weight per GGML type and for
the whole model's parameters, with the file's padding and its non-parameter tensors reported apart (never
folded into bits/weight, as gguf-parser-go does)."""
from __future__ import annotations

import os

import numpy as np

from ..dtypes import DTYPES
from .roles import PACKED, PARAMETER, RoleColumns

# llama.cpp's LlamaFileType (general.file_type) as labels; tests check it against gguf.LlamaFileType
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 1024: "GUESSED",
}


def _int(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def file_type_label(file_type) -> str | None:
    """general.file_type (an int, or the metadata text of one) as its label; an unknown id as "type <id>"."""
    ft = _int(file_type)
    return None if ft is None else FILE_TYPES.get(ft, f"type {ft}")


def _bpw(nbytes: int, params: int) -> float | None:
    return round(nbytes * 8 / params, 4) if params else None


def gguf_summary(table, rc: RoleColumns) -> dict:
    """The report's "gguf" section of a GGUF model (its TensorTable and roles)."""
    meta = table.metadata or {}
    cols = table.columns
    is_param = rc.counted & ((rc.code == PARAMETER) | (rc.code == PACKED))
    nbytes = cols.nbytes.astype(np.int64)
    params = np.where(is_param, rc.logical, 0).astype(np.int64)
    by_type = {}
    for d in np.unique(cols.dtype).tolist():
        sel = cols.dtype == d
        name = cols.dtype_names[d]
        p, b = int(params[sel].sum()), int(nbytes[sel & is_param].sum())
        dt = DTYPES.get(name)
        by_type[name] = {"tensors": int(sel.sum()), "params": p, "bytes": b,
                         "bits_per_weight": dt.bits_per_weight if dt is not None else None}
    by_type = dict(sorted(by_type.items(), key=lambda kv: (-kv[1]["params"], kv[0])))
    param_bytes = int(nbytes[is_param].sum())
    tensor_bytes = int(nbytes.sum())
    total_params = int(params.sum())
    sizes = table.file_sizes     # remote files' sizes, from their range answers
    try:
        file_bytes = sum(sizes[f] if sizes is not None else os.path.getsize(f) for f in table.files)
    except (OSError, KeyError):      # a table not of files on this machine: no padding figure
        file_bytes = None
    ft = meta.get("general.file_type")
    return {
        "version": _int(meta.get("gguf.version")),
        "byteorder": "big" if meta.get("gguf.byteorder") == "big" else "little",
        "alignment": _int(meta.get("general.alignment")) or 32,
        "file_type": file_type_label(ft),
        "file_type_id": _int(ft),
        "quantization_version": _int(meta.get("general.quantization_version")),
        "bits_per_weight": _bpw(param_bytes, total_params),
        "parameter_bytes": param_bytes,
        "other_tensor_bytes": tensor_bytes - param_bytes,
        "header_bytes": int(table.header_bytes),
        "padding_bytes": None if file_bytes is None else file_bytes - int(table.header_bytes) - tensor_bytes,
        "file_bytes": file_bytes,
        "by_type": by_type,
    }
