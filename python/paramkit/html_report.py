"""The self-contained HTML reports of a scan (ScanReport.to_html, `paramkit report`) and of a diff
(DiffReport.to_html, `paramkit diff -o x.html`): one file with inline CSS and inline SVG charts
(paramkit.report_charts), no script, no external resource; every string from the files is escaped."""
from __future__ import annotations

import html
import math
import os
import re
from typing import Iterable, Sequence

from . import report_charts as charts
from .cli_render import fmt_value, human, percent
from .planning import fmt_bytes

#: the section ids and headings of a scan report, in page order
SCAN_SECTIONS = (("summary", "Summary"), ("parameters", "Parameters by module and layer"),
                 ("layers", "Per-layer statistics"), ("histograms", "Value histograms"),
                 ("quantization", "Quantization error"), ("outliers", "Outliers"), ("plan", "Deployment plan"))
DIFF_SECTIONS = (("summary", "Summary"), ("layers", "Change per layer"), ("most-changed", "Most changed tensors"),
                 ("structure", "Added, removed and reshaped tensors"))
OUTLIER_ROWS = 15
METADATA_ROWS = 30
MOST_CHANGED_ROWS = 20

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9;line-height:1.4}
header{background:#1f3a5f;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:22px}
header .path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;opacity:.9;word-break:break-all}
nav{padding:8px 32px;background:#e8ecf2;font-size:13px}nav a{margin-right:14px;color:#1f3a5f}
main{padding:8px 32px 32px;max-width:1200px}
section{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:12px 18px;margin:16px 0}
h2{font-size:17px;margin:4px 0 10px;color:#1f3a5f}h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px}
th,td{padding:3px 10px 3px 0;text-align:left;vertical-align:top;border-bottom:1px solid #eef0f4}
th{font-weight:600;color:#465063}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.name{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all;max-width:520px}
table.kv th{width:190px}
.grid{display:flex;flex-wrap:wrap;gap:10px}.grid figure{margin:0}
figure{margin:6px 0}svg{max-width:100%;height:auto}
.note{color:#6b7487;font-size:12.5px}.bad{color:#b3261e}.ok{color:#1e7b34}
footer{color:#6b7487;font-size:12px;padding:0 32px 24px}
"""


def e(x) -> str:
    """Any value as escaped HTML text (quotes too)."""
    return html.escape(str(x), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence], numeric: Sequence[bool] | None = None,
           name_cols: Sequence[int] = (), cls: str = "") -> str:
    numeric = numeric or [False] * len(headers)
    head = "".join(f'<th class="n">{e(h)}</th>' if n else f"<th>{e(h)}</th>" for h, n in zip(headers, numeric))
    body = []
    for r in rows:
        cells = []
        for i, (v, n) in enumerate(zip(r, numeric)):
            c = "n" if n else ("name" if i in name_cols else "")
            cells.append(f'<td class="{c}">{e(v)}</td>' if c else f"<td>{e(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _kv(rows: Sequence[tuple[str, object]]) -> str:
    return '<table class="kv"><tbody>' + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows) \
        + "</tbody></table>"


def _figure(svg: str) -> str:
    return f"<figure>{svg}</figure>"


def _note(text: str) -> str:
    return f'<p class="note">{e(text)}</p>'


def _page(title: str, subtitle: str, sections: Sequence[tuple[str, str]], bodies: dict[str, str], footer: str) -> str:
    nav = "".join(f'<a href="#{sid}">{e(h)}</a>' for sid, h in sections)
    secs = "".join(f'<section id="{sid}"><h2>{e(h)}</h2>{bodies[sid]}</section>' for sid, h in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{e(title)}</h1><div class=\"path\">{e(subtitle)}</div></header>"
            f"<nav>{nav}</nav><main>{secs}</main><footer>{e(footer)}</footer></body></html>\n")


def _fmt(v) -> str:
    return fmt_value(v) if not isinstance(v, float) or math.isfinite(v) else str(v)


def _shape(shape) -> str:
    return "×".join(map(str, shape)) or "scalar"


def natural_key(name: str):
    """Sort key that orders "blk.2" before "blk.10"."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


# ---- per-layer figures of a scan ----------------------------------------------------------------
def layer_table(r) -> tuple[list[str], dict[str, list]]:
    """(layer names in natural order, {layer: its parameter TensorReports}) of a ScanReport."""
    from .counting.roles import layer_of
    by: dict[str, list] = {}
    for t in r.tensors:
        if t.role != "parameter":
            continue
        lay = layer_of(t.name)
        if lay is not None:
            by.setdefault(lay, []).append(t)
    return sorted(by, key=natural_key), by


def layer_stats(tensors: Sequence) -> dict:
    """absmax (max), std (over all the layer's values, Chan-merged), share of zeros of the tensors with statistics."""
    from .backends.numpy_backend import ScaledMoments
    have = [t for t in tensors if t.stats is not None and t.stats.get("absmax") is not None]
    if not have:
        return {"absmax": None, "std": None, "zeros": None}
    m = ScaledMoments()
    for t in have:
        s = t.stats
        nf = t.numel - s["nan"] - s["posinf"] - s["neginf"]
        if nf > 0 and s["mean"] is not None:
            m.merge_stats(nf, float(s["mean"]), float(s["std"]), float(s["l2"]))
    numel = sum(t.numel for t in have)
    return {"absmax": max(float(t.stats["absmax"]) for t in have), "std": m.result()[1],
            "zeros": sum(t.stats["zeros"] for t in have) / numel if numel else None}


def layer_sqnr(tensors: Sequence, scheme: str) -> float | None:
    """SQNR (dB) of the layer's quantized tensors under `scheme`, their error sums merged."""
    from .quant import empty_error_sums, finalize_error, merge_error
    sums, any_ = empty_error_sums(), False
    for t in tensors:
        rec = (t.quant or {}).get(scheme)
        if rec is not None and "not_applicable" not in rec:
            sums, any_ = merge_error(sums, rec), True
    return finalize_error(sums)["sqnr_db"] if any_ else None


# ---- the scan report ----------------------------------------------------------------------------
def _summary(r) -> str:
    d = r.to_dict()
    c = r.counting
    rows: list[tuple[str, object]] = [("file", r.path + ("" if len(r.files) == 1 else f" ({len(r.files)} files)")),
                                      ("format", r.format),
                                      ("parameters", f"{r.total_params:,} ({human(r.total_params)})")]
    moe = d.get("moe") or {}
    if moe.get("detected"):
        rows.append(("MoE", f"{moe.get('experts', '?')} experts, {moe.get('active_experts', moe.get('top_k', '?'))}"
                            " active per token"))
    ap = getattr(c, "active_params", None)
    if ap is not None:
        rows.append(("active parameters", f"{ap:,} ({human(ap)}): {d.get('active_params_reason', '')}"))
    rows += [("buffers", f"{r.buffer_elements:,} elements"), ("tensors", f"{len(r.tensors):,}"),
             ("size", fmt_bytes(r.bytes_total))]
    ties = d.get("ties") or {}
    if ties.get("status"):
        rows.append(("tied embeddings", ties["status"]))
    g = getattr(c, "gguf", None)
    if g:
        rows.append(("gguf", f"v{g['version']}, {g['file_type'] or 'file type not given'}"
                     + (f", {g['bits_per_weight']:.2f} bits/weight" if g["bits_per_weight"] else "")))
    if r.backend:
        t = r.timing
        rows.append(("statistics", f"{r.backend} backend, {t['stats_s']:.2f} s"))
    out = [_kv(rows)]
    tot = max(r.total_elements, 1)
    out.append("<h3>Stored elements by dtype</h3>")
    out.append(_table(["dtype", "elements", "share"],
                      [[k, f"{v:,}", percent(v, tot)] for k, v in sorted(r.elements_by_dtype.items(),
                                                                          key=lambda kv: -kv[1])],
                      [False, True, True]))
    roles = d.get("tensors_by_role") or {}
    by_bytes = d.get("bytes_by_role") or {}
    out.append("<h3>Tensors by role</h3>")
    out.append(_table(["role", "tensors", "bytes"], [[k, f"{v:,}", fmt_bytes(by_bytes.get(k, 0))]
                                                    for k, v in roles.items() if v], [False, True, True]))
    a = r.aggregates
    if a:
        out.append("<h3>All parameters</h3>")
        out.append(_table(["min", "max", "mean", "std", "absmax", "zeros", "NaN", "Inf"],
                          [[_fmt(a["min"]), _fmt(a["max"]), _fmt(a["mean"]), _fmt(a["std"]), _fmt(a["absmax"]),
                            f"{a['zeros']:,} ({percent(a['zeros'], a['numel'])})", f"{a['nan']:,}",
                            f"{a['posinf'] + a['neginf']:,}"]], [True] * 8))
    meta = dict(r.metadata or {})
    if meta:
        out.append("<h3>File metadata</h3>")
        items = list(meta.items())
        out.append(_table(["key", "value"], [[k, _clip(v)] for k, v in items[:METADATA_ROWS]], name_cols=(0, 1)))
        if len(items) > METADATA_ROWS:
            out.append(_note(f"… {len(items) - METADATA_ROWS:,} more keys (paramkit scan --json lists them all)"))
    for n in d.get("notes") or []:
        out.append(_note(n))
    return "".join(out)


def _clip(v, n: int = 240) -> str:
    if isinstance(v, (list, tuple)) and len(v) > 8:   # GGUF token tables: 262k entries
        return f"{len(v):,} items: " + _clip(list(v[:8]), n)[:-1] + ", …]"
    text = v if isinstance(v, str) else repr(v)
    return text if len(text) <= n else text[:n] + f"… ({len(text):,} characters)"


def _parameters(r, layers: list[str]) -> str:
    out = []
    mods = r.groups.get("modules") or {}
    if mods:
        items = sorted(mods.items(), key=lambda kv: -kv[1].get("params", 0))
        out.append(_figure(charts.hbars([k for k, _ in items], [v.get("params", 0) for _, v in items],
                                        title="parameters by top-level module", xlabel="parameters")))
    lays = r.groups.get("layers") or {}
    if lays:
        names = sorted(lays, key=natural_key)
        out.append(_figure(charts.bars(names, [lays[k].get("params", 0) for k in names],
                                       title=f"parameters per layer ({len(names)} layers)", ylabel="parameters")))
    if mods:
        out.append(_table(["module", "parameters", "tensors", "bytes"],
                          [[k, f"{v.get('params', 0):,}", f"{v.get('tensors', 0):,}", fmt_bytes(v.get("bytes", 0))]
                           for k, v in mods.items()], [False, True, True, True], name_cols=(0,)))
    return "".join(out) or _note("no modules or layers found in the tensor names")


def _layers(r, layers: list[str], by: dict) -> str:
    if not r.backend:
        return _note("no statistics: the scan read the headers only")
    if not layers:
        return _note("no numbered layers in the tensor names")
    st = [layer_stats(by[k]) for k in layers]
    out = [_figure(charts.layer_lines(layers, {"absmax": [s["absmax"] for s in st]},
                                      title="absmax per layer (max over the layer's parameter tensors)",
                                      ylabel="absmax", log=True)),
           _figure(charts.layer_lines(layers, {"std": [s["std"] for s in st]},
                                      title="std per layer (all the layer's parameter values)", ylabel="std")),
           _figure(charts.layer_lines(layers, {"zeros": [None if s["zeros"] is None else 100 * s["zeros"] for s in st]},
                                      title="zeros per layer (% of the layer's parameter values)", ylabel="% zeros",
                                      floor0=True))]
    return '<div class="grid">' + "".join(out) + "</div>"


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


def histogram_bars(h: dict) -> tuple[list[float], list[int]]:
    """(bin edges, counts) to draw a compact histogram (paramkit.stats): its HISTOGRAM_BINS bins over [lo, hi];
    one bar around the value when lo == hi (all its finite elements are in bin 0)."""
    from .stats import HISTOGRAM_BINS as B
    lo, hi, counts = h["lo"], h["hi"], [int(c) for c in h["counts"]]
    if hi > lo:
        return [lo + (hi - lo) * k / B for k in range(B + 1)], counts
    w = 0.5 if lo - 0.5 != lo else abs(lo) / 128
    return [lo - w, lo + w], counts[:1]


def _histograms(r, n: int) -> str:
    from .stats import HISTOGRAM_BINS
    if not r.backend:
        return _note("no statistics: the scan read the headers only")
    if r.options.get("quantiles") is False:
        return _note("no histograms: the scan ran with quantiles=False (the engines derive them from the "
                     "quantiles' histogram)")
    chosen = [t for t in choose(r.tensors, n) if t.histogram is not None and t.histogram["lo"] is not None]
    figs = []
    for t in chosen:
        h = t.histogram
        extra = f", {h['nonfinite']:,} non-finite left out" if h["nonfinite"] else ""
        res = "exact bins" if h["exact"] else "bf16-resolution bins"
        edges, counts = histogram_bars(h)
        figs.append(_figure(charts.histogram(edges, counts, title=t.name,
                                             subtitle=f"{t.dtype} {_shape(t.shape)}, absmax/std "
                                                      f"{t.stats['absmax'] / t.stats['std']:.1f}, {res}{extra}")))
    if not figs:
        return _note("no tensor with finite statistics to draw")
    return (_note(f"{len(figs)} tensors: the largest, and those with the heaviest tails (absmax/std); "
                  f"{HISTOGRAM_BINS} equal-width bins over [min, max] of the finite values, counts on a log scale, "
                  "from the engine's statistics pass. The bins are exact for 8- and 16-bit dtypes (every element "
                  "binned at its own value); for 32/64-bit dtypes and GGML block types each value is binned at "
                  "its bfloat16 truncation, so counts are exact only to bf16 resolution near the bin edges")
            + '<div class="grid">' + "".join(figs) + "</div>")


def _quantization(r, layers: list[str], by: dict) -> str:
    rows = r.quant_summary()
    if not rows:
        return _note("no quantization simulated (the report runs the default schemes unless --no-quant / quant=None)")
    out = [_table(["scheme", "bits/weight", "model size", "size ratio", "SQNR dB", "rel. error", "cosine", "tensors"],
                  [[q["scheme"], f"{q['bits_per_weight']:.3f}", fmt_bytes(q["quantized_bytes"]),
                    "-" if q["size_ratio"] is None else f"{q['size_ratio']:.3f}", _db(q["sqnr_db"]),
                    _fmt(q["rel_err"]), "-" if q["cosine"] is None else f"{q['cosine']:.6f}", f"{q['tensors']:,}"]
                   for q in rows], [False] + [True] * 7)]
    if layers:
        series = {q["scheme"]: [layer_sqnr(by[k], q["scheme"]) for k in layers] for q in rows}
        out.append(_figure(charts.layer_lines(layers, series, title="SQNR per layer and scheme (higher is better)",
                                              ylabel="SQNR dB")))
    best = max(rows, key=lambda q: q["sqnr_db"] if q["sqnr_db"] is not None else -math.inf)
    if best["worst"]:
        out.append(f"<h3>Worst tensors under {e(best['scheme'])} (the scheme with the highest SQNR)</h3>")
        out.append(_table(["tensor", "SQNR dB", "rel. error"],
                          [[w["name"], _db(w["sqnr_db"]), _fmt(w["rel_err"])] for w in best["worst"]],
                          [False, True, True], name_cols=(0,)))
    stored = r.quantized_block_types()
    if stored:
        from .report import BLOCK_QUANT_NOTE
        out.append(_note(BLOCK_QUANT_NOTE))
    return "".join(out)


def _db(v) -> str:
    return "-" if v is None else (f"{v:.2f}" if math.isfinite(v) else str(v))


def _outliers(r) -> str:
    have = [t for t in r.tensors if t.stats and t.stats.get("absmax") is not None and t.role == "parameter"]
    if not have:
        return _note("no statistics: the scan read the headers only")
    top = sorted(have, key=lambda t: -tail_ratio(t))[:OUTLIER_ROWS]
    return (_note("the parameter tensors with the largest absmax / std (heavy tails: what per-tensor int8 "
                  "scales suffer from)")
            + _table(["tensor", "dtype", "shape", "absmax", "std", "absmax/std", "min", "max", "zeros"],
                     [[t.name, t.dtype, _shape(t.shape), _fmt(t.stats["absmax"]), _fmt(t.stats["std"]),
                       f"{tail_ratio(t):.1f}", _fmt(t.stats["min"]), _fmt(t.stats["max"]), f"{t.stats['zeros']:,}"]
                      for t in top], [False, False, False] + [True] * 6, name_cols=(0,)))


def _plan(r, context: int) -> str:
    try:
        p = r.plan(context=context).to_dict()
    except (ValueError, KeyError) as err:
        return _note(f"no plan: {err}")
    out = ["<h3>Weights memory</h3>",
           _table(["precision", "bits/weight", "memory"],
                  [[w["label"], f"{w['bits_per_weight']:.2f}" if w.get("bits_per_weight") else "-",
                    fmt_bytes(w["bytes"]["value"])] for w in p["weights"]], [False, True, True])]
    kv = p["kv_cache"]
    out.append("<h3>KV cache</h3>")
    if kv.get("applicable"):
        per = kv.get("per_token") or {}
        tot = kv.get("total") or {}
        out.append(_kv([("context × batch", f"{kv['context']:,} × {kv['batch']}"), ("dtype", kv["kv_dtype"]),
                        ("per token", fmt_bytes(per.get("value"))), ("total", fmt_bytes(tot.get("value"))),
                        ("formula", tot.get("formula", ""))]))
    else:
        out.append(_note(kv.get("reason") or "not applicable"))
    fit = p["gpu_fit"]
    keys = [k for k in ("stored", "bf16", "fp8", "int8", "int4", "train_adam", "train_qlora") if k in fit["needs"]]
    labels = {"stored": "as stored", "train_adam": "train (Adam)", "train_qlora": "QLoRA"}
    out.append("<h3>GPUs needed</h3>")
    out.append(_note(fit["overhead"]["formula"] + ("" if not fit.get("kv_cache_included") else
                                                   f"; KV cache of {fmt_bytes(fit['kv_cache_included'])} included")))
    out.append(_table(["GPU", "usable"] + [labels.get(k, k) for k in keys],
                      [[row["gpu"], fmt_bytes(row["usable"]["value"])]
                       + [str(row["fit"][k]["count"]) if row["fit"][k]["fits"] else "no" for k in keys]
                       for row in fit["rows"]], [False] + [True] * (len(keys) + 1)))
    for n in p.get("notes") or []:
        out.append(_note(n))
    return "".join(out)


def scan_html(r, *, histograms: int = 12, context: int = 8192) -> str:
    """The HTML page of a ScanReport (see ScanReport.to_html)."""
    from . import __version__
    charts.require()
    layers, by = layer_table(r)
    bodies = {"summary": _summary(r), "parameters": _parameters(r, layers), "layers": _layers(r, layers, by),
              "histograms": _histograms(r, histograms), "quantization": _quantization(r, layers, by),
              "outliers": _outliers(r), "plan": _plan(r, context)}
    return _page(f"paramkit report: {os.path.basename(r.path.rstrip('/')) or r.path}", r.path, SCAN_SECTIONS,
                 bodies, f"paramkit {__version__}; {r.format}; {len(r.tensors):,} tensors")


# ---- the diff report ----------------------------------------------------------------------------
def diff_layers(d) -> tuple[list[str], dict[str, dict]]:
    """(layers in natural order, {layer: metrics of its compared tensors, sums merged}) of a DiffReport."""
    from .backends.numpy_diff import empty_sums, merge_sums
    from .counting.roles import layer_of
    from .model_diff import metrics_of
    sums: dict[str, dict] = {}
    numel: dict[str, int] = {}
    for t in d.tensors:
        lay = layer_of(t.name)
        if lay is None or t.sums is None:
            continue
        sums[lay] = merge_sums(sums.get(lay, empty_sums()), t.sums)
        numel[lay] = numel.get(lay, 0) + t.numel
    names = sorted(sums, key=natural_key)
    return names, {k: metrics_of(sums[k], numel[k]) for k in names}


def _diff_summary(d) -> str:
    agg = d.aggregates
    c = agg["counts"]
    rows: list[tuple[str, object]] = [("A", f"{d.a} ({d.format_a})"), ("B", f"{d.b} ({d.format_b})"),
                                      ("result", "identical" if d.identical else "different"),
                                      ("tensors", f"A {agg['tensors_a']:,}, B {agg['tensors_b']:,}: "
                                       + ", ".join(f"{n:,} {s}" for s, n in c.items() if n)),
                                      ("parameters", f"A {agg['params_a']:,} ({human(agg['params_a'])}), "
                                       f"B {agg['params_b']:,} ({human(agg['params_b'])})")]
    if agg["tensors_compared"]:
        rows.append(("values", f"{agg['params_changed']:,} of {agg['elements_compared']:,} compared elements differ"
                     f" ({percent(agg['params_changed'], agg['elements_compared'])})"))
        rows.append(("overall", f"rel_l2 {_fmt(agg['rel_l2'])}, SQNR {_db(agg['sqnr_db'])} dB, cosine "
                     f"{'-' if agg['cosine'] is None else format(agg['cosine'], '.7g')}, max |Δ| "
                     f"{_fmt(agg['max_abs_diff'])}, mean |Δ| {_fmt(agg['mean_abs_diff'])}"))
    out = [_kv(rows)]
    for n in d.notes:
        out.append(_note(n))
    conv = sorted({x for t in d.tensors for x in t.conversions if not x.startswith("name ")})
    for x in conv:
        out.append(_note(f"conversion: {x} ({sum(x in t.conversions for t in d.tensors)} tensors)"))
    return "".join(out)


def _diff_layers(d) -> str:
    layers, m = diff_layers(d)
    if not layers:
        return _note("no compared tensors in numbered layers")
    rel = [m[k]["rel_l2"] for k in layers]
    out = []
    if any(v is not None and v > 0 for v in rel):
        out.append(_figure(charts.layer_lines(layers, {"rel_l2": rel}, title="rel_l2 = ||A-B|| / ||A|| per layer",
                                              ylabel="rel_l2", log=True)))
    else:
        out.append(_note("every compared layer is identical (rel_l2 = 0)"))
    out.append(_figure(charts.layer_lines(layers, {"cosine": [m[k]["cosine"] for k in layers]},
                                          title="cosine(A, B) per layer", ylabel="cosine")))
    out.append(_figure(charts.layer_lines(layers, {"changed": [None if m[k]["frac_changed"] is None
                                                               else 100 * m[k]["frac_changed"] for k in layers]},
                                          title="elements that changed per layer (%)", ylabel="% changed",
                                          floor0=True)))
    return '<div class="grid">' + "".join(out) + "</div>"


def _most_changed(d) -> str:
    top = d.most_changed(MOST_CHANGED_ROWS)
    if not top:
        return _note("no tensor's values differ")
    return _table(["tensor", "status", "dtype", "shape", "rel_l2", "SQNR dB", "cosine", "max |Δ|", "changed"],
                  [[t.name, t.status, t.dtype if t.dtype_b in (None, t.dtype) else f"{t.dtype}→{t.dtype_b}",
                    _shape(t.shape), _fmt(t.metrics["rel_l2"]), _db(t.metrics["sqnr_db"]),
                    "-" if t.metrics["cosine"] is None else f"{t.metrics['cosine']:.7g}",
                    _fmt(t.metrics["max_abs_diff"]),
                    "-" if t.metrics["frac_changed"] is None else percent(t.metrics["frac_changed"], 1.0)]
                   for t in top], [False, False, False, False] + [True] * 5, name_cols=(0,))


def _structure(d) -> str:
    rows = [t for t in d.tensors if t.status in ("added", "removed", "reshaped")]
    if not rows:
        return _note("none: both models have the same tensors with the same shapes")
    return _table(["tensor", "status", "shape", "note"],
                  [[t.name, t.status, _shape(t.shape) if t.shape_b in (None, t.shape) else
                    f"{_shape(t.shape)}→{_shape(t.shape_b)}", t.note or ""] for t in rows[:200]],
                  name_cols=(0,)) + ("" if len(rows) <= 200 else _note(f"… {len(rows) - 200:,} more"))


def diff_html(d) -> str:
    """The HTML page of a DiffReport (see DiffReport.to_html)."""
    from . import __version__
    charts.require()
    bodies = {"summary": _diff_summary(d), "layers": _diff_layers(d), "most-changed": _most_changed(d),
              "structure": _structure(d)}
    return _page("paramkit diff", f"{d.a}  ↔  {d.b}", DIFF_SECTIONS, bodies,
                 f"paramkit {__version__}; {len(d.tensors):,} tensors")
