"""The native diff pass (paramkit._core.run_diff, cpp/src/diff_engine.cpp) behind Engine.run_diff: which pairs it
takes, their task table, and its result arrays turned into numpy_diff's result dicts. The policy is here."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..dtypes import DTYPES
from .native_records import to_stats

# Elements per piece (rounded to the pair's alignment): the unit merged in order, independent of the thread count
CHUNK_ELEMENTS = 1 << 19
# bytes per piece of a pair compared byte for byte only (dtypes without values)
CHUNK_BYTES = 4 << 20
MODE_VALUES, MODE_BYTES = 1, 2


def numpy_reason(p) -> str | None:
    """Why DiffPair p is left to the numpy pass, or None when the native engine takes it."""
    if p.undo_a is not None or p.undo_b is not None:
        return "llama.cpp's Q/K row permutation is undone by the numpy pass"
    if p.values and p.a.numel == p.b.numel and not (DTYPES[p.a.dtype].has_stats and DTYPES[p.b.dtype].has_stats):
        return "a GGML block type without a native dequantizer (gguf-py's)"
    return None


def _task(p, fidx: dict[str, int]) -> tuple | None:
    """The spec row of DiffPair p ([file_a, offset_a, nbytes_a, dtype_a, file_b, ..., numel, step, mode]), or
    None when no byte needs reading (no values compared, and dtype, shape or size differ: not bytes_equal)."""
    a, b = p.a, p.b
    same_layout = a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)
    values = p.values and a.numel == b.numel
    if values:
        align = p.align
        step = max(align, CHUNK_ELEMENTS // align * align)
        da, db, numel = DTYPES[a.dtype].engine_id, DTYPES[b.dtype].engine_id, a.numel
        mode = MODE_VALUES | (MODE_BYTES if same_layout else 0)
    elif same_layout and a.nbytes == b.nbytes:
        da = db = DTYPES["U8"].engine_id            # compared as bytes
        numel, step, mode = a.nbytes, CHUNK_BYTES, MODE_BYTES
    else:
        return None
    for f in (a.file, b.file):
        fidx.setdefault(f, len(fidx))
    return (fidx[a.file], a.offset, a.nbytes, da, fidx[b.file], b.offset, b.nbytes, db, numel, step, mode)


def run_native_diff(core, pairs: Sequence, threads: int | None = None, progress=None) -> tuple[list[dict], dict]:
    """(numpy_diff.run_diff's result per pair, what the run used) for pairs that numpy_reason accepts."""
    fidx: dict[str, int] = {}
    rows, where = [], []
    out: list[dict] = [{"bytes_equal": False} for _ in pairs]
    for i, p in enumerate(pairs):
        t = _task(p, fidx)
        if t is not None:
            rows.append(t)
            where.append(i)
    if not rows:
        return out, {}
    spec = np.array(rows, dtype=np.int64).reshape(len(rows), 11)
    rec = core.run_diff(list(fidx), spec, int(threads or 0), progress)
    for row, i in enumerate(where):
        r: dict = {"bytes_equal": bool(rec["bytes_equal"][row])}
        if rec["has_values"][row]:
            n, nonfinite, changed, nf_changed = (int(x) for x in rec["counts"][row])
            sse, a2, b2, ab, mx, sabs = (float(x) for x in rec["sums"][row])
            r["sums"] = {"n": n, "nonfinite": nonfinite, "sse": sse, "sum_w2": a2, "sum_q2": b2, "sum_wq": ab,
                         "max_abs_err": mx, "clipped": 0, "scale_clamped": 0, "sum_abs": sabs, "changed": changed,
                         "nonfinite_changed": nf_changed}
            delta = to_stats(rec["delta"], row, "F64", False)
            delta.pop("quantiles")
            r["delta"] = delta
        out[i] = r
    info = {"isa": rec["isa"], "threads": rec["threads"], "pieces": rec["pieces"], "reread_pieces": rec["reread"]}
    return out, info
