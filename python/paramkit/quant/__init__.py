"""Simulated (fake) quantization: the scheme catalogue, `fake_quantize` and the error record, with
the NumPy reference implementation the native engines are checked against bit for bit.

The error record (`quant_error`, `ERROR_KEYS`): ``n`` (finite elements used), ``nonfinite``,
``sse``, ``sum_w2``, ``sum_q2``, ``sum_wq`` (float64 sums over the finite elements),
``max_abs_err``, ``clipped``, ``scale_clamped``, and the derived ``mse``, ``rmse``, ``rel_err``,
``sqnr_db``, ``cosine``, ``quantized_nbytes``, ``bits_per_weight``. Streaming engines compute
`error_sums` per chunk, combine them with `merge_error` and call `finalize_error` once
(see paramkit.quant.numpy_quant for the exact definitions and the 0/0 conventions).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .numpy_quant import (ERROR_DERIVED_KEYS, ERROR_KEYS, ERROR_SUM_KEYS, NF4_CODES,
                          NF4_THRESHOLDS, QuantResult, empty_error_sums, error_sums,
                          error_sums_of, finalize_error, merge_error, quantize_dequantize,
                          to_float32)
from .schemes import DEFAULT_SCHEMES, SCHEMES, VARIANT_SCHEMES, Scheme, get_scheme

__all__ = [
    "SCHEMES", "DEFAULT_SCHEMES", "VARIANT_SCHEMES", "Scheme", "get_scheme", "resolve_schemes",
    "fake_quantize", "quantize_dequantize", "QuantResult", "quant_error", "error_sums",
    "error_sums_of", "empty_error_sums", "merge_error", "finalize_error", "ERROR_KEYS",
    "ERROR_SUM_KEYS", "ERROR_DERIVED_KEYS", "NF4_CODES", "NF4_THRESHOLDS", "to_float32",
]


def resolve_schemes(schemes: str | Scheme | Sequence[str | Scheme] | None) -> list[Scheme]:
    """A list of Schemes from "default" (= DEFAULT_SCHEMES), a comma-separated string, one id,
    a Scheme, or a sequence of those; duplicates dropped, order kept."""
    if schemes is None or (isinstance(schemes, str) and schemes.strip().lower() == "default"):
        items: list = list(DEFAULT_SCHEMES)
    elif isinstance(schemes, str):
        items = [p for p in (s.strip() for s in schemes.split(",")) if p]
    elif isinstance(schemes, Scheme):
        items = [schemes]
    else:
        items = []
        for it in schemes:
            if isinstance(it, str) and it.strip().lower() == "default":
                items.extend(DEFAULT_SCHEMES)
            else:
                items.append(it)
    out: list[Scheme] = []
    for it in items:
        s = get_scheme(it)
        if s.id not in {o.id for o in out}:
            out.append(s)
    return out


def fake_quantize(array, scheme: str | Scheme, *, tensor_absmax: float | None = None) -> np.ndarray:
    """dequantize(quantize(array)) as a float32 ndarray of the input's shape. Any float dtype
    (float64/32/16, ml_dtypes bfloat16/float8) is converted to float32 first; the row is the
    last dimension. ggml types (q8_0, q4_0) raise ValueError unless the row length is a multiple
    of 32. ``tensor_absmax``: see `quantize_dequantize`."""
    return quantize_dequantize(array, scheme, tensor_absmax=tensor_absmax).values


def quant_error(array, scheme: str | Scheme, *, tensor_absmax: float | None = None) -> dict:
    """The error record (ERROR_KEYS) of fake-quantizing `array` under `scheme`."""
    s = get_scheme(scheme)
    shape = np.shape(array)
    return finalize_error(error_sums(array, s, tensor_absmax=tensor_absmax), s, shape)
