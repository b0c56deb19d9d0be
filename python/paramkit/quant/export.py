"""Fake-quantized checkpoint export: a safetensors file whose selected tensors hold
dequantize(quantize(w)) in their original dtype, streamed tensor by tensor and written atomically.

`fake_quantize_file(path, scheme, out)` reads one ``.safetensors`` file and writes another with
the same tensors (names, dtypes, shapes, order, ``__metadata__``). The tensors the policy picks
(`paramkit.quant.plan.make_plan`: by default floating-point parameters with 2 or more dimensions,
the same policy as ``scan(quant=...)``) are replaced by their fake-quantized values; every other
tensor is copied byte for byte. The fake-quantized float32 values are cast back to the tensor's
dtype: F32 as is, F64 by widening (exact), F16 by numpy (round to nearest even), BF16 by round to
nearest even of the float32 bits (== torch ``.to(torch.bfloat16)``), F8_E4M3 / F8_E5M2 by round
to nearest even without saturation (== ``ml_dtypes`` ``astype``: E4M3FN overflow and ±Inf become
NaN, E5M2 overflow becomes ±Inf); so the file holds q(w) rounded once more to the stored dtype
(``stored_error`` in the summary measures exactly that). A sharded model (index or directory of
several files) is refused with ValueError: export each shard file (every scheme is per tensor,
so the shards quantize independently).

Memory: one tensor at a time, and a tensor of more than `CHUNK_ELEMENTS` elements in chunks that
start at multiples of ``scheme.chunk_multiple(shape)`` (whole groups, rows or channels); a
per-tensor-scale scheme (int8_tensor, fp8_e4m3) first reads such a tensor once for its finite
absmax. A chunk is cut into pieces of `PIECE_ELEMENTS` (same alignment) that worker threads
quantize, cast back and sum; sums merge in piece order, so the file and the summary do not depend
on the thread count. The output goes to a temporary file beside ``out``, renamed into place only when
complete (`paramkit.formats.writer.write_safetensors`): an error or Ctrl-C leaves no partial file
and an existing ``out`` untouched.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from ..backends.numpy_backend import decode
from ..dtypes import DTYPES
from .numpy_quant import empty_error_sums, finalize_error, merge_error, to_float32
from .schemes import Scheme, get_scheme
from .stream import finite_absmax, read_values
from ..materialize import plain_tensors
from ..sources import open_source

__all__ = ["fake_quantize_file", "cast_back", "METADATA_KEY", "CHUNK_ELEMENTS", "PIECE_ELEMENTS",
           "DECODABLE_DTYPES"]

METADATA_KEY = "paramkit.quant"
# Elements per chunk of a quantized tensor (rounded down to the scheme's chunk multiple, at least
# one multiple): ~16 MiB of float32 values, a few such arrays alive at once.
CHUNK_ELEMENTS = 1 << 22
# Elements per piece of work inside a chunk (rounded the same way): pieces run in parallel threads
# and their sums merge in piece order, so the result does not depend on the thread count.
PIECE_ELEMENTS = 1 << 18
# Bytes per piece when a kept tensor is copied.
COPY_BYTES = 16 << 20
# The quantized tensor names go into the metadata entry while their JSON stays below this size;
# above it only the count is stored (a 100k-tensor MoE would otherwise add megabytes of header).
MAX_NAMES_JSON = 64 << 10
# Float dtypes the export can decode and encode again.
DECODABLE_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
_F8 = {  # mantissa bits, smallest normal exponent, max finite, NaN code, overflow code
    "F8_E4M3": (3, -6, 448.0, 0x7F, 0x7F),    # OCP E4M3FN: no Inf, overflow -> NaN (like ml_dtypes)
    "F8_E5M2": (2, -14, 57344.0, 0x7E, 0x7C),  # IEEE-like: overflow -> Inf
}


# ---- casting the float32 values back to the stored dtype ------------------------------------------
def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns of float32 values: round to nearest even of the float32 bits (overflow
    to ±Inf, as torch and ml_dtypes do); NaN becomes the quiet NaN 0x7FC0 with its sign kept."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))
    r = r.astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        sign = ((u >> np.uint32(16)) & np.uint32(0x8000)).astype(np.uint16)
        r = np.where(nan, sign | np.uint16(0x7FC0), r)
    return r


def _f32_to_f8_bits(x: np.ndarray, dtype: str) -> np.ndarray:
    """F8 codes of float32 values, rounded to nearest even once (no double rounding), subnormals
    included, not saturating: the values ``ml_dtypes`` gives for ``astype(float8_e4m3fn /
    float8_e5m2)``."""
    man, emin, vmax, nan_code, over_code = _F8[dtype]
    x = np.ascontiguousarray(x, dtype=np.float32)
    sign = ((x.view(np.uint32) >> np.uint32(24)) & np.uint32(0x80)).astype(np.uint8)
    a = np.abs(x)
    finite = np.isfinite(a)
    af = np.where(finite, a, np.float32(0))
    _, e = np.frexp(af)                                   # af = m·2^e, m in [0.5, 1)
    qexp = np.maximum(e - 1, emin) - man                  # exponent of one unit in the last place
    r = np.ldexp(np.rint(np.ldexp(af, -qexp)), qexp)      # exact power-of-two scaling, RNE
    over = r > vmax
    rs = np.where(over, np.float32(0), r)
    _, e2 = np.frexp(rs)
    sub = rs < np.float32(2.0 ** emin)                    # zero or subnormal: exponent field 0
    efield = np.where(sub, 0, e2 - 1 + (1 - emin))        # bias = 1 - emin
    mant = np.where(sub, np.ldexp(rs, man - emin), np.ldexp(rs, man - (e2 - 1)) - (1 << man))
    code = ((efield.astype(np.int64) << man) | mant.astype(np.int64)).astype(np.uint8)
    code = np.where(over | np.isinf(x), np.uint8(over_code), code)
    code = np.where(np.isnan(x), np.uint8(nan_code), code)
    return code | sign


def cast_back(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 `values` as an array whose raw little-endian bytes are elements of safetensors
    `dtype` (one of DECODABLE_DTYPES), rounded to nearest even."""
    v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    if dtype == "F32":
        return v.astype("<f4", copy=False)
    if dtype == "F64":
        return v.astype("<f8")
    if dtype == "F16":
        with np.errstate(over="ignore"):
            return v.astype("<f2")
    if dtype == "BF16":
        return _f32_to_bf16_bits(v).astype("<u2", copy=False)
    if dtype in _F8:
        with np.errstate(invalid="ignore", over="ignore"):
            return _f32_to_f8_bits(v, dtype)
    raise ValueError(f"cannot cast back to dtype {dtype}")


def _stored_sums(w: np.ndarray, v: np.ndarray) -> dict:
    """Error sums (the keys of `error_sums_of`) of original float32 values `w` against the values
    `v` the file stores: a diagnostic, so the difference is taken in float32 (exact when v is
    within a factor 2 of w, else off by at most half a float32 ulp of w-v) and the sums are
    accumulated in float64 without float64 temporaries (several times faster than the reference)."""
    w = w.reshape(-1)
    v = v.reshape(-1)
    fin = np.isfinite(w)
    n = int(np.count_nonzero(fin))
    if n != w.size:
        w, v = w[fin], v[fin]
    with np.errstate(all="ignore"):
        e = w - v

        def dot(a, b) -> float:
            return float(np.einsum("i,i->", a, b, dtype=np.float64))

        return {"n": n, "nonfinite": int(fin.size - n), "sse": dot(e, e), "sum_w2": dot(w, w),
                "sum_q2": dot(v, v), "sum_wq": dot(w, v),
                "max_abs_err": float(np.max(np.abs(e), initial=0.0)), "clipped": 0, "scale_clamped": 0}


# ---- the export -----------------------------------------------------------------------------------
def _policy_and_plan(table, scheme: Scheme, quant_tensors):
    from ..counting import count_table
    from .plan import make_plan
    roles = [r.role for r in count_table(table).roles]
    return make_plan(table.tensors, roles, [scheme], quant_tensors), roles


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _metadata_entry(scheme: Scheme, names: list[str], policy: str) -> str:
    from .. import __version__
    entry: dict = {"scheme": scheme.id, "paramkit_version": __version__, "policy": policy,
                   "n_tensors": len(names),
                   "cast_back": "fake-quantized float32 values rounded to nearest even into each "
                                "tensor's original dtype"}
    names_json = json.dumps(names)
    if len(names_json) <= MAX_NAMES_JSON:
        entry["tensors"] = names
    return json.dumps(entry, separators=(",", ":"))


def fake_quantize_file(path, scheme: str | Scheme, out, *, quant_tensors=None, backend: str = "auto",
                       progress=None, overwrite: bool = False, threads: int | None = None) -> dict:
    """Write `out`: the safetensors file `path` with the tensors the policy picks replaced by their
    fake-quantized values under `scheme`, each in its original dtype; everything else identical.

    quant_tensors: None (default policy: floating-point parameters with 2+ dimensions), a regex
    matched against tensor names (re.search) or a callable(name, dtype, shape, role) -> bool;
    buffers and quantization state are never quantized, nor tensors the scheme cannot take (a
    ggml row length that is not a multiple of 32) or whose dtype has no decoder (F4, F6, ...):
    those are kept and listed with the reason. backend: "auto" ($PARAMKIT_BACKEND, else the cpu core when
    built, else the numpy reference; both give identical values), "cpu", "numpy" or "cuda" (which hands the
    host pieces to the cpu core); the summary's ``backend`` names the one that quantized.
    progress: None/False, True (a bar on stderr) or callable(done_bytes, total_bytes).
    overwrite: replace an existing `out` (never the input itself). threads: worker threads for the
    pieces of a tensor (default: all cores); the output and the summary are identical for any value.

    Returns a summary dict: ``path``, ``out``, ``scheme``, ``schemes``, ``backend``, ``policy``,
    ``tensors`` (count), ``n_quantized``, ``n_kept``, ``quantized`` (names), ``kept`` (list of
    {name, dtype, reason}), ``quantized_elements``, ``original_bytes`` (data bytes of the input),
    ``quantized_bytes`` (the model's size under the scheme: quantized tensors at
    ``scheme.quantized_nbytes``, the rest as stored), ``bytes_written`` (size of `out`),
    ``error`` (element-weighted error record of all quantized tensors, float32 originals vs the
    fake-quantized float32 values — what ``scan(quant=...)`` reports), ``stored_error`` (the same
    against the values actually stored after the cast back), ``worst`` (up to 10 {name, sqnr_db},
    lowest first), ``metadata_key`` and ``seconds``.

    Raises ValueError for a sharded model, an unknown scheme, or `out` naming the input;
    FileExistsError when `out` exists and overwrite is False; FormatError for a malformed input.
    """
    from ..formats import open_table
    from ..progress import make_progress

    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError("threads must be a positive integer or None")
    t0 = time.perf_counter()
    s = get_scheme(scheme)
    src = os.fspath(path)
    dst = os.fspath(out)
    table = open_table(src)
    blocks = sorted({t.dtype for t in table.tensors if DTYPES[t.dtype].kind == "block"})
    if blocks:   # a safetensors file has no dtype for them, and writing them back as GGUF is not done here
        raise ValueError(f"{src!r} holds GGML block-quantized tensors ({', '.join(blocks)}): the export writes "
                         "safetensors, which has no dtype for them; paramkit quant without --out (scan(quant=...)) "
                         "measures the schemes on their dequantized values")
    if len(table.files) != 1:
        raise ValueError(f"fake_quantize_file exports one weight file; {src!r} is a sharded model "
                         f"of {len(table.files)} files: export each shard file on its own (every scheme "
                         "works per tensor, so shards quantize independently)")
    infile = table.files[0]
    if _same_file(dst, infile) or _same_file(dst, src):
        raise ValueError(f"refusing to overwrite the input file {infile!r}: choose another output path")
    if os.path.isdir(dst):
        raise IsADirectoryError(f"output path {dst!r} is a directory")
    if os.path.lexists(dst) and not overwrite:
        raise FileExistsError(f"{dst!r} exists; pass overwrite=True (--overwrite) to replace it")
    # the selected engine's array_quant quantizes the pieces; the cuda engine hands host arrays to the cpu
    # engine (an export is bound by reading, casting and writing; only scan has a cuda data path)
    from ..backends import get_engine
    engine = get_engine(backend)

    plan, roles = _policy_and_plan(table, s, quant_tensors)
    quantize: list[bool] = []
    kept: list[dict] = []
    for i, t in enumerate(table.tensors):
        ok = bool(plan.masks[i] & 1)
        reason = None
        if ok and t.dtype not in DECODABLE_DTYPES:
            ok, reason = False, f"dtype {t.dtype} cannot be decoded and encoded again"
        if not ok:
            if reason is None:
                reason = plan.not_applicable.get(i, {}).get(s.id)
            if reason is None:
                if roles[i] != "parameter":
                    reason = f"role {roles[i]}: never quantized"
                elif DTYPES[t.dtype].kind != "float":
                    reason = f"not floating point ({t.dtype})"
                elif quant_tensors is None and len(t.shape) < 2:
                    reason = "fewer than 2 dimensions (default policy: norms, biases, 1-D tensors stay)"
                else:
                    reason = "not selected by the policy"
            kept.append({"name": t.name, "dtype": t.dtype, "reason": reason})
        quantize.append(ok)
    qnames = [t.name for t, q in zip(table.tensors, quantize) if q]

    metadata = dict(table.metadata)
    metadata[METADATA_KEY] = _metadata_entry(s, qnames, plan.policy)

    # progress counts tensor bytes processed, plus the absmax pre-read of per-tensor-scale schemes
    total = table.data_bytes + (sum(t.nbytes for t, q in zip(table.tensors, quantize)
                                    if q and s.needs_tensor_absmax and t.numel > CHUNK_ELEMENTS))
    cb, close = make_progress(progress, total, f"fake-quantizing ({s.id})")
    done = [0]

    def advance(nbytes: int) -> None:
        done[0] += nbytes
        if cb is not None:
            cb(done[0])

    model = {"sums": empty_error_sums(), "stored": empty_error_sums(), "qbytes": 0, "numel": 0}
    per_tensor: list[dict] = []

    def copy_producer(t) -> Callable:
        def produce():
            for off in range(0, t.nbytes, COPY_BYTES):
                piece = source_of(t).read_at(t.offset + off, min(COPY_BYTES, t.nbytes - off))
                advance(len(piece))
                yield piece
        return produce

    def run_piece(t, x: np.ndarray, view_shape, absmax):
        """One aligned piece: fake-quantize, cast back, error sums (numpy and the core release the
        GIL, so pieces run in parallel threads)."""
        xv = x.reshape(view_shape)
        q, part = engine.array_quant(np.ascontiguousarray(xv), s, want_values=True, tensor_absmax=absmax)
        enc = cast_back(q, t.dtype)
        if t.dtype in ("F32", "F64"):                 # stored exactly: the same error
            stored = {**part, "clipped": 0, "scale_clamped": 0}
        else:
            stored = _stored_sums(x, to_float32(decode(enc.view(np.uint8), t.dtype)))
        return enc, part, stored

    def quant_producer(t) -> Callable:
        def produce():
            shape = tuple(int(d) for d in t.shape)
            es = DTYPES[t.dtype].bits // 8
            cm = max(1, s.chunk_multiple(shape))
            step = max(cm, CHUNK_ELEMENTS // cm * cm)     # elements read at once
            sub = max(cm, PIECE_ELEMENTS // cm * cm)      # elements per piece of work
            sums = empty_error_sums()
            stored = empty_error_sums()
            absmax = None
            if s.needs_tensor_absmax and t.numel > step:
                absmax = finite_absmax(source_of(t), t, step)
                advance(t.nbytes)
            for start in range(0, t.numel, step):
                n = min(step, t.numel - start)
                x = read_values(source_of(t), t, start, n)
                if n == t.numel and n <= sub:         # small tensor: its own shape, one piece
                    jobs = [(x, shape, None)]
                else:
                    if s.needs_tensor_absmax and absmax is None:   # one chunk = whole tensor
                        a = np.abs(x[np.isfinite(x)])
                        absmax = float(a.max()) if a.size else 0.0
                    view = s.piece_shape(shape)     # whole channels, rows or groups
                    jobs = [(x[p:p + sub], view, absmax) for p in range(0, n, sub)]
                if pool is not None and len(jobs) > 1:
                    results = list(pool.map(lambda j: run_piece(t, *j), jobs))
                else:
                    results = [run_piece(t, *j) for j in jobs]
                del x, jobs
                for enc, part, st in results:     # merged in piece order: any thread count
                    sums = merge_error(sums, part)  # gives the same sums
                    stored = merge_error(stored, st)
                advance(n * es)
                for enc, _, _ in results:
                    yield memoryview(enc.view(np.uint8))
                del results
            rec = finalize_error(sums, s, shape)
            model["sums"] = merge_error(model["sums"], sums)
            model["stored"] = merge_error(model["stored"], stored)
            model["qbytes"] += rec["quantized_nbytes"]
            model["numel"] += t.numel
            per_tensor.append({"name": t.name, "sqnr_db": rec["sqnr_db"], "rel_err": rec["rel_err"]})
        return produce

    from ..formats.writer import write_safetensors
    nthreads = threads if threads is not None else (os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=nthreads) if nthreads > 1 else None
    readers: dict[str, object] = {}

    def source_of(t):
        """The byte source of tensor t's file (the input, or the plain copy of a strided/deflated view)."""
        return readers.get(t.file) or readers.setdefault(t.file, open_source(t.file))

    try:
        with plain_tensors(table.tensors) as tensors:
            producers = [(t.name, t.dtype, tuple(t.shape), t.nbytes, quant_producer(t) if q else copy_producer(t))
                         for t, q in zip(tensors, quantize)]
            target = write_safetensors(dst, producers, metadata)
    finally:
        for r in readers.values():
            r.close()
        close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    kept_bytes = sum(t.nbytes for t, q in zip(table.tensors, quantize) if not q)
    err = finalize_error(model["sums"])
    err["quantized_nbytes"] = model["qbytes"]
    err["bits_per_weight"] = 8.0 * model["qbytes"] / model["numel"] if model["numel"] else None
    stored_err = finalize_error(model["stored"])
    worst = sorted(per_tensor, key=lambda w: (w["sqnr_db"] is None,
                                              w["sqnr_db"] if w["sqnr_db"] is not None else 0.0))[:10]
    return {
        "path": src, "out": target, "scheme": s.id, "schemes": [s.id], "backend": engine.array_quant_backend,
        "policy": plan.policy, "tensors": len(table.tensors),
        "n_quantized": len(qnames), "n_kept": len(kept), "quantized": qnames, "kept": kept,
        "quantized_elements": model["numel"], "original_bytes": table.data_bytes,
        "quantized_bytes": model["qbytes"] + kept_bytes, "bytes_written": os.path.getsize(target),
        "error": err, "stored_error": stored_err, "worst": worst, "metadata_key": METADATA_KEY,
        "seconds": time.perf_counter() - t0,
    }
