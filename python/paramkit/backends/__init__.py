"""Backend registry and selection: which engine (cuda, cpu, numpy) runs a data pass and why.
Import never fails because a backend is missing; asking for one raises with the recorded reason."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import BackendUnavailable
from ..table import TensorInfo

ProgressFn = Callable[[int], None]   # called with the total bytes processed so far

ORDER = ("cuda", "cpu", "numpy")
# not listed by backends() and never picked by "auto": the CUDA engine on the CPU emulator, a test
# aid (paramkit._cuda_emu, built with PARAMKIT_CUDA_EMU=ON) that runs the GPU code paths without a GPU
HIDDEN = ("cuda-emu",)


@runtime_checkable
class Engine(Protocol):
    """What every engine (numpy, cpu, cuda, cuda-emu) implements, all of it: the interface api.py, export.py
    and the tests call, and nothing else. An engine that cannot do a thing itself delegates it explicitly
    (the cuda engine quantizes host arrays on the cpu engine) or refuses it with a clear error (only an
    engine with ``reads_device_memory`` takes DLPack device arrays)."""

    name: str                  # the backend name: "numpy", "cpu", "cuda", "cuda-emu"
    last_run: dict             # what the last run() used: threads, ISA, fallbacks (the report's ``engine``)
    reads_device_memory: bool  # dlpack_stats / dlpack_quant read arrays on a CUDA device
    reads_views: bool          # run() reads ViewLayout tensors of stored zip members itself (strided, big-endian);
                               # without it they are made plain first (paramkit.materialize.plain_tensors)
    array_quant_backend: str   # the backend whose code runs array_quant ("cpu" for the cuda engine)

    def run(self, tensors: Sequence[TensorInfo], *, stats: bool = True, quantiles: bool = True,
            threads: int | None = None, progress: ProgressFn | None = None,
            quant=None, histograms: bool = False) -> tuple[list[dict | None], list[dict | None]]:
        """One data pass over `tensors`: (statistics per tensor (None for dtypes without statistics, or
        when stats=False), error sums per tensor {scheme id: sums} for the schemes of `quant`, a
        paramkit.quant.plan.QuantPlan, else None). Reads each byte once (plus the per-tensor-scale
        second pass); progress(bytes done so far). histograms=True: each stats dict also has the key
        "histogram", the tensor's compact histogram of paramkit.stats from the same pass (None with
        quantiles=False), identical on every engine."""

    def run_stats(self, tensors: Sequence[TensorInfo], *, quantiles: bool = True, threads: int | None = None,
                  progress: ProgressFn | None = None, histograms: bool = False) -> list[dict | None]:
        """run(...)[0]: statistics only."""

    def run_diff(self, pairs: Sequence, *, threads: int | None = None,
                 progress: ProgressFn | None = None) -> list[dict]:
        """paramkit.diff's data pass: per paramkit.diff_match.DiffPair, {"bytes_equal": bool} and, where the
        bytes differ and the values are compared, "sums" and "delta" (backends/numpy_diff.py defines them);
        progress(bytes of both sides done so far)."""

    def array_stats(self, array: np.ndarray, dtype: str, *, quantiles: bool = True) -> dict:
        """The same statistics for an in-memory array whose elements are of safetensors `dtype`."""

    def array_quant(self, x: np.ndarray, scheme, *, want_values: bool,
                    tensor_absmax: float | None = None) -> tuple[np.ndarray | None, dict]:
        """Quantize the float32 C-contiguous array `x` (grouped by `scheme` from its shape): (the
        fake-quantized float32 values of x's shape when want_values, else None; the error sums).
        tensor_absmax: the whole tensor's finite absmax when `x` is a piece of it (per-tensor scales)."""

    def dlpack_stats(self, capsule, dtype: str, *, quantiles: bool = True) -> dict:
        """array_stats of an array on a CUDA device (a DLPack capsule), read in place."""

    def dlpack_quant(self, capsule, dtype: str, scheme, *, shape: tuple[int, ...],
                     want_values: bool) -> tuple[object | None, dict]:
        """array_quant of an array of `shape` on a CUDA device: (a DLPack capsule of the values or None, sums)."""

    def build_info(self) -> dict:
        """What the engine was built with (compiler, ISA, CUDA runtime...), for doctor."""


def device_memory_refused(engine_name: str):
    """The error an engine without ``reads_device_memory`` raises from dlpack_stats / dlpack_quant (api.py
    explains the choice of backend before it gets there)."""
    return ValueError(f"the {engine_name} engine reads host memory only; arrays on a CUDA device need the cuda "
                      "backend")


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


def requested_backend(name: str | None = "auto") -> tuple[str, str]:
    """(backend name, how it was chosen) for a ``backend=`` argument: the one place PARAMKIT_BACKEND is read
    (it stands in for "auto"). `how` is for messages: "backend='cpu'" or "backend='auto', PARAMKIT_BACKEND=cpu"."""
    if name in (None, "auto"):
        env = os.environ.get("PARAMKIT_BACKEND", "")
        if env and env.lower() != "auto":
            return env.lower(), f"backend='auto', PARAMKIT_BACKEND={env}"
        return "auto", "backend='auto'"
    return str(name).lower(), f"backend={name!r}"


def get_engine(name: str | None = "auto") -> Engine:
    """The engine for `name` ('auto', 'cuda', 'cpu', 'numpy'); PARAMKIT_BACKEND overrides 'auto'."""
    name, how = requested_backend(name)
    if name == "auto":
        for n in ORDER:
            eng, _ = _probe(n)
            if eng is not None:
                return eng
    if name not in ORDER + HIDDEN:
        src = f" ({how})" if "PARAMKIT_BACKEND" in how else ""
        raise BackendUnavailable(f"unknown backend {name!r}{src}; choose one of {', '.join(ORDER)} or 'auto'")
    eng, why = _probe(name)
    if eng is None:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {why}")
    return eng
