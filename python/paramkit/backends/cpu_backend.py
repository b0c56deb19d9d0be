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
from ..quant.plan import engine_kind
from .native_records import quant_sums, task_spec, to_stats

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
        return self.run(tensors, quantiles=quantiles, threads=threads, progress=progress, io=io)[0]

    def run(self, tensors: Sequence[TensorInfo], *, stats: bool = True, quantiles: bool = True,
            threads: int | None = None, progress=None, quant=None, io: str | None = None):
        """One streaming pass: statistics and every row/group quantization scheme of `quant` (a
        paramkit.quant.plan.QuantPlan); then, for per-tensor-scale schemes, a second pass over just
        those tensors (from the page cache) once their absmax is known. Returns (stats list,
        quant list: per tensor {scheme id: error sums} or None)."""
        masks = quant.masks if quant is not None else None
        schemes = [engine_kind(s) for s in quant.schemes] if quant is not None else []
        files, spec, where = task_spec(tensors, masks, quant)
        out: list[dict | None] = [None] * len(tensors)
        qout: list[dict | None] = [None] * len(tensors)
        total = sum(t.nbytes for t in tensors)
        done_before = total - int(spec[:, 2].sum())   # tensors without statistics are not read
        cb = None
        if progress:
            cb = (lambda done: progress(done + done_before))
        if not where:
            if progress:
                progress(total)
            return out, qout
        nan = np.full(len(where), np.nan)
        rec = self._core.run(files, spec, nan, bool(stats), bool(quantiles), int(threads or 0), CHUNK_BYTES,
                             io or DEFAULT_IO, list(QUANTILE_LEVELS), schemes, cb)
        self.last_run = {"isa": rec["isa"], "threads": rec["threads"], "units": rec["units"]}
        for row, i in enumerate(where):
            if stats:
                out[i] = to_stats(rec, row, tensors[i].dtype, quantiles)
            if masks is not None and masks[i]:
                qout[i] = {s.id: quant_sums(rec, row, k) for k, s in enumerate(quant.schemes) if masks[i] >> k & 1}
        second = quant.second_pass_bits if quant is not None else 0
        again = [i for i in where if masks[i] & second] if second else []
        if again:
            absmax_of = {i: float(rec["quant_absmax"][row]) for row, i in enumerate(where)}
            m2 = [(masks[i] & second) if i in again else 0 for i in range(len(tensors))]
            files2, spec2, where2 = task_spec(tensors, m2, quant, only=again)
            am = np.array([absmax_of[i] for i in where2])
            base = total
            cb2 = (lambda done: progress(base + done)) if progress else None
            rec2 = self._core.run(files2, spec2, am, False, False, int(threads or 0), CHUNK_BYTES,
                                  io or DEFAULT_IO, [], schemes, cb2)
            for row, i in enumerate(where2):
                for k, s in enumerate(quant.schemes):
                    if m2[i] >> k & 1:
                        qout[i][s.id] = quant_sums(rec2, row, k)
        return out, qout

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
