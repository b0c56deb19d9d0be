"""The public entry points: scan (file / index / directory -> ScanReport), tensor_stats (one
in-memory array) and scan_many; they tie the format readers, counting and the engines together."""
from __future__ import annotations

import os
import time
from typing import Iterable

import numpy as np

from .backends import get_engine
from .dtypes import DTYPES, from_numpy
from .errors import FormatError
from .progress import make_progress
from .report import ScanReport, TensorReport, aggregate


def scan(path, *, stats: bool = True, quantiles: bool = True, backend: str = "auto", threads: int | None = None,
         progress=None, strict: bool = True) -> ScanReport:
    """Read a safetensors file, a ``model.safetensors.index.json`` or a directory and report what is in it.

    stats=False reads the headers only (milliseconds, no tensor data). quantiles=False skips the
    quantile histograms. backend: "auto" (cuda -> cpu -> numpy, or $PARAMKIT_BACKEND), "cuda",
    "cpu" or "numpy". threads: worker threads of the cpu backend (default: all cores); results are
    bit-identical for any value. progress: None/False, True (a bar on stderr for passes longer
    than a second) or a callable(done_bytes, total_bytes). strict=False tolerates a malformed
    ``__metadata__`` only. Raises FormatError (with .code) on malformed input, OSError on I/O errors.
    """
    from .counting import count_table
    from .formats import open_table

    t0 = time.perf_counter()
    table = open_table(os.fspath(path), strict=strict)
    t_header = time.perf_counter()
    counting = count_table(table)
    t_count = time.perf_counter()
    results: list = [None] * len(table.tensors)
    engine_name = None
    engine_info: dict = {}
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError("threads must be a positive integer or None")
    if stats:
        engine = get_engine(backend)
        engine_name = engine.name
        total = table.data_bytes
        cb, close = make_progress(progress, total)
        try:
            results = engine.run_stats(table.tensors, quantiles=quantiles, threads=threads, progress=cb)
        finally:
            close()
        engine_info = dict(getattr(engine, "last_run", {}) or {})
    t_stats = time.perf_counter()
    tensors = []
    for info, role, st in zip(table.tensors, counting.roles, results):
        tensors.append(TensorReport(name=info.name, dtype=info.dtype, shape=tuple(info.shape), numel=info.numel,
                                    nbytes=info.nbytes, role=role.role, logical_numel=role.logical_numel,
                                    file=info.file, stats=st))
    data_s = t_stats - t_count
    timing = {"header_s": t_header - t0, "count_s": t_count - t_header, "stats_s": data_s if stats else 0.0,
              "total_s": t_stats - t0,
              "data_bytes": table.data_bytes if stats else 0,
              "gb_per_s": (table.data_bytes / data_s / 1e9) if stats and data_s > 0 else None}
    return ScanReport(path=os.fspath(path), format=table.format, backend=engine_name, files=list(table.files),
                      counting=counting, tensors=tensors, metadata=dict(table.metadata),
                      index_metadata=table.index_metadata, config=table.config,
                      unreferenced_files=list(table.unreferenced_files),
                      options={"stats": stats, "quantiles": quantiles if stats else None, "threads": threads,
                               "strict": strict},
                      timing=timing, aggregates=aggregate(tensors) if stats else None, engine_info=engine_info)


def _as_numpy(array) -> tuple[np.ndarray, str | None]:
    """A numpy view of `array` and, for dtypes numpy lacks (torch bf16/fp8), the safetensors dtype
    of its raw bits."""
    if isinstance(array, np.ndarray):
        return array, None
    if type(array).__module__.startswith("torch"):
        t = array.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        name = str(t.dtype).replace("torch.", "")
        bits = {"bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}
        if name in bits:   # reinterpret the bits: numpy has no such dtype
            import torch
            raw = t.contiguous().view(torch.int16 if name == "bfloat16" else torch.uint8).numpy()
            return raw, bits[name]
        return t.contiguous().numpy(), None
    return np.asarray(array), None


def tensor_stats(array, *, dtype: str | None = None, quantiles: bool = True, backend: str = "auto") -> dict:
    """The per-tensor statistics of paramkit.stats for an in-memory array (numpy, ml_dtypes
    bfloat16/float8, or a torch tensor). dtype: the safetensors dtype of the array's bytes when
    they are raw bit patterns (e.g. a uint16 array of bf16 bits: dtype="BF16")."""
    arr, raw_dtype = _as_numpy(array)
    if dtype is None:
        dtype = raw_dtype or from_numpy(arr.dtype).name
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}")
    arr = np.ascontiguousarray(np.asarray(arr))
    d = DTYPES[dtype]
    if d.bits >= 8 and arr.nbytes % (d.bits // 8):
        raise ValueError(f"array of {arr.nbytes} bytes is not a whole number of {dtype} elements")
    return get_engine(backend).array_stats(arr, dtype, quantiles=quantiles)


def scan_many(paths: Iterable, **kw) -> Iterable[tuple[str, ScanReport | None, dict | None]]:
    """Scan several checkpoints one after another; yields (path, report, error) where error is a
    dict with "code" (a FormatError code, "os_error" or "error") when that file failed. One bad
    file never stops the batch; memory stays bounded (reports are yielded, not kept)."""
    for p in paths:
        try:
            yield os.fspath(p), scan(p, **kw), None
        except FormatError as e:
            yield os.fspath(p), None, e.to_dict()
        except OSError as e:
            yield os.fspath(p), None, {"code": "os_error", "message": str(e), "path": os.fspath(p), "tensor": None}
