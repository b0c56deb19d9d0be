"""Backend registry and selection: which engine (cuda, cpu, numpy) runs a data pass and why.
Import never fails because a backend is missing; asking for one raises with the recorded reason."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from ..errors import BackendUnavailable
from ..table import TensorInfo

ProgressFn = Callable[[int], None]   # called with the total bytes processed so far

ORDER = ("cuda", "cpu", "numpy")
# not listed by backends() and never picked by "auto": the CUDA engine on the CPU emulator, a test
# aid (paramkit._cuda_emu, built with PARAMKIT_CUDA_EMU=ON) that runs the GPU code paths without a GPU
HIDDEN = ("cuda-emu",)


class Engine(Protocol):
    name: str

    def run_stats(self, tensors: Sequence[TensorInfo], *, quantiles: bool, threads: int | None,
                  progress: ProgressFn | None) -> list[dict | None]:
        """Statistics for each tensor (stats dict of paramkit.stats, or None for dtypes without
        statistics), in the order given. Reads each byte once."""

    def array_stats(self, array: np.ndarray, dtype: str, *, quantiles: bool) -> dict:
        """The same statistics for an in-memory array whose elements are of safetensors `dtype`."""


@dataclass
class BackendStatus:
    name: str
    available: bool
    reason: str          # why it is unavailable, or a short description when it is


def _load(name: str):
    if name == "numpy":
        from . import numpy_backend
        return numpy_backend.ENGINE, "pure NumPy reference (always available)"
    if name == "cpu":
        from . import cpu_backend
        return cpu_backend.load()
    if name == "cuda":
        from . import cuda_backend
        return cuda_backend.load()
    if name == "cuda-emu":
        from . import cuda_backend
        return cuda_backend.load(emulated=True)
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(ORDER)} or 'auto'")


_cache: dict[str, tuple[object | None, str]] = {}


def _probe(name: str) -> tuple[object | None, str]:
    if name not in _cache:
        try:
            eng, why = _load(name)
        except BackendUnavailable as e:
            eng, why = None, str(e)
        except Exception as e:  # a broken build must not break `import paramkit`
            eng, why = None, f"{type(e).__name__}: {e}"
        _cache[name] = (eng, why)
    return _cache[name]


def backends() -> list[BackendStatus]:
    """Every backend with its availability and the reason."""
    return [BackendStatus(n, _probe(n)[0] is not None, _probe(n)[1]) for n in ORDER]


def get_engine(name: str | None = "auto") -> Engine:
    """The engine for `name` ('auto', 'cuda', 'cpu', 'numpy'); PARAMKIT_BACKEND overrides 'auto'."""
    if name in (None, "auto"):
        name = os.environ.get("PARAMKIT_BACKEND", "auto") or "auto"
    name = name.lower()
    if name == "auto":
        for n in ORDER:
            eng, _ = _probe(n)
            if eng is not None:
                return eng
    if name not in ORDER + HIDDEN:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(ORDER)} or 'auto'")
    eng, why = _probe(name)
    if eng is None:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {why}")
    return eng
