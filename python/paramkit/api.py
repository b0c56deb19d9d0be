"""The public entry points: scan (file / index / directory -> ScanReport), tensor_stats (one
in-memory array) and scan_many; they tie the format readers, counting and the engines together."""
from __future__ import annotations

import os
import time
from typing import Iterable

import numpy as np

from ._gcpause import gc_paused
from .backends import get_engine
from .dtypes import DTYPES, from_numpy
from .errors import FormatError
from .progress import make_progress
from .report import ScanReport, TensorReport, aggregate


def scan(path, *, stats: bool = True, quantiles: bool = True, backend: str = "auto", threads: int | None = None,
         progress=None, strict: bool = True, quant=None, quant_tensors=None) -> ScanReport:
    """Read a safetensors file, a ``model.safetensors.index.json`` or a directory and report what is in it.

    stats=False reads the headers only (milliseconds, no tensor data). quantiles=False skips the
    quantile histograms. backend: "auto" (cuda -> cpu -> numpy, or $PARAMKIT_BACKEND), "cuda",
    "cpu" or "numpy". threads: worker threads of the cpu backend (default: all cores); results are
    bit-identical for any value. progress: None/False, True (a bar on stderr for passes longer
    than a second) or a callable(done_bytes, total_bytes). strict=False tolerates a malformed
    ``__metadata__`` only. quant: simulate quantization in the same pass — "default" (the must-have
    schemes), a comma-separated string or a list of scheme ids (see paramkit.quant.SCHEMES);
    quant_tensors overrides which tensors are quantized (default: floating-point parameters with
    2+ dimensions): a regex on names or a callable(name, dtype, shape, role) -> bool.
    Raises FormatError (with .code) on malformed input, OSError on I/O errors.
    """
    from .counting import count_table
    from .formats import open_table

    t0 = time.perf_counter()
    # gc paused while building ~10 acyclic objects per tensor (1M for a 100k-tensor header), not
    # during the data pass
    with gc_paused() as pause:
        table = open_table(os.fspath(path), strict=strict)
        t_header = time.perf_counter()
        counting = count_table(table)
        t_count = time.perf_counter()
        results: list = [None] * len(table.tensors)
        qsums: list = [None] * len(table.tensors)
        engine_name = None
        engine_info: dict = {}
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError("threads must be a positive integer or None")
        plan = None
        if quant:
            from .quant import resolve_schemes
            from .quant.plan import make_plan
            plan = make_plan(table.tensors, [r.role for r in counting.roles], resolve_schemes(quant), quant_tensors)
        if stats or plan is not None:
            engine = get_engine(backend)
            engine_name = engine.name
            total = table.data_bytes if stats or plan is not None else 0
            if plan is not None and plan.second_pass_bits:
                total += sum(t.nbytes for t, m in zip(table.tensors, plan.masks) if m & plan.second_pass_bits)
            cb, close = make_progress(progress, total)
            try:
                with pause.resumed():   # the data pass: gc as the caller had it
                    results, qsums = engine.run(table.tensors, stats=stats, quantiles=quantiles, threads=threads,
                                                progress=cb, quant=plan)
            finally:
                close()
            engine_info = dict(getattr(engine, "last_run", {}) or {})
        t_stats = time.perf_counter()
        TR = TensorReport   # positional: name, dtype, shape, numel, nbytes, role, logical_numel, file, stats, quant
        if plan is None:
            tensors = [TR(info.name, info.dtype, tuple(info.shape), info.numel, info.nbytes, role.role,
                          role.logical_numel, info.file, st, None)
                       for info, role, st in zip(table.tensors, counting.roles, results)]
        else:
            tensors = [TR(info.name, info.dtype, tuple(info.shape), info.numel, info.nbytes, role.role,
                          role.logical_numel, info.file, st, _quant_records(plan, i, qsums[i], info))
                       for i, (info, role, st) in enumerate(zip(table.tensors, counting.roles, results))]
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
                          timing=timing, aggregates=aggregate(tensors) if stats else None, engine_info=engine_info,
                          quant_plan=plan)


def _quant_records(plan, i: int, sums: dict | None, info) -> dict | None:
    """Finished error records of one tensor: {scheme id: record}, with the reason for schemes that
    cannot apply to its shape; None when the policy leaves the tensor unquantized."""
    from .quant import finalize_error
    na = plan.not_applicable.get(i, {})
    if not sums and not na:
        return None
    out = {}
    for s in plan.schemes:
        if sums and s.id in sums:
            out[s.id] = finalize_error(sums[s.id], s, tuple(info.shape))
        elif s.id in na:
            out[s.id] = {"not_applicable": na[s.id]}
    return out


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


def _native_quant(backend: str):
    """The cpu engine's array quantizer when that backend is selected and built, else None."""
    eng = get_engine(backend)
    core = getattr(eng, "_core", None)
    return core if core is not None and hasattr(core, "fake_quantize") else None


def _quant_call(array, scheme, backend: str, want_values: bool):
    from .quant import get_scheme, to_float32
    from .quant.plan import engine_kind
    from .quant import numpy_quant
    s = get_scheme(scheme)
    arr, raw_dtype = _as_numpy(array)
    if raw_dtype is not None:   # torch bf16/fp8: decode the bits exactly
        from .backends.numpy_backend import decode
        arr = np.asarray(decode(arr, raw_dtype), dtype=np.float32).reshape(arr.shape)
    x = np.require(to_float32(arr), requirements="C")   # keeps a 0-d shape (ascontiguousarray makes it 1-d)
    s.check_shape(x.shape)
    core = _native_quant(backend)
    if core is None:
        r = numpy_quant.quantize_dequantize(x, s)
        if want_values:
            return r.values
        return numpy_quant.error_sums_of(x, r.values, clipped=r.clipped, scale_clamped=r.scale_clamped), s, x.shape
    kind, group = engine_kind(s)
    shape = x.shape
    n = x.size
    if s.granularity == "row":
        rows = int(shape[0]) if len(shape) and shape[0] else 1
    else:
        rows = n // int(shape[-1]) if len(shape) and shape[-1] else 1
    row_len = n // rows if rows else 0
    am = 0.0
    if s.needs_tensor_absmax and n:
        f = np.abs(x[np.isfinite(x)])
        am = float(f.max()) if f.size else 0.0
    if want_values:
        out, _ = core.fake_quantize(x.reshape(-1), kind, group, rows, row_len, am)
        return np.asarray(out, dtype=np.float32).reshape(shape)
    sums = dict(core.quant_error_sums(x.reshape(-1), kind, group, rows, row_len, am))
    return sums, s, shape


def fake_quantize(array, scheme: str, *, backend: str = "auto") -> np.ndarray:
    """dequantize(quantize(array)) under `scheme` (see paramkit.quant.SCHEMES) as a float32 array of
    the input's shape; numpy, ml_dtypes or torch input of any float dtype. The cpu backend and the
    numpy reference give bit-identical values."""
    return _quant_call(array, scheme, backend, True)


def quant_error(array, scheme: str, *, backend: str = "auto") -> dict:
    """The error record of quantizing `array` under `scheme`: sums (sse, sum_w2, ...), mse, rmse,
    rel_err, sqnr_db, cosine, max_abs_err, clipped, quantized_nbytes, bits_per_weight."""
    from .quant import finalize_error
    sums, s, shape = _quant_call(array, scheme, backend, False)
    return finalize_error(sums, s, shape)


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
