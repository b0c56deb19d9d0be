"""paramkit: read neural-network weight files at disk speed — exact parameter counts, per-tensor
statistics, quantization error, what it takes to run a model. Start with paramkit.scan(path)."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import BackendUnavailable, FormatError
from .backends import backends
from .api import fake_quantize, quant_error, scan, scan_many, tensor_stats

__all__ = ["scan", "scan_many", "tensor_stats", "fake_quantize", "quant_error", "fake_quantize_file", "backends", "FormatError", "BackendUnavailable", "__version__"]


def fake_quantize_file(path, scheme, out, **kw):
    """Write a copy of a safetensors checkpoint whose quantized tensors hold dequantize(quantize(w))
    in their original dtype (see paramkit.quant.export.fake_quantize_file)."""
    from .quant.export import fake_quantize_file as _f
    return _f(path, scheme, out, **kw)
