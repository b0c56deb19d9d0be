"""paramkit: read neural-network weight files at disk speed — exact parameter counts, per-tensor
statistics, quantization error, what it takes to run a model. Start with paramkit.scan(path).

The API: scan, scan_many, tensor_stats, fake_quantize, quant_error, fake_quantize_file, plan, diff, ingest,
backends, FormatError, BackendUnavailable, __version__. Public submodules: paramkit.quant (the quantization schemes),
paramkit.planning (the Plan that plan() returns, its tables and formulas), paramkit.config_params (the
parameter tensors of an architecture from its config.json). dir(paramkit) lists exactly these."""

__version__ = "0.1.0"

from .errors import BackendUnavailable, FormatError
from .backends import backends
from .api import fake_quantize, plan, quant_error, scan, scan_many, tensor_stats
from .model_diff import diff

__all__ = ["scan", "scan_many", "tensor_stats", "fake_quantize", "quant_error", "fake_quantize_file", "plan",
           "diff", "ingest", "backends", "FormatError", "BackendUnavailable", "__version__"]
_PUBLIC_SUBMODULES = ("quant", "planning", "config_params")


def fake_quantize_file(path, scheme, out, **kw):
    """Write a copy of a safetensors checkpoint whose quantized tensors hold dequantize(quantize(w))
    in their original dtype (see paramkit.quant.export.fake_quantize_file)."""
    from .quant.export import fake_quantize_file as _f
    return _f(path, scheme, out, **kw)


def ingest(sources, out, **kw):
    """Scan many models into a Parquet dataset (see paramkit.ingestion.ingest; needs the `ingest` extra)."""
    from .ingestion import ingest as _ingest
    return _ingest(sources, out, **kw)


def __dir__():
    """The public API only: not the internal submodules that imports bind as attributes of the package."""
    return sorted(__all__ + list(_PUBLIC_SUBMODULES))


def __getattr__(name):
    """The public submodules, imported on first use (paramkit.planning works without an import of its own)."""
    if name in _PUBLIC_SUBMODULES:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
