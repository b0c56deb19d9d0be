"""The `cpu` backend: paramkit._core (C++ worker threads, GIL released, SIMD chosen at run time).
Python decides the options (threads, piece size, I/O mode); the extension holds no policy."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..dtypes import DTYPES
from ..errors import BackendUnavailable
from ..stats import QUANTILE_LEVELS
from ..table import TensorInfo
from .native_records import task_spec, to_stats

# Piece size: results are merged per piece, so it is fixed (never derived from the thread count).
CHUNK_BYTES = 4 << 20
# I/O mode: "pread" (large reads into reused aligned buffers) or "mmap" (+ MADV_SEQUENTIAL).
DEFAULT_IO = os.environ.get("PARAMKIT_IO", "pread")


class CpuEngine:
    name = "cpu"

    def __init__(self, core):
        self._core = core
        self.last_run: dict = {}

    def run_stats(self, tensors: Sequence[TensorInfo], *, quantiles: bool = True, threads: int | None = None,
                  progress=None, io: str | None = None) -> list[dict | None]:
        files, spec, where = task_spec(tensors)
        out: list[dict | None] = [None] * len(tensors)
        # tensors without statistics are not read: count their bytes as done from the start
        skipped = sum(t.nbytes for t in tensors) - int(spec[:, 2].sum()) if len(where) else 0
        if not where:
            if progress:
                progress(sum(t.nbytes for t in tensors))
            return out
        cb = progress if not (progress and skipped) else (lambda done: progress(done + skipped))
        rec = self._core.run_stats(files, spec, bool(quantiles), int(threads or 0), CHUNK_BYTES,
                                   io or DEFAULT_IO, list(QUANTILE_LEVELS), cb)
        self.last_run = {"isa": rec["isa"], "threads": rec["threads"], "units": rec["units"]}
        for row, i in enumerate(where):
            out[i] = to_stats(rec, row, tensors[i].dtype, quantiles)
        return out

    def array_stats(self, array: np.ndarray, dtype: str, *, quantiles: bool = True) -> dict:
        d = DTYPES[dtype]
        if not d.has_stats:
            raise TypeError(f"no statistics for dtype {dtype}")
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        rec = self._core.array_stats(raw, d.engine_id, bool(quantiles), CHUNK_BYTES, list(QUANTILE_LEVELS))
        return to_stats(rec, 0, dtype, quantiles)

    def build_info(self) -> dict:
        return dict(self._core.build_info())


def load():
    try:
        from .. import _core
    except ImportError as e:
        raise BackendUnavailable(f"the C++ extension paramkit._core is not built or failed to load ({e})") from None
    info = _core.build_info()
    return CpuEngine(_core), f"C++ engine, {info['isa']} kernels, {info['default_threads']} threads, {info['compiler']}"
