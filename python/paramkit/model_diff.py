"""paramkit.diff(a, b): what differs between two models' weights, any formats, tensor by tensor (status and, for
tensors whose values differ, error metrics and the statistics of A - B from one streaming pass of an engine),
with model-level aggregates; the DiffReport it returns and its dict/JSON form."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .quant.numpy_quant import finalize_error

DIFF_SCHEMA_VERSION = 1
#: per-tensor statuses, in the order reports count them
STATUSES = ("identical", "changed", "dtype_changed", "reshaped", "added", "removed")
#: the metric keys of a compared tensor (None where they are not computed)
METRIC_KEYS = ("max_abs_diff", "mean_abs_diff", "rel_l2", "cosine", "sqnr_db", "frac_changed")
TOP_CHANGED = 10


@dataclass
class TensorDiff:
    """One tensor of the diff: A's name, dtype and shape (B's for an added tensor), B's where they differ,
    the status, the conversions applied to match it (cross-format), and for compared values the metrics,
    the counts behind them and the statistics of A - B (`delta`)."""
    name: str
    status: str
    dtype: str
    shape: tuple[int, ...]
    numel: int
    name_b: str | None = None
    dtype_b: str | None = None
    shape_b: tuple[int, ...] | None = None
    conversions: list[str] = field(default_factory=list)
    metrics: dict | None = None        # METRIC_KEYS plus elements_compared / _changed, nonfinite_changed
    delta: dict | None = None
    note: str | None = None            # why values were not compared
    sums: dict | None = None           # the mergeable sums behind the metrics (not in to_dict)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "status": self.status, "dtype": self.dtype,
                             "shape": list(self.shape), "numel": self.numel}
        if self.name_b is not None and self.name_b != self.name:
            d["name_b"] = self.name_b
        if self.dtype_b is not None and self.dtype_b != self.dtype:
            d["dtype_b"] = self.dtype_b
        if self.shape_b is not None and tuple(self.shape_b) != tuple(self.shape):
            d["shape_b"] = list(self.shape_b)
        if self.conversions:
            d["conversions"] = list(self.conversions)
        m = self.metrics or {}
        d.update({k: m.get(k) for k in METRIC_KEYS})
        for k in ("elements_compared", "elements_changed", "nonfinite_changed"):
            if k in m:
                d[k] = m[k]
        d["delta"] = self.delta
        if self.note:
            d["note"] = self.note
        return d


def metrics_of(sums: dict, numel: int) -> dict:
    """The metrics of merged diff sums (backends/numpy_diff.py) over `numel` positions, through
    paramkit.quant.finalize_error (the definitions and 0/0 conventions of quant_error): rel_l2 = rel_err,
    sqnr_db, cosine; max_abs_diff = max |A-B| and mean_abs_diff = sum |A-B| / n over the n positions where
    both are finite; frac_changed = positions whose values differ / numel."""
    e = finalize_error(sums)
    n = sums["n"]
    return {"max_abs_diff": e["max_abs_err"] if n else None, "mean_abs_diff": sums["sum_abs"] / n if n else None,
            "rel_l2": e["rel_err"], "cosine": e["cosine"], "sqnr_db": e["sqnr_db"],
            "frac_changed": sums["changed"] / numel if numel else None,
            "elements_compared": n, "elements_changed": sums["changed"],
            "nonfinite_changed": sums["nonfinite_changed"]}


@dataclass
class DiffReport:
    a: str
    b: str
    format_a: str
    format_b: str
    backend: str | None            # the engine that computed the values (None when no data was compared)
    tensors: list[TensorDiff]
    aggregates: dict
    notes: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    engine_info: dict = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        """Every tensor identical (bit for bit, after the conversions listed) and none added or removed."""
        return self.aggregates["identical"]

    def by_status(self, status: str) -> list[TensorDiff]:
        return [t for t in self.tensors if t.status == status]

    def most_changed(self, n: int = TOP_CHANGED) -> list[TensorDiff]:
        """The n compared tensors with values that differ, largest rel_l2 first (ties: file order)."""
        have = [t for t in self.tensors if t.metrics and t.metrics["rel_l2"] is not None
                and t.metrics["elements_changed"]]
        return sorted(have, key=lambda t: -t.metrics["rel_l2"])[:n]

    def to_dict(self) -> dict:
        return {"schema_version": DIFF_SCHEMA_VERSION, "a": self.a, "b": self.b, "format_a": self.format_a,
                "format_b": self.format_b, "backend": self.backend, "identical": self.identical,
                "aggregates": self.aggregates,
                "most_changed": [{"name": t.name, "status": t.status, "rel_l2": t.metrics["rel_l2"],
                                  "sqnr_db": t.metrics["sqnr_db"]} for t in self.most_changed()],
                "notes": list(self.notes), "options": dict(self.options), "timing": dict(self.timing),
                "engine": dict(self.engine_info), "tensors": [t.to_dict() for t in self.tensors]}

    def to_html(self, path=None) -> str:
        """A self-contained HTML page of this diff (inline CSS and SVG, no script, no network): summary,
        rel_l2 / cosine / changed share per layer, the most changed tensors, added / removed / reshaped ones.
        Written to `path` (atomically) when given; returns the HTML. Needs pip install 'paramkit[report]'."""
        from .html_report import diff_html
        from ._atomic import written
        return written(path, diff_html(self))

    def to_json(self, indent: int | None = None) -> str:
        from .report import _json_safe
        return json.dumps(_json_safe(self.to_dict()), indent=indent, allow_nan=False)


def aggregate_diff(tensors: list[TensorDiff], params_a: int, params_b: int, n_a: int, n_b: int) -> dict:
    """Model-level figures: tensors per status, parameters (elements) of each side, elements whose values
    differ, elements of the tensors that are not identical, and the metrics of all compared tensors together
    (their sums merged: rel_l2 = ||A-B|| / ||A|| over all of them, ...)."""
    from .backends.numpy_diff import empty_sums, merge_sums
    counts = dict.fromkeys(STATUSES, 0)
    total = empty_sums()
    compared = elements = in_changed = 0
    for t in tensors:
        counts[t.status] += 1
        if t.status in ("changed", "dtype_changed", "reshaped"):
            in_changed += t.numel
        if t.sums is not None:
            total = merge_sums(total, t.sums)
            compared += 1
            elements += t.numel
    overall = metrics_of(total, elements)
    return {"counts": counts, "tensors_a": n_a, "tensors_b": n_b, "params_a": params_a, "params_b": params_b,
            "tensors_compared": compared, "params_changed": overall.pop("elements_changed"),
            "params_in_changed_tensors": in_changed, **overall,
            "identical": counts["identical"] == len(tensors)}


def _selector(tensors) -> Callable[[str], bool] | None:
    if tensors is None:
        return None
    if isinstance(tensors, str):
        from .api import tensors_regex
        rx = tensors_regex(tensors)
        return lambda name: rx.search(name) is not None
    if callable(tensors):
        return tensors
    raise TypeError("tensors must be None, a regex string or a callable(name) -> bool")


def _status(ta, tb, bytes_equal: bool) -> str:
    if tuple(ta.shape) != tuple(tb.shape):
        return "reshaped"
    if ta.dtype != tb.dtype:
        return "dtype_changed"
    return "identical" if bytes_equal else "changed"


def diff(a, b, *, backend: str = "auto", threads: int | None = None, progress=None, tensors=None) -> DiffReport:
    """Compare the weights of two models (any formats scan() reads: files, indexes, directories; a GGUF against a
    Hugging Face checkpoint through gguf's name map), tensor by tensor.

    Status per tensor: identical (same dtype, shape and bytes, after the conversions listed for it), changed
    (same dtype and shape, other bytes), dtype_changed, reshaped (another shape), added (only in B), removed
    (only in A). Where values are compared (changed, dtype_changed, reshaped with the same element count;
    row-major order), one streaming pass computes max_abs_diff, mean_abs_diff, rel_l2 = ||A-B||/||A||, cosine,
    sqnr_db = 10 log10(sum A^2 / sum (A-B)^2), frac_changed and delta (the statistics of A - B), all in
    float64; NaN rules in the README. tensors: a regex (re.search on either side's name) or a
    callable(name) -> bool: only those tensors are compared and reported. backend, threads, progress: as for
    scan(); the cpu engine's native pass computes it under cpu, cuda (delegated) and auto, the numpy pass under
    numpy and for the pairs the native one leaves to it (DiffReport.backend and engine_info say which).
    Raises FormatError on malformed input, OSError on I/O errors."""
    from .api import _describe
    from .backends import get_engine
    from .backends.numpy_diff import has_values
    from .diff_match import DiffPair, match_tensors
    from .formats import open_table
    from .materialize import plain_tensors
    from .progress import make_progress

    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError("threads must be a positive integer or None")
    chosen = _selector(tensors)
    t0 = time.perf_counter()
    ta, tb = open_table(os.fspath(a)), open_table(os.fspath(b))
    engine = get_engine(backend)
    m = match_tensors(ta, tb)
    infos_a, infos_b = ta.tensors, tb.tensors
    t_header = time.perf_counter()

    def keep(*names) -> bool:
        return chosen is None or any(chosen(n) for n in names)
    pairs = [(i, j, ua, ub, conv) for i, j, ua, ub, conv in m.pairs if keep(infos_a[i].name, infos_b[j].name)]
    removed = [i for i in m.removed if keep(infos_a[i].name)]
    added = [j for j in m.added if keep(infos_b[j].name)]
    if chosen is not None and not (pairs or removed or added):
        raise ValueError(f"tensors={tensors!r} matches none of the tensors of either model")

    work = []
    for i, j, ua, ub, _ in pairs:
        x, y = infos_a[i], infos_b[j]
        work.append(DiffPair(x, y, ua, ub, values=has_values(x.dtype) and has_values(y.dtype)))
    total = sum(p.a.nbytes + p.b.nbytes for p in work)
    cb, close = make_progress(progress, total, "diffing")
    try:
        with plain_tensors([p.a for p in work]) as pa, plain_tensors([p.b for p in work]) as pb:
            plain = [dataclasses.replace(p, a=x, b=y) for p, x, y in zip(work, pa, pb)]
            results = engine.run_diff(plain, threads=threads, progress=cb) if plain else []
    finally:
        close()
    t_data = time.perf_counter()

    out: list[TensorDiff] = []
    for (i, j, _, _, conv), p, r in zip(pairs, work, results):
        x, y = p.a, p.b
        td = TensorDiff(x.name, _status(x, y, r["bytes_equal"]), x.dtype, tuple(x.shape), x.numel,
                        name_b=y.name, dtype_b=y.dtype, shape_b=tuple(y.shape), conversions=conv)
        if "sums" in r:
            td.sums, td.delta = r["sums"], r["delta"]
            td.metrics = metrics_of(r["sums"], x.numel)
        elif td.status != "identical":
            td.note = ("values not compared: " + (f"no decoding for dtype {x.dtype if not p.values else y.dtype}"
                       if not p.values else f"{x.numel:,} elements against {y.numel:,}"))
        out.append(td)
    out += [TensorDiff(infos_a[i].name, "removed", infos_a[i].dtype, tuple(infos_a[i].shape), infos_a[i].numel)
            for i in removed]
    out += [TensorDiff(infos_b[j].name, "added", infos_b[j].dtype, tuple(infos_b[j].shape), infos_b[j].numel)
            for j in added]
    data_s = t_data - t_header
    timing = {"header_s": t_header - t0, "diff_s": data_s, "total_s": time.perf_counter() - t0,
              "data_bytes": total, "gb_per_s": total / data_s / 1e9 if total and data_s > 0 else None}
    agg = aggregate_diff(out, sum(t.numel for t in infos_a), sum(t.numel for t in infos_b), len(ta), len(tb))
    info = dict(getattr(engine, "last_run", {}) or {}) if work else {}
    return DiffReport(a=os.fspath(a), b=os.fspath(b), format_a=ta.format, format_b=tb.format,
                      backend=info.get("diff") if work else None, tensors=out, aggregates=agg, notes=m.notes,
                      options={"backend": backend, "threads": threads,
                               **({} if tensors is None else {"tensors": _describe(tensors)})},
                      timing=timing, engine_info=info)
