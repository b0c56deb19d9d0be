"""Turns the fixed-layout result arrays of the native engines (paramkit._core, paramkit._cuda) into
the stats dicts of paramkit.stats, and builds their task spec; shared by the cpu and cuda backends."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..dtypes import DTYPES
from ..stats import QUANTILE_KEYS
from ..table import TensorInfo


def task_spec(tensors: Sequence[TensorInfo]) -> tuple[list[str], np.ndarray, list[int]]:
    """Files, the (n, 5) int64 spec [file, offset, nbytes, numel, dtype id] of the tensors that have
    statistics, and their positions in `tensors`."""
    files: list[str] = []
    fidx: dict[str, int] = {}
    rows, where = [], []
    for i, t in enumerate(tensors):
        d = DTYPES[t.dtype]
        if not d.has_stats:
            continue
        if t.file not in fidx:
            fidx[t.file] = len(files)
            files.append(t.file)
        rows.append((fidx[t.file], t.offset, t.nbytes, t.numel, d.engine_id))
        where.append(i)
    spec = np.array(rows, dtype=np.int64).reshape(len(rows), 5)
    return files, spec, where


def _num(v: float):
    return None if math.isnan(v) else float(v)


def to_stats(rec: dict, row: int, dtype: str, quantiles: bool) -> dict:
    """One tensor's stats dict from row `row` of a native result."""
    d = DTYPES[dtype]
    numel, nan, posinf, neginf, zeros, sub, nonnan = (int(x) for x in rec["counts"][row])
    nfinite, mean, std, l2 = (float(x) for x in rec["moments"][row])
    if nonnan == 0:
        mn = mx = am = None
    elif d.kind == "float":
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
