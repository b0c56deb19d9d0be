"""Quantization error of tensors stored in a file, streamed in aligned chunks with the NumPy
reference (the numpy backend's quant pass, and the oracle the native fused pass is tested against)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..backends.numpy_backend import decode
from ..dtypes import DTYPES
from ..sources import open_source
from ..table import TensorInfo
from .numpy_quant import empty_error_sums, error_sums, merge_error
from .plan import QuantPlan

CHUNK_ELEMENTS = 1 << 21


def read_values(src, t: TensorInfo, start: int, count: int) -> np.ndarray:
    """Elements [start, start+count) of tensor t, read through the source `src` (paramkit.sources), as
    float32 (F64 rounds, the rest is exact)."""
    es = DTYPES[t.dtype].bits // 8
    raw = np.frombuffer(src.read_at(t.offset + start * es, count * es), dtype=np.uint8)
    return np.asarray(decode(raw, t.dtype), dtype=np.float32)


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
    pm = plan.piece_multiple(shape, mask)
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
                progress(n * (DTYPES[t.dtype].bits // 8))
    return out


def run_quant(tensors: Sequence[TensorInfo], plan: QuantPlan) -> list[dict | None]:
    return [tensor_quant_sums(t, plan, m) if m else None for t, m in zip(tensors, plan.masks)]
