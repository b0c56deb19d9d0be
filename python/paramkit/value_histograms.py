"""Value histograms of a few chosen tensors for the HTML report: the tensors are read again through the read
layer (paramkit.quant.stream.read_values: every plain dtype and GGML block type, chunk by chunk, memory bounded
by one chunk), binned into equal-width bins over [min, max] of their finite values."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

BINS = 64
CHUNK_ELEMENTS = 1 << 21


def choose(tensors, n: int = 12) -> list:
    """Up to n parameter tensors with statistics worth a picture: the largest half of them by element count,
    the rest by absmax/std (the heaviest tails), file order kept among the chosen."""
    have = [t for t in tensors if t.stats and t.role == "parameter" and t.numel > 1 and t.stats.get("std")
            and t.stats.get("min") is not None]
    big = sorted(have, key=lambda t: -t.numel)[: (n + 1) // 2]
    seen = {id(t) for t in big}
    tails = [t for t in sorted(have, key=lambda t: -tail_ratio(t)) if id(t) not in seen][: n - len(big)]
    keep = seen | {id(t) for t in tails}
    return [t for t in tensors if id(t) in keep]


def tail_ratio(t) -> float:
    """absmax / std of a tensor's statistics (0 when either is missing or std is 0)."""
    s = t.stats or {}
    am, sd = s.get("absmax"), s.get("std")
    if am is None or not sd or not math.isfinite(float(am)):
        return 0.0
    return float(am) / float(sd)


def _range(t) -> tuple[float, float] | None:
    s = t.stats
    lo, hi = float(s["min"]), float(s["max"])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def histograms(path: str, chosen: Sequence, bins: int = BINS) -> dict[str, dict]:
    """{name: {"edges", "counts", "nonfinite"}} of the tensors `chosen` (TensorReports of a scan of `path`),
    `bins` equal-width bins over [min, max] from their statistics (tensors whose min or max is infinite are
    left out); values are read as float32 (F64 rounded), GGML block types dequantized."""
    from .formats import open_table
    from .materialize import plain_tensors
    from .quant.stream import read_values
    from .sources import open_source
    from .dtypes import DTYPES

    ranges = {t.name: r for t in chosen if (r := _range(t)) is not None}
    if not ranges:
        return {}
    infos = [t for t in open_table(path).tensors if t.name in ranges]
    out: dict[str, dict] = {}
    with plain_tensors(infos) as plain:
        for t in plain:
            lo, hi = ranges[t.name]
            counts = np.zeros(bins, dtype=np.int64)
            block = DTYPES[t.dtype].block
            step = max(block, CHUNK_ELEMENTS // block * block)
            nonfinite = 0
            with open_source(t.file) as src:
                for start in range(0, t.numel, step):
                    x = read_values(src, t, start, min(step, t.numel - start))
                    fin = np.isfinite(x)
                    nonfinite += int(x.size - np.count_nonzero(fin))
                    counts += np.histogram(x[fin], bins=bins, range=(lo, hi))[0]
            out[t.name] = {"edges": np.linspace(lo, hi, bins + 1).tolist(), "counts": counts.tolist(),
                           "nonfinite": nonfinite}
    return out
