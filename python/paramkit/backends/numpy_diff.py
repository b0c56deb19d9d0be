"""The data pass of paramkit.diff in NumPy: both tensors of each pair read chunk by chunk through the read layer
(paramkit.sources, quant.stream's byte ranges and decoders), compared byte for byte and, where they differ, as
float64 values; the statistics of A - B come from the numpy backend's own accumulator."""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from ..dtypes import DTYPES
from ..quant.numpy_quant import empty_error_sums, merge_error
from ..quant.stream import stored_bytes, stored_values
from ..sources import open_source
from .numpy_backend import _Accumulator

# Elements per chunk (rounded to the pair's alignment): about eight float64 arrays of 4 MiB alive per worker thread
CHUNK_ELEMENTS = 1 << 19
# bytes per range when only the bytes are compared (dtypes without values)
CHUNK_BYTES = 4 << 20
# default worker threads at most (memory: about 30 MiB per thread)
DEFAULT_MAX_THREADS = 8
# counts kept beside the error sums (paramkit.quant.numpy_quant's keys, merged by merge_error)
EXTRA_KEYS = ("sum_abs", "changed", "nonfinite_changed")


def empty_sums() -> dict:
    return {**empty_error_sums(), **dict.fromkeys(EXTRA_KEYS, 0)}


def merge_sums(x: dict, y: dict) -> dict:
    """Sums of two disjoint parts: the error sums by merge_error, the extra counts added."""
    return {**merge_error(x, y), **{k: x[k] + y[k] for k in EXTRA_KEYS}}


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """sum x*y in float64 by NumPy's own loop (not BLAS, whose result can depend on its thread count)."""
    return float(np.einsum("i,i->", x, y))


def chunk_sums(a: np.ndarray, b: np.ndarray, d: np.ndarray) -> dict:
    """The sums of one chunk: a, b the float64 values, d = a - b. Over the positions where both are finite
    (n of them): sse = sum d^2, sum_w2 = sum a^2, sum_q2 = sum b^2, sum_wq = sum a*b, max_abs_err = max |d|,
    sum_abs = sum |d|. changed: positions whose values differ (NaN equals NaN, +0 equals -0);
    nonfinite_changed: those where either side is NaN or +-Inf; nonfinite: positions not both finite."""
    size = d.size
    sse = _dot(d, d)
    if math.isfinite(sse):        # then every d is finite, so every a and b is: no masks
        n = size
        changed = int(np.count_nonzero(d))
        nonfinite_changed = 0
    else:
        both = np.isfinite(a) & np.isfinite(b)
        n = int(np.count_nonzero(both))
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        changed = size - int(np.count_nonzero(same))
        a, b, d = a[both], b[both], d[both]
        sse = _dot(d, d)
        nonfinite_changed = changed - int(np.count_nonzero(d))
    absd = np.abs(d)
    return {"n": n, "nonfinite": size - n,
            "sse": sse, "sum_w2": _dot(a, a), "sum_q2": _dot(b, b), "sum_wq": _dot(a, b),
            "max_abs_err": float(absd.max(initial=0.0)), "clipped": 0, "scale_clamped": 0,
            "sum_abs": float(absd.sum()), "changed": changed, "nonfinite_changed": nonfinite_changed}


class PairDiff:
    """The running comparison of one pair: the merged sums and the statistics of A - B (float64, IEEE:
    NaN where either side is NaN or both are the same infinity, +-Inf where one side is)."""

    def __init__(self):
        self.sums = empty_sums()
        self.delta = _Accumulator("F64", quantiles=False)

    def update(self, va: np.ndarray, vb: np.ndarray) -> None:
        a = np.asarray(va, dtype=np.float64).reshape(-1)
        b = np.asarray(vb, dtype=np.float64).reshape(-1)
        with np.errstate(invalid="ignore", over="ignore"):
            d = a - b
            s = chunk_sums(a, b, d)
        self.sums = merge_sums(self.sums, s)
        self.delta.update(d.view(np.uint64))

    def result(self) -> dict:
        delta = self.delta.result()
        delta.pop("quantiles")
        return {"sums": self.sums, "delta": delta}


def diff_pair(src_a, src_b, p, progress=None) -> dict:
    """Compare the tensors of DiffPair `p` (paramkit.diff_match), read through the sources src_a and src_b:
    {"bytes_equal": bool} plus, when the values are compared and the bytes differ, "sums" and "delta". While
    the bytes agree chunk by chunk only the bytes are compared; at the first chunk that differs the chunks
    before it are read again (from the page cache) for the value sums. progress(bytes read of both sides)."""
    ta, tb = p.a, p.b
    same_layout = ta.dtype == tb.dtype and tuple(ta.shape) == tuple(tb.shape)
    values = p.values and ta.numel == tb.numel
    if not values and p.undo_a is None and p.undo_b is None:
        return {"bytes_equal": same_layout and same_bytes(src_a, src_b, ta, tb, progress)}
    n = ta.numel if same_layout or values else 0
    align = p.align
    step = max(align, CHUNK_ELEMENTS // align * align)
    bytes_equal = same_layout
    acc = PairDiff() if values else None
    equal_until = 0        # chunks [0, equal_until) had equal bytes and are not in acc yet

    def read(start: int, count: int) -> tuple[bytes, bytes]:
        ra = stored_bytes(src_a, ta, start, count)
        rb = stored_bytes(src_b, tb, start, count)
        if p.undo_a is not None:
            ra = p.undo_a.undo(ra, ta)
        if p.undo_b is not None:
            rb = p.undo_b.undo(rb, tb)
        return ra, rb

    for start in range(0, n, step):
        count = min(step, n - start)
        ra, rb = read(start, count)
        if progress is not None:
            progress(len(ra) + len(rb))
        if bytes_equal and ra == rb:
            equal_until = start + count
            continue
        if bytes_equal:
            bytes_equal = False
            if not values:
                break
            for s in range(0, equal_until, step):     # the equal prefix, now needed for the sums
                pa, pb = read(s, min(step, equal_until - s))
                acc.update(stored_values(pa, ta.dtype), stored_values(pb, tb.dtype))
        acc.update(stored_values(ra, ta.dtype), stored_values(rb, tb.dtype))
    if not same_layout and not values:
        bytes_equal = False
    out = {"bytes_equal": bytes_equal}
    if acc is not None and not bytes_equal:
        out.update(acc.result())
    return out


def same_bytes(src_a, src_b, ta, tb, progress=None) -> bool:
    """Whether the stored bytes of ta and tb are equal, compared in byte ranges of CHUNK_BYTES (any dtype,
    sub-byte ones such as F4 included); stops at the first range that differs."""
    if ta.nbytes != tb.nbytes:
        return False
    for at in range(0, ta.nbytes, CHUNK_BYTES):
        n = min(CHUNK_BYTES, ta.nbytes - at)
        ra, rb = src_a.read_at(ta.offset + at, n), src_b.read_at(tb.offset + at, n)
        if progress is not None:
            progress(2 * n)
        if ra != rb:
            return False
    return True


def run_diff(pairs: Sequence, progress=None, threads: int | None = None) -> list[dict]:
    """diff_pair of every pair, each file opened once (sources pread: thread-safe), the pairs shared among
    `threads` worker threads (default: every core, at most DEFAULT_MAX_THREADS; NumPy releases the GIL in the
    array work). Each pair is
    computed by one thread from its own chunks, so the results do not depend on the thread count.
    progress(total bytes read so far)."""
    sources: dict[str, object] = {}
    for p in pairs:
        for path in (p.a.file, p.b.file):
            if path not in sources:
                sources[path] = open_source(path)
    done = 0
    lock = threading.Lock()

    def advance(nbytes: int) -> None:
        nonlocal done
        with lock:
            done += nbytes
            progress(done)

    def one(p) -> dict:
        return diff_pair(sources[p.a.file], sources[p.b.file], p, advance if progress else None)
    try:
        workers = min(threads or min(os.cpu_count() or 1, DEFAULT_MAX_THREADS), max(len(pairs), 1))
        if workers == 1:
            return [one(p) for p in pairs]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, pairs))
    finally:
        for s in sources.values():
            s.close()


def has_values(dtype: str) -> bool:
    """Whether paramkit decodes the values of `dtype`: a plain dtype with statistics, or a GGML block type
    gguf.quants dequantizes."""
    from .numpy_backend import ggml_dequantizer
    d = DTYPES[dtype]
    return ggml_dequantizer(dtype) is not None if d.kind == "block" else d.has_stats
