"""Turns the fixed-layout result arrays of the native engines (paramkit._core, paramkit._cuda) into
the stats dicts of paramkit.stats, and builds their task spec; shared by the cpu and cuda backends."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..dtypes import DTYPES
from ..materialize import reads_in_place
from ..stats import HISTOGRAM_BINS, QUANTILE_KEYS
from ..table import TensorInfo


def task_spec(tensors: Sequence[TensorInfo], masks: Sequence[int] | None = None, plan=None,
              only: Sequence[int] | None = None) -> tuple[list[str], np.ndarray, list[int], list[tuple]]:
    """Files, the (n, 9) int64 engine spec [file, offset, nbytes, numel, dtype id, quant mask,
    row length, channel length, piece multiple] of the tensors that have statistics (or of the
    indices in `only`), their positions in `tensors`, and the layouts of the rows that are views of a stored
    member (the `views` argument of the engines' run: see view_layout). A tensor with any other layout
    must have been made plain first (paramkit.materialize.plain_tensors): ValueError."""
    files: list[str] = []
    fidx: dict[str, int] = {}
    rows, where, views = [], [], []
    for i in (range(len(tensors)) if only is None else only):
        t = tensors[i]
        d = DTYPES[t.dtype]
        if not d.has_stats:
            continue
        if t.file not in fidx:
            fidx[t.file] = len(files)
            files.append(t.file)
        mask = int(masks[i]) if masks is not None else 0
        row, chan, pm = _quant_lengths(t, mask, plan)
        if t.layout is not None and t.nbytes:   # an empty tensor reads nothing
            views.append(view_layout(len(rows), t))
        rows.append((fidx[t.file], t.offset, t.nbytes, t.numel, d.engine_id, mask, row, chan, pm))
        where.append(i)
    spec = np.array(rows, dtype=np.int64).reshape(len(rows), 9)
    return files, spec, where, views


def view_layout(row: int, t: TensorInfo) -> tuple:
    """The engines' description of tensor t's ViewLayout (cpp/include/paramkit/read_plan.hpp ReadLayout), for
    task row `row`: (row, storage offset, storage bytes, element offset, big-endian, shape, strides)."""
    if not reads_in_place(t):
        raise ValueError(f"{t.file}: tensor {t.name!r} is in a {t.layout.blob.compression} zip member: the "
                         "engines read it from its plain copy (paramkit.materialize.plain_tensors)")
    lay = t.layout
    return (row, lay.blob.offset, lay.blob.nbytes, lay.element_offset, lay.byteorder == ">",
            list(t.shape), list(lay.strides))


def _quant_lengths(t: TensorInfo, mask: int, plan) -> tuple[int, int, int]:
    """(row length, channel length, piece multiple) of tensor t for the engine's schemes of `mask`:
    the row_len of Scheme.rows_view of its row-group schemes and of int8_channel; 1 for what the
    engine does not use (no scheme of that kind, no quantization, or an empty tensor, whose
    dimensions may exceed int64)."""
    row = chan = 1
    if plan is None or not mask or t.numel == 0:
        return row, chan, 1
    shape = tuple(t.shape)
    for k, s in enumerate(plan.schemes):
        if mask >> k & 1:
            if s.granularity == "row":
                chan = s.rows_view(shape)[1]
            elif s.granularity in ("row_group", "ggml_block"):
                row = s.rows_view(shape)[1]
    return row, chan, plan.piece_multiple(shape, mask)


SUM_FIELDS = ("sse", "sum_w2", "sum_q2", "sum_wq", "max_abs_err", "n", "nonfinite", "clipped", "scale_clamped")


def quant_sums(rec: dict, row: int, k: int) -> dict:
    """Error sums of scheme k for row `row` of a native result."""
    v = rec["quant"][row, k]
    return {f: (int(x) if f in ("n", "nonfinite", "clipped", "scale_clamped") else float(x))
            for f, x in zip(SUM_FIELDS, v)}


def _num(v: float):
    return None if math.isnan(v) else float(v)


def to_stats(rec: dict, row: int, dtype: str, quantiles: bool) -> dict:
    """One tensor's stats dict from row `row` of a native result."""
    d = DTYPES[dtype]
    numel, nan, posinf, neginf, zeros, sub, nonnan = (int(x) for x in rec["counts"][row])
    nfinite, mean, std, l2 = (float(x) for x in rec["moments"][row])
    if nonnan == 0:
        mn = mx = am = None
    elif d.kind in ("float", "block"):   # block: the dequantized float32 values
        mn, mx, am = (float(x) for x in rec["fext"][row])
    elif d.kind == "int":
        mn, mx = (int(x) for x in rec["iext"][row])
        am = int(rec["uext"][row][2])
    else:  # uint, bool
        mn, mx, am = (int(x) for x in rec["uext"][row])
    q = None
    if quantiles:
        exact_int = d.kind in ("int", "uint", "bool") and d.bits <= 16
        vals = rec["quantiles"][row]
        q = {}
        for k, v in zip(QUANTILE_KEYS, vals):
            v = float(v)
            q[k] = None if (nonnan == 0 or math.isnan(v)) else (int(v) if exact_int else v)
    return {
        "min": mn, "max": mx,
        "mean": _num(mean) if nfinite > 0 else None,
        "std": _num(std) if nfinite > 0 else None,
        "absmax": am, "l2": float(l2),
        "zeros": zeros, "nan": nan, "posinf": posinf, "neginf": neginf, "subnormal": sub,
        "quantiles": q,
    }


def histograms(rec: dict) -> list[dict | None]:
    """Each row's compact histogram (paramkit.stats) of a native result, built in bulk: None where the engine made
    none (quantiles off); counts are views of one (n, HISTOGRAM_BINS) int64 array."""
    counts = rec["hist_counts"].astype(np.int64)
    assert counts.shape[1] == HISTOGRAM_BINS, counts.shape
    return [{"lo": None if lo != lo else lo, "hi": None if hi != hi else hi, "counts": c, "nonfinite": nf,
             "exact": exact} if present else None
            for c, (lo, hi), nf, (present, exact) in zip(counts, rec["hist_range"].tolist(),
                                                         rec["hist_nonfinite"].tolist(), rec["hist_flags"].tolist())]
