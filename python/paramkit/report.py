"""ScanReport: the result of paramkit.scan — plain dataclasses with a versioned dict/JSON schema
(README "Report schema"), a DataFrame view, model-level aggregates and the deployment plan."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ._gcpause import gc_paused
from .table import TensorColumns, record_maker

SCHEMA_VERSION = 1


@dataclass
class TensorReport:
    name: str
    dtype: str
    shape: tuple[int, ...]
    numel: int
    nbytes: int
    role: str
    logical_numel: int
    file: str
    stats: dict | None = None
    quant: dict | None = None     # {scheme id: error record}, None when not quantized
    # the compact histogram of the statistics pass (paramkit.stats: "lo", "hi", "counts" (int64 array),
    # "nonfinite", "exact"); None without statistics or with quantiles=False. Not part of ==: a numpy array
    # in a dict has no truth value (compare histograms with numpy.array_equal)
    histogram: dict | None = field(default=None, compare=False)

    def to_dict(self, histograms: bool = False) -> dict:
        """The tensor's JSON record; histograms=True adds "histogram" (counts as a list)."""
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "numel": self.numel,
             "nbytes": self.nbytes, "role": self.role, "stats": self.stats, "quant": self.quant}
        if self.logical_numel != self.numel:
            d["logical_numel"] = self.logical_numel
        if histograms:
            h = self.histogram
            d["histogram"] = None if h is None else {**h, "counts": [int(c) for c in h["counts"]]}
        return d


_make_reports = record_maker(TensorReport, ("name", "dtype", "shape", "numel", "nbytes", "role", "logical_numel", "file",
                                            "stats", "quant", "histogram"))


def tensor_reports(columns: TensorColumns, roles, stats: list, quant: list | None = None,
                   histograms: list | None = None) -> list[TensorReport]:
    """One TensorReport per tensor of `columns` (a TensorTable's), with its counting role (`roles`: the
    counting's RoleColumns), its statistics, its quantization records and its compact histogram (None: none
    for any tensor), built from the columns in bulk."""
    from .counting.roles import ROLES
    n = len(columns)
    with gc_paused():   # two acyclic objects per tensor
        return _make_reports(columns.names, columns.dtypes(), columns.shapes(), columns.numel.tolist(),
                             columns.nbytes.tolist(), list(map(ROLES.__getitem__, roles.code.tolist())),
                             roles.logical.tolist(), columns.files(), stats, [None] * n if quant is None else quant,
                             [None] * n if histograms is None else histograms)


def aggregate(tensors: list[TensorReport], counted=None) -> dict | None:
    """Model-level statistics over the parameter tensors that have statistics, each tensor once (`counted`:
    per tensor whether counting counts it; a tied duplicate, the same values saved under a second name, is
    not): exact counts and extremes; mean/std merged with Chan's formula and l2 = sqrt(sum of squared l2), in
    float64 held scaled by powers of two and saturated as the per-tensor statistics are (ScaledMoments: values
    near DBL_MAX give DBL_MAX or Inf, never an OverflowError)."""
    from .backends.numpy_backend import ScaledMoments
    if counted is None:
        counted = [True] * len(tensors)
    rows = [t for t, c in zip(tensors, counted) if c and t.role == "parameter" and t.stats is not None]
    if not rows:
        return None
    agg: dict[str, Any] = {"tensors": len(rows), "numel": 0, "nan": 0, "posinf": 0, "neginf": 0,
                           "zeros": 0, "subnormal": 0}
    mn = mx = am = None
    moments = ScaledMoments()
    for t in rows:
        s = t.stats
        agg["numel"] += t.numel
        for k in ("nan", "posinf", "neginf", "zeros", "subnormal"):
            agg[k] += s[k]
        if s["min"] is not None:
            mn = s["min"] if mn is None else min(mn, s["min"])
            mx = s["max"] if mx is None else max(mx, s["max"])
            am = s["absmax"] if am is None else max(am, s["absmax"])
        nf = t.numel - s["nan"] - s["posinf"] - s["neginf"]
        if nf > 0 and s["mean"] is not None:
            moments.merge_stats(nf, float(s["mean"]), float(s["std"]), float(s["l2"]))
    mean, std, l2 = moments.result()
    agg.update({"min": mn, "max": mx, "absmax": am, "mean": mean, "std": std, "l2": l2,
                "sparsity": agg["zeros"] / agg["numel"] if agg["numel"] else None})
    return agg


def _json_safe(x):
    """Strict JSON: non-finite floats become the strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


BLOCK_QUANT_NOTE = ("these tensors are stored GGML block-quantized: the simulated schemes quantize their "
                    "dequantized float32 values, and their errors are against those values, not the original weights")


class Deferred:
    """A value made on first use: ``make()``, called once (ScanReport.tensors of a header-only scan)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]):
        self.make = make


class _MadeOnFirstUse:
    """A dataclass field that may be assigned a Deferred: the first read makes and keeps its value."""

    def __set_name__(self, owner, name: str) -> None:
        self._slot = "_" + name

    def __get__(self, obj, objtype=None):
        if obj is None:
            raise AttributeError(self._slot)    # dataclasses: a field without a default
        v = obj.__dict__[self._slot]
        if type(v) is Deferred:
            v = obj.__dict__[self._slot] = v.make()
        return v

    def __set__(self, obj, value) -> None:
        obj.__dict__[self._slot] = value


@dataclass
class ScanReport:
    path: str
    format: str
    backend: str | None           # engine that computed the statistics (None: stats=False)
    files: list[str]
    counting: Any                 # paramkit.counting.Counting
    tensors: list[TensorReport] = _MadeOnFirstUse()   # or a Deferred making them
    metadata: dict[str, str]
    index_metadata: dict | None
    config: dict | None
    unreferenced_files: list[str]
    options: dict
    timing: dict
    aggregates: dict | None = None
    engine_info: dict = field(default_factory=dict)
    quant_plan: Any = None        # paramkit.quant.plan.QuantPlan of the scan, or None
    ignored_files: list[dict] = field(default_factory=list)   # {"file", "reason"}: weight files not used
    transfer: dict | None = None  # remote scans: requests, bytes, retries, files (None for local files)

    def quantized_block_types(self) -> dict[str, dict]:
        """{GGML block type: {"tensors", "elements", "bits_per_weight"}} of the tensors the quant plan
        quantizes that are stored block-quantized (the schemes took their dequantized values)."""
        from .dtypes import DTYPES
        out: dict[str, dict] = {}
        for t, m in zip(self.tensors, self.quant_plan.masks):
            d = DTYPES.get(t.dtype)
            if m and d is not None and d.kind == "block":
                e = out.setdefault(t.dtype, {"tensors": 0, "elements": 0, "bits_per_weight": d.bits_per_weight})
                e["tensors"] += 1
                e["elements"] += t.numel
        return dict(sorted(out.items()))

    def quant_summary(self) -> list[dict]:
        """One row per scheme: bits/weight (scales and zero points included, over the quantized
        tensors), the whole model's size under the scheme (unquantized tensors at their stored
        size), element-weighted error (merged sums: mse, rmse, rel_err, sqnr_db, cosine,
        max_abs_err, clipped) and the ten worst tensors by SQNR. Empty without scan(quant=...)."""
        from .quant import empty_error_sums, finalize_error, merge_error
        if self.quant_plan is None:
            return []
        rows = []
        for s in self.quant_plan.schemes:
            sums = empty_error_sums()
            qbytes = numel = count = 0
            other = 0
            worst = []
            for t in self.tensors:
                rec = (t.quant or {}).get(s.id)
                if rec is None or "not_applicable" in rec:
                    other += t.nbytes
                    continue
                sums = merge_error(sums, rec)
                qbytes += rec["quantized_nbytes"] or 0
                numel += t.numel
                count += 1
                worst.append({"name": t.name, "sqnr_db": rec["sqnr_db"], "rel_err": rec["rel_err"]})
            rec = finalize_error(sums)
            worst.sort(key=lambda w: (w["sqnr_db"] is None, w["sqnr_db"] if w["sqnr_db"] is not None else 0.0))
            total = qbytes + other
            rows.append({"scheme": s.id, "bits_per_weight": 8.0 * qbytes / numel if numel else s.bits_per_weight(),
                         "quantized_bytes": total, "original_bytes": self.bytes_total,
                         "size_ratio": total / self.bytes_total if self.bytes_total else None,
                         "tensors": count, "quantized_elements": numel,
                         **{k: rec[k] for k in ("n", "mse", "rmse", "rel_err", "sqnr_db", "cosine",
                                                "max_abs_err", "clipped", "scale_clamped", "nonfinite")},
                         "worst": worst[:10]})
        return rows

    # headline numbers
    @property
    def total_params(self) -> int:
        return self.counting.total_params

    @property
    def total_elements(self) -> int:
        return self.counting.total_elements

    @property
    def buffer_elements(self) -> int:
        return self.counting.buffer_elements

    @property
    def elements_by_dtype(self) -> dict[str, int]:
        return dict(self.counting.elements_by_dtype)

    @property
    def bytes_total(self) -> int:
        return self.counting.bytes_total

    @property
    def groups(self) -> dict:
        return self.counting.groups

    def tensor(self, name: str) -> TensorReport:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def to_dict(self, histograms: bool = False) -> dict:
        """The report as the versioned schema's dict; histograms=True adds each tensor's compact histogram
        ("histogram", paramkit.stats; None where there is none), left out by default (64 counts a tensor)."""
        from . import __version__
        c = self.counting.to_dict(tensors=False)
        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "paramkit_version": __version__,
            "path": self.path,
            "format": self.format,
            "backend": self.backend,
            "files": list(self.files),
            "options": dict(self.options),
            "total_params": self.total_params,
            "total_elements": self.total_elements,
            "buffer_elements": self.buffer_elements,
            "elements_by_dtype": self.elements_by_dtype,
            "bytes_total": self.bytes_total,
            "groups": self.groups,
            "metadata": {"file": dict(self.metadata), "index": self.index_metadata,
                         "declared": c.get("declared")},
        }
        for k, v in c.items():   # the rest of the counting (roles, quantization, ties, MoE, ...)
            if k not in d and k not in ("path", "format", "declared"):
                d[k] = v
        d["aggregates"] = self.aggregates
        if self.quant_plan is not None:
            d["quant"] = {"schemes": [x.id for x in self.quant_plan.schemes], "policy": self.quant_plan.policy,
                          "summary": self.quant_summary()}
            stored = self.quantized_block_types()
            if stored:
                d["quant"]["block_tensors"] = {"note": BLOCK_QUANT_NOTE, "stored": stored}
        d["unreferenced_files"] = list(self.unreferenced_files)
        d["ignored_files"] = [dict(f) for f in self.ignored_files]
        d["timing"] = dict(self.timing)
        d["engine"] = dict(self.engine_info)
        if self.transfer is not None:
            d["transfer"] = dict(self.transfer)
        with gc_paused():   # 100k acyclic dicts for an MoE header: generational passes would double the time
            d["tensors"] = [t.to_dict(histograms) for t in self.tensors]
        return d

    def to_json(self, indent: int | None = None, histograms: bool = False) -> str:
        """Strict JSON (non-finite floats as "NaN"/"Infinity"/"-Infinity" strings); histograms as for to_dict."""
        d = self.to_dict(histograms)
        try:   # most reports hold no non-finite float: then _json_safe (a Python walk of every value) changes nothing
            return json.dumps(d, indent=indent, allow_nan=False)
        except ValueError:
            return json.dumps(_json_safe(d), indent=indent, allow_nan=False)

    def to_dataframe(self):
        """One row per tensor, statistics flattened into columns (quantiles as q0.001 ...)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("ScanReport.to_dataframe() needs pandas: pip install pandas") from None
        rows = []
        for t in self.tensors:
            r = {"name": t.name, "dtype": t.dtype, "shape": tuple(t.shape), "numel": t.numel,
                 "nbytes": t.nbytes, "role": t.role, "logical_numel": t.logical_numel}
            if t.stats is not None:
                for k, v in t.stats.items():
                    if k == "quantiles":
                        for qk, qv in (v or {}).items():
                            r[f"q{qk}"] = qv
                    else:
                        r[k] = v
            rows.append(r)
        return pd.DataFrame(rows)

    def to_html(self, path=None, *, histograms: int = 12, context: int = 8192) -> str:
        """A self-contained HTML page of this report (inline CSS and SVG charts, no script, no network):
        summary, parameters by module and layer, per-layer absmax / std / zeros, value histograms of up to
        `histograms` tensors (the compact histograms of the statistics pass), SQNR per layer and scheme (with scan(quant=...)), the
        outlier table and the plan (KV cache for `context` tokens). Written to `path` (atomically) when
        given; returns the HTML. Needs matplotlib: pip install 'paramkit[report]'."""
        from .html_report import scan_html
        from ._atomic import written
        return written(path, scan_html(self, histograms=histograms, context=context))

    def plan(self, context: int = 8192, batch: int = 1, gpus=None, **kw):
        """What it takes to run or train this model (see paramkit.planning.plan)."""
        from .planning import plan
        return plan(self.counting, self.config, context=context, batch=batch, gpus=gpus, **kw)

    def __repr__(self) -> str:
        return (f"ScanReport(path={self.path!r}, format={self.format!r}, total_params={self.total_params:,}, "
                f"tensors={len(self.tensors)}, backend={self.backend!r})")
