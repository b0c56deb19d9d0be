"""Quantization error of tensors stored in a file, streamed in aligned chunks with the NumPy
reference (the numpy backend's quant pass, and the oracle the native fused pass is tested against)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..backends.numpy_backend import decode, dequantize_blocks
from ..dtypes import DTYPES
from ..sources import open_source
from ..table import TensorInfo
from .numpy_quant import empty_error_sums, error_sums, merge_error
from .plan import QuantPlan

CHUNK_ELEMENTS = 1 << 21


def _bytes_of(t: TensorInfo, count: int) -> int:
    """The stored bytes of `count` elements of tensor t (whole GGML blocks for a block type)."""
    d = DTYPES[t.dtype]
    return count // d.block * d.block_bytes if d.kind == "block" else count * (d.bits // 8)


def stored_bytes(src, t: TensorInfo, start: int, count: int) -> bytes:
    """The stored bytes of elements [start, start+count) of tensor t, read through the source `src`
    (paramkit.sources); for a GGML block type start and count must be whole blocks."""
    d = DTYPES[t.dtype]
    if d.kind == "block" and (start % d.block or count % d.block):
        raise ValueError(f"tensor {t.name!r}: {t.dtype} values are read in whole blocks of {d.block}")
    return src.read_at(t.offset + _bytes_of(t, start), _bytes_of(t, count))


def stored_values(raw, dtype: str) -> np.ndarray:
    """The values of stored elements of `dtype` (bytes of whole elements, or of whole blocks): decode()'s
    exact values for a plain dtype, gguf.quants' float32 dequantized values for a GGML block type."""
    if DTYPES[dtype].kind == "block":
        return dequantize_blocks(raw, dtype)
    return decode(np.frombuffer(raw, dtype=np.uint8), dtype)


def read_values(src, t: TensorInfo, start: int, count: int) -> np.ndarray:
    """Elements [start, start+count) of tensor t, read through the source `src` (paramkit.sources), as
    float32 (F64 rounds, the rest is exact; a GGML block type's dequantized values by gguf.quants, start and
    count then whole blocks)."""
    return np.asarray(stored_values(stored_bytes(src, t, start, count), t.dtype), dtype=np.float32)


def finite_absmax(src, t: TensorInfo, step: int = CHUNK_ELEMENTS) -> float:
    """max |x| over the finite elements of tensor t (0 when there are none), read `step` elements at a time."""
    m = 0.0
    for s in range(0, t.numel, step):
        x = read_values(src, t, s, min(step, t.numel - s))
        x = np.abs(x[np.isfinite(x)])
        if x.size:
            m = max(m, float(x.max()))
    return m


def tensor_quant_sums(t: TensorInfo, plan: QuantPlan, mask: int, progress=None) -> dict[str, dict]:
    """{scheme id: error sums} for the schemes of `mask`, chunk by chunk (chunks start at the
    plan's piece multiple, so every group, row and channel is whole)."""
    shape = tuple(t.shape)
    pm = math.lcm(plan.piece_multiple(shape, mask), DTYPES[t.dtype].block)   # whole GGML blocks too
    step = max(pm, CHUNK_ELEMENTS // pm * pm)
    picked = [s for k, s in enumerate(plan.schemes) if mask >> k & 1]
    out = {s.id: empty_error_sums() for s in picked}
    with open_source(t.file) as src:
        absmax = finite_absmax(src, t) if any(s.needs_tensor_absmax for s in picked) else None
        for start in range(0, t.numel, step):
            n = min(step, t.numel - start)
            x = read_values(src, t, start, n)
            for s in picked:
                view = x.reshape(s.piece_shape(shape))
                sums = error_sums(view, s, tensor_absmax=absmax if s.needs_tensor_absmax else None)
                out[s.id] = merge_error(out[s.id], sums)
            if progress:
                progress(_bytes_of(t, n))
    return out


def run_quant(tensors: Sequence[TensorInfo], plan: QuantPlan) -> list[dict | None]:
    return [tensor_quant_sums(t, plan, m) if m else None for t, m in zip(tensors, plan.masks)]
