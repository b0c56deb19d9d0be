"""The public entry points: scan (file / index / directory -> ScanReport), tensor_stats, fake_quantize and
quant_error (one in-memory or DLPack array) and scan_many; they tie formats, counting and the engines together."""
from __future__ import annotations

import inspect
import os
import time
from typing import Iterator

import numpy as np

from . import _dlpack
from ._gcpause import gc_paused
from .backends import get_engine, requested_backend
from .dtypes import DTYPES, from_numpy
from .errors import BackendUnavailable, FormatError
from .materialize import plain_tensors
from .progress import make_progress
from .report import Deferred, ScanReport, aggregate, tensor_reports


def scan(path, *, stats: bool = True, quantiles: bool = True, backend: str = "auto", threads: int | None = None,
         progress=None, strict: bool = True, quant=None, quant_tensors=None, tensors=None) -> ScanReport:
    """Read a weight file (safetensors, PyTorch .bin/.pt/.pth/.ckpt, NumPy .npy/.npz, GGUF), an index
    (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``) or a directory and report what is in it.
    `path` may be a URL: http(s)://, hf://org/model or any fsspec URL (s3://, memory:// ...), read with range
    requests; its statistics are streamed through a bounded window (README "Remote weights").

    stats=False reads the headers only (milliseconds, no tensor data). quantiles=False skips the
    quantile histograms. backend: "auto" (cuda -> cpu -> numpy, or $PARAMKIT_BACKEND), "cuda",
    "cpu" or "numpy". threads: worker threads of the cpu backend (default: all cores), reader threads
    of the cuda backend (default: one per core, at most 8); results are
    bit-identical for any value. progress: None/False, True (a bar on stderr for passes longer
    than a second) or a callable(done_bytes, total_bytes). strict=False tolerates a malformed
    ``__metadata__`` only. quant: simulate quantization in the same pass — "default" (the nine default
    schemes), a comma-separated string or a list of scheme ids (see paramkit.quant.SCHEMES);
    quant_tensors overrides which tensors are quantized (default: floating-point parameters with
    2+ dimensions): a regex on names or a callable(name, dtype, shape, role) -> bool.
    tensors: only these tensors are read for statistics and quantization (a regex on names, re.search,
    or a callable(name, dtype, shape, role) -> bool; matching none is a ValueError): the others get no
    statistics, and the aggregates are of the chosen ones; the counts are always of the whole model.
    Raises FormatError (with .code) on malformed input, OSError on I/O errors.
    """
    from .counting import count_table
    from .counting.ties import confirm_with_statistics
    from .formats import open_table

    t0 = time.perf_counter()
    # gc paused while building ~10 acyclic objects per tensor (1M for a 100k-tensor header), not
    # during the data pass
    with gc_paused() as pause:
        table = open_table(os.fspath(path), strict=strict)
        t_header = time.perf_counter()
        counting = count_table(table)
        t_count = time.perf_counter()
        results: list = [None] * len(table)
        qsums: list = [None] * len(table)
        want_hist = bool(stats and quantiles)   # the compact histograms come with the quantiles' histogram
        engine_name = None
        engine_info: dict = {}
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError("threads must be a positive integer or None")
        chosen = _chosen_tensors(table, counting, tensors)     # None: every tensor
        chosen_option = {} if chosen is None else {"tensors": _describe(tensors)}
        plan = None
        if quant:
            from .quant import resolve_schemes
            from .quant.plan import make_plan
            plan = make_plan(table.tensors, [r.role for r in counting.roles], resolve_schemes(quant), quant_tensors)
            if chosen is not None:
                plan = plan.only(chosen)
        data_bytes = table.data_bytes if chosen is None else int(table.columns.nbytes[chosen].sum())
        if stats or plan is not None:
            read = table.tensors if chosen is None else [table.tensors[i] for i in chosen]
            engine = get_engine(backend)
            engine_name = engine.name
            run_plan = plan if plan is None or chosen is None else plan.take(chosen)
            total = data_bytes
            if plan is not None and plan.second_pass_bits:
                total += sum(t.nbytes for t, m in zip(table.tensors, plan.masks) if m & plan.second_pass_bits)
            if table.remote is not None:    # over the network: fetched into a window batch by batch
                from .remote.stream import remote_run
                with pause.resumed():
                    got, qgot, engine_info = remote_run(table.remote, engine, read, stats=stats, quantiles=quantiles,
                                                        threads=threads, progress=progress, quant=run_plan,
                                                        histograms=want_hist)
                table.transfer = table.remote.report()
            else:
                cb, close = make_progress(progress, total)
                try:
                    with pause.resumed(), plain_tensors(read, engine_reads_views=engine.reads_views) as plain:
                        # the data pass: gc as the caller had it
                        got, qgot = engine.run(plain, stats=stats, quantiles=quantiles, threads=threads,
                                               progress=cb, quant=run_plan, histograms=want_hist)
                finally:
                    close()
                engine_info = dict(getattr(engine, "last_run", {}) or {})
            if chosen is None:
                results, qsums = got, qgot
            else:
                for k, i in enumerate(chosen):
                    results[i], qsums[i] = got[k], qgot[k]
        t_stats = time.perf_counter()
        hists = [s.pop("histogram", None) if s is not None else None for s in results] if want_hist else None
        if stats:   # a tie that config.json claims, checked against the statistics (counting read no values)
            counting = confirm_with_statistics(counting, table, results)
        quant_records = None if plan is None else [_quant_records(plan, i, qsums[i], info)
                                                   for i, info in enumerate(table.tensors)]
        reports = Deferred(lambda: tensor_reports(table.columns, counting.role_columns, results, quant_records,
                                                  hists))
        data_s = t_stats - t_count
        timing = {"header_s": t_header - t0, "count_s": t_count - t_header, "stats_s": data_s if stats else 0.0,
                  "total_s": t_stats - t0,
                  "data_bytes": data_bytes if stats else 0,
                  "gb_per_s": (data_bytes / data_s / 1e9) if stats and data_s > 0 else None}
        report = ScanReport(path=os.fspath(path), format=table.format, backend=engine_name, files=list(table.files),
                            counting=counting, tensors=reports, metadata=dict(table.metadata),
                            index_metadata=table.index_metadata, config=table.config,
                            unreferenced_files=list(table.unreferenced_files),
                            ignored_files=[dict(f) for f in table.ignored_files],
                            options={"stats": stats, "quantiles": quantiles if stats else None, "threads": threads,
                                     "strict": strict, **chosen_option},
                            timing=timing, engine_info=engine_info,
                            quant_plan=plan, transfer=table.transfer)
        if stats:
            report.aggregates = aggregate(report.tensors, counting.role_columns.counted.tolist())
        return report


def _chosen_tensors(table, counting, tensors) -> list[int] | None:
    """Indices (table order) of the tensors scan(tensors=...) reads; None for all of them."""
    if tensors is None:
        return None
    if isinstance(tensors, str):
        rx = tensors_regex(tensors)
        chosen = [i for i, name in enumerate(table.columns.names) if rx.search(name)]
    elif callable(tensors):
        chosen = [i for i, (t, r) in enumerate(zip(table.tensors, counting.roles))
                  if tensors(t.name, t.dtype, tuple(t.shape), r.role)]
    else:
        raise TypeError("tensors must be None, a regex string or a callable(name, dtype, shape, role)")
    if not chosen:
        raise ValueError(f"tensors={_describe(tensors)!r} matches none of the {len(table):,} tensors")
    return chosen


def tensors_regex(pattern: str):
    """The compiled regex of a tensors= argument; ValueError naming it when it is not one."""
    import re
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"tensors: {pattern!r} is not a valid regular expression ({e})") from None


def _describe(tensors) -> str:
    return tensors if isinstance(tensors, str) else f"custom: {getattr(tensors, '__qualname__', repr(tensors))}"


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


def _device(array) -> tuple[int, int] | None:
    """Where a DLPack array lives: None for numpy arrays and non-DLPack input (lists, scalars), the DLPack
    (device type, id) otherwise; an object with ``__dlpack__`` but no ``__dlpack_device__`` counts as host."""
    if isinstance(array, np.ndarray):
        return None
    dev = _dlpack.device_of(array)
    if dev is None and hasattr(array, "__dlpack__"):
        return (_dlpack.CPU, 0)
    return dev


def _as_numpy(array, dev) -> tuple[np.ndarray, str | None]:
    """A numpy view of a host array and, for dtypes numpy lacks (bf16/fp8 through DLPack), the safetensors
    dtype of its raw bits. DLPack producers (torch CPU tensors, ...) are viewed in place, not copied."""
    if dev is None:
        return np.asarray(array), None
    arr, name, _ = _dlpack.host_array(array)
    return arr, (name if name in _dlpack.RAW_BITS else None)


def _cuda_engine(array, dev, backend: str):
    """The cuda engine for an array on a CUDA device; ValueError (naming the device, the backend chosen and why
    cuda cannot take it) otherwise: paramkit never copies device memory to the host behind the caller's back."""
    where = _dlpack.device_name(dev)
    what = type(array).__name__
    if dev[0] not in _dlpack.CUDA_DEVICES:
        raise ValueError(f"this {what} is on {where}: paramkit reads arrays in host memory or on a CUDA device; "
                         "copy it to the host first (e.g. .cpu())")
    name, how = requested_backend(backend)
    try:
        eng = get_engine(backend)
    except BackendUnavailable:
        if name not in ("cuda", "cpu", "numpy"):
            raise   # an unknown backend name: the same error as for host input
        eng, selected = None, f"{how} is unavailable"
    else:
        selected = f"the backend in use is {eng.name!r} ({how})"
    if eng is not None and eng.reads_device_memory:
        return eng
    from .backends import backends
    st = next(b for b in backends() if b.name == "cuda")
    cuda = f"cuda is unavailable: {st.reason}" if not st.available else "cuda is available: pass backend='cuda'"
    raise ValueError(f"this {what} is on {where}, and only the cuda backend reads device memory, but {selected}; "
                     f"{cuda}. paramkit does not copy device memory to the host silently: pass array.cpu() to "
                     "read it on the host")


def _device_input(array, dev, backend: str, dtype: str | None):
    """(cuda engine, capsule, safetensors dtype, shape) of an array on a CUDA device."""
    eng = _cuda_engine(array, dev, backend)
    cap = _dlpack.capsule_of(array, dev)
    info = _dlpack.describe(cap)
    name = _checked_dtype(dtype or _dlpack.dtype_name(info["dtype"]), info["nbytes"])
    return eng, cap, name, tuple(info["shape"])


def _checked_dtype(dtype: str, nbytes: int) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}")
    d = DTYPES[dtype]
    if d.bits >= 8 and nbytes % (d.bits // 8):
        raise ValueError(f"array of {nbytes} bytes is not a whole number of {dtype} elements")
    return dtype


def tensor_stats(array, *, dtype: str | None = None, quantiles: bool = True, backend: str = "auto") -> dict:
    """The per-tensor statistics of paramkit.stats for an in-memory array: numpy, ml_dtypes bfloat16/float8,
    or any DLPack array (torch, cupy, ...) read in place: host memory by the selected backend, CUDA device
    memory by the cuda backend only (ValueError for another backend; nothing is copied). dtype: the
    safetensors dtype of the array's bytes when they are raw bit patterns (e.g. a uint16 array of bf16
    bits: dtype="BF16")."""
    dev = _device(array)
    if dev is not None and dev[0] not in _dlpack.HOST_DEVICES:
        eng, cap, dtype, _ = _device_input(array, dev, backend, dtype)
        return eng.dlpack_stats(cap, dtype, quantiles=quantiles)
    arr, raw_dtype = _as_numpy(array, dev)
    if dtype is None:
        dtype = raw_dtype or from_numpy(arr.dtype).name
    arr = np.ascontiguousarray(np.asarray(arr))
    return get_engine(backend).array_stats(arr, _checked_dtype(dtype, arr.nbytes), quantiles=quantiles)


def _quant_call(array, scheme, backend: str, want_values: bool):
    from .quant import get_scheme, to_float32
    s = get_scheme(scheme)
    dev = _device(array)
    if dev is not None and dev[0] not in _dlpack.HOST_DEVICES:
        return _device_quant(array, dev, s, backend, want_values)
    arr, raw_dtype = _as_numpy(array, dev)
    if raw_dtype is not None:   # bf16/fp8 bit patterns: decode them exactly
        from .backends.numpy_backend import decode
        arr = np.asarray(decode(arr, raw_dtype), dtype=np.float32).reshape(arr.shape)
    x = np.require(to_float32(arr), requirements="C")   # keeps a 0-d shape (ascontiguousarray makes it 1-d)
    s.check_shape(x.shape)
    values, sums = get_engine(backend).array_quant(x, s, want_values=want_values)
    return values if want_values else (sums, s, x.shape)


def _device_quant(array, dev, s, backend: str, want_values: bool):
    """_quant_call for an array on a CUDA device: the cuda engine quantizes it in place; fake-quantized values
    come back as a device array of the input's library."""
    eng, cap, name, shape = _device_input(array, dev, backend, None)
    if not DTYPES[name].is_floating:
        raise TypeError(f"quantization needs a floating-point array, got dtype {name}")
    s.check_shape(shape)
    values, sums = eng.dlpack_quant(cap, name, s, shape=shape, want_values=want_values)
    if not want_values:
        return dict(sums), s, shape
    out = _dlpack.wrap_like(array, values)
    if hasattr(out, "reshape") and tuple(getattr(out, "shape", shape)) != shape:
        out = out.reshape(shape)
    return out


def fake_quantize(array, scheme: str, *, backend: str = "auto"):
    """dequantize(quantize(array)) under `scheme` (see paramkit.quant.SCHEMES) as a float32 array of the input's
    shape; numpy, ml_dtypes or any DLPack array (torch, cupy, ...) of any float dtype. Host input gives a numpy
    array; input on a CUDA device (cuda backend only) gives a device array of the input's library (torch in,
    torch out), never copied to the host. The cpu backend and the numpy reference give bit-identical values."""
    return _quant_call(array, scheme, backend, True)


def quant_error(array, scheme: str, *, backend: str = "auto") -> dict:
    """The error record of quantizing `array` under `scheme`: sums (sse, sum_w2, ...), mse, rmse,
    rel_err, sqnr_db, cosine, max_abs_err, clipped, quantized_nbytes, bits_per_weight. DLPack input as for
    fake_quantize (CUDA device arrays on the cuda backend, in place)."""
    from .quant import finalize_error
    sums, s, shape = _quant_call(array, scheme, backend, False)
    return finalize_error(sums, s, shape)


def error_dict(e: Exception, path: str) -> dict:
    """A failed scan as scan_many and ingest record it: "code" (the FormatError code, "os_error" for an OSError,
    which adds "errno", else "error"), "type", "message", "path", "tensor"."""
    if isinstance(e, FormatError):
        return {**e.to_dict(), "type": type(e).__name__}
    if isinstance(e, OSError):
        return {"code": "os_error", "type": type(e).__name__, "message": str(e), "path": path, "tensor": None,
                "errno": e.errno}
    return {"code": "error", "type": type(e).__name__, "message": str(e), "path": path, "tensor": None}


def scan_many(paths, **kw) -> Iterator[tuple[str, ScanReport | None, dict | None]]:
    """Scan checkpoints one after another with scan(path, **kw), yielding one (path, report, error) per item of
    `paths` (an iterable of paths; a single str, bytes or os.PathLike is one path), in order, as each finishes.

    path: os.fspath(item) (str(item) when it is not a path). A scan that succeeds yields (path, report, None);
    one that fails yields (path, None, error), never raises: error is a dict with "code" (a FormatError code,
    "os_error" for an OSError, which adds "errno", or "error" for any other exception), "type" (the exception's
    class name), "message", "path" and "tensor" (the tensor at fault, or None). One bad file never stops the
    batch; KeyboardInterrupt and SystemExit still do, and a keyword that scan() does not take raises TypeError
    before the first scan. Memory stays bounded: reports are yielded, not kept."""
    inspect.signature(scan).bind("path", **kw)   # TypeError now for a mistyped keyword, not once per file
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    for p in paths:
        try:
            path = os.fspath(p)
        except TypeError:
            path = str(p)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        try:
            report = scan(p, **kw)
        except Exception as e:   # a bug, or an argument scan() rejects, too: that file's error, not the batch's
            yield path, None, error_dict(e, path)
        else:
            yield path, report, None


def plan(source, *, context: int = 8192, batch: int = 1, gpus=None, strict: bool = True, **kw):
    """What it takes to run or train a model, as a paramkit.planning.Plan: weights memory per precision and
    quantization scheme, KV cache, training memory, GPUs needed, FLOPs, every figure with its formula.

    source: a ScanReport (planned from its counts as they are); a path to a config.json, or a config dict,
    planned from the architecture alone, no weights needed (paramkit.config_params: Llama, Mistral, Qwen2,
    Qwen3, Gemma 1-3 decoders, BERT / RoBERTa / XLM-RoBERTa encoders; ValueError for any other); or any path
    scan() takes (a .safetensors file, an index, a directory), scanned first with stats=False (headers only,
    no tensor data; strict as for scan). context (tokens) and batch size the KV cache; gpus, kv_dtype,
    overhead, lora_rank, train_tokens and mfu as for paramkit.planning.plan."""
    if isinstance(source, ScanReport):
        return source.plan(context=context, batch=batch, gpus=gpus, **kw)
    if isinstance(source, dict):
        return _plan_from_config(source, "<config dict>", context=context, batch=batch, gpus=gpus, **kw)
    path = os.fspath(source)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    name = os.path.basename(path)
    if name.endswith(".json") and not name.endswith(".index.json") and os.path.isfile(path):
        from .formats.resolver import read_config
        return _plan_from_config(read_config(path), path, context=context, batch=batch, gpus=gpus, **kw)
    return scan(path, stats=False, strict=strict).plan(context=context, batch=batch, gpus=gpus, **kw)


def _plan_from_config(config: dict, where: str, **kw):
    """plan() of the tensors that config.json's architecture stores (paramkit.config_params)."""
    from .config_params import config_dtype, config_table
    from .counting import count_table
    from .planning import plan as make_plan
    counting = count_table(config_table(config, where))
    p = make_plan(counting, config, **kw)
    p.notes.insert(0, f"parameters counted from the architecture in config.json (model_type "
                      f"{config.get('model_type')}), no weights read; the 'as stored' row assumes "
                      f"{config_dtype(config)[1]}")
    return p
