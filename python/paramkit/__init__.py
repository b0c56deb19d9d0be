"""paramkit: read neural-network weight files at disk speed — exact parameter counts, per-tensor
statistics, quantization error, what it takes to run a model. Start with paramkit.scan(path)."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import BackendUnavailable, FormatError
from .backends import backends
from .api import scan, scan_many, tensor_stats

__all__ = ["scan", "scan_many", "tensor_stats", "backends", "FormatError", "BackendUnavailable", "__version__"]
