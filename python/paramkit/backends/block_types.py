"""Which backend computes the values of each GGML block type in a scan, and why (the report's
``engine.block_types``): the native engines dequantize the types of cpp/include/paramkit/ggml_blocks.hpp,
gguf-py's ``gguf.quants`` (the numpy backend) the others it knows; any other type is counted only."""
from __future__ import annotations

from typing import Sequence

from ..dtypes import DTYPES
from ..table import TensorInfo


def _numpy_reason(dtype: str) -> str | None:
    """None when the numpy backend can dequantize GGML type `dtype`, else why not."""
    from .numpy_backend import ggml_dequantizer
    if ggml_dequantizer(dtype) is not None:
        return None
    try:
        import gguf.quants  # noqa: F401
    except ImportError:
        return f"{dtype} needs gguf-py's dequantizer and the gguf package is not installed (pip install gguf)"
    return f"neither paramkit nor gguf-py (gguf.quants) has a dequantizer for {dtype}"


def is_block(dtype: str) -> bool:
    d = DTYPES.get(dtype)
    return d is not None and d.kind == "block"


def numpy_fallback(dtype: str) -> bool:
    """A block type the native engines leave to the numpy backend (no native dequantizer, a gguf-py one)."""
    return is_block(dtype) and not DTYPES[dtype].has_stats and _numpy_reason(dtype) is None


def values_readable(dtype: str) -> bool:
    """Some backend can turn tensors of `dtype` into float32 values (statistics, simulated quantization)."""
    d = DTYPES[dtype]
    if d.kind == "block":
        return d.has_stats or _numpy_reason(dtype) is None
    return d.kind == "float" and d.has_stats


def block_types(tensors: Sequence[TensorInfo], engine: str) -> dict[str, dict]:
    """{GGML block type: {"values": backend or None, "why": ...}} for the block types among `tensors`
    scanned by the engine named `engine` (empty when there are none)."""
    out: dict[str, dict] = {}
    for dt in sorted({t.dtype for t in tensors if is_block(t.dtype)}):
        if engine != "numpy" and DTYPES[dt].has_stats:
            out[dt] = {"values": engine, "why": "paramkit's native dequantizer (ggml_blocks.hpp)"}
            continue
        why = _numpy_reason(dt)
        if why is None:
            out[dt] = {"values": "numpy", "why": "gguf-py's gguf.quants.dequantize" + (
                "" if engine == "numpy" else f" (the {engine} engine has no dequantizer for {dt})")}
        else:
            out[dt] = {"values": None, "why": why + ": counted, no statistics"}
    return out
