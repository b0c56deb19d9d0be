"""`paramkit diff A B`: what differs between two models' weights (paramkit.diff), as a summary and tensor tables
fitted to the terminal, or JSON; the exit status says whether they differ, like diff(1): 0 no, 1 yes, 2 error."""
from __future__ import annotations

import json
import math
import sys

from rich.text import Text

from ._atomic import write_text_atomic
from .cli_render import Col, drop_order, fit_table, fmt_value, human, key_values, make_console, percent

#: per-tensor columns of the table (drop rank: the highest goes first when the terminal is too narrow)
DIFF_COLUMNS: tuple[tuple[str, Col], ...] = (
    ("name", Col("name", fit="name", min_width=28)),
    ("name_b", Col("name in B", fit="name", min_width=16, drop=8)),     # only when names were mapped
    ("status", Col("status")),
    ("dtype", Col("dtype", drop=6)),
    ("shape", Col("shape", drop=7)),
    ("rel_l2", Col("rel_l2", "right")),
    ("sqnr_db", Col("SQNR dB", "right", drop=2)),
    ("cosine", Col("cosine", "right", drop=5)),
    ("max_abs_diff", Col("max |Δ|", "right", drop=3)),
    ("mean_abs_diff", Col("mean |Δ|", "right", drop=4)),
    ("frac_changed", Col("changed", "right", drop=1)),
)
DEFAULT_ROWS = 40
WIDE_HELP = ("every column at full width and whole names, whatever the terminal's width (by default the tables "
             f"fit COLUMNS, the terminal, or 80 columns when piped, leaving out {drop_order([c for _, c in DIFF_COLUMNS])}"
             " in that order)")


def register(subparsers):
    p = subparsers.add_parser(
        "diff", help="compare the weights of two models, tensor by tensor (exit 0 same, 1 different, 2 error)",
        description="Compare two models (any formats: safetensors, PyTorch, NumPy, GGUF; files, indexes or "
                    "directories; a GGUF against a Hugging Face checkpoint through gguf's name map). Each tensor is "
                    "identical (bit for bit), changed, dtype_changed, reshaped, added (only in B) or removed (only "
                    "in A); where values differ: rel_l2 = ||A-B||/||A||, SQNR dB, cosine, max and mean |A-B| and "
                    "the share of elements that changed. Exit status: 0 when nothing differs (beyond --threshold), "
                    "1 when something does, 2 on an error.")
    p.add_argument("a", metavar="A", help="the first model (the reference: rel_l2 and SQNR are relative to it)")
    p.add_argument("b", metavar="B", help="the second model")
    p.add_argument("--only-changed", action="store_true",
                   help="list only the tensors that differ (and, with --threshold, more than it)")
    p.add_argument("--threshold", type=float, default=None, metavar="X",
                   help="tensors whose values differ with rel_l2 <= X count as unchanged: not listed by "
                        "--only-changed and not a difference for the exit status (added, removed and reshaped "
                        "tensors of another size always are)")
    p.add_argument("--format", default="table", choices=("table", "json"),
                   help="table (default; fitted to the terminal) or json (DiffReport.to_dict(); with "
                        "--only-changed its tensors list too is only those)")
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="also write the report to FILE: a self-contained HTML page with charts when FILE ends in "
                        ".html or .htm (DiffReport.to_html; needs the report extra), else the JSON report "
                        "(DiffReport.to_dict())")
    p.add_argument("--tensors", default=None, metavar="REGEX",
                   help="compare only the tensors whose name (in A or B) matches REGEX (re.search)")
    p.add_argument("--all", action="store_true", help=f"list every tensor (default: the first {DEFAULT_ROWS})")
    p.add_argument("--wide", action="store_true", help=WIDE_HELP)
    p.add_argument("--backend", default="auto", choices=["auto", "cuda", "cpu", "numpy"],
                   help="compute backend (as for scan; the diff pass itself runs on numpy today)")
    p.add_argument("--threads", type=int, default=None, help="worker threads (as for scan)")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    p.set_defaults(func=cmd_diff, error_status=2)
    return p


def counts_as_difference(t, threshold: float | None) -> bool:
    """Whether tensor diff t is a difference: anything not identical, except, with a threshold, compared values
    whose rel_l2 is at most it."""
    if t.status == "identical":
        return False
    if threshold is None or t.metrics is None or t.metrics["rel_l2"] is None:
        return True
    return not t.metrics["rel_l2"] <= threshold


def _shape(shape) -> str:
    return "×".join(map(str, shape)) or "scalar"


def _pair(a: str, b: str | None) -> str:
    return a if b is None or b == a else f"{a}→{b}"


def _cell(t, key: str) -> str:
    m = t.metrics or {}
    if key == "name":
        return t.name
    if key == "name_b":
        return t.name_b or ""
    if key == "status":
        return t.status
    if key == "dtype":
        return _pair(t.dtype, t.dtype_b)
    if key == "shape":
        return _pair(_shape(t.shape), None if t.shape_b is None else _shape(t.shape_b))
    return fmt_metric(key, m.get(key))


def share(part: float, whole: float) -> str:
    """percent(), but a share short of the whole never reads 100.0%."""
    text = percent(part, whole)
    if whole and part < whole and text == "100.0%":
        return f"{math.floor(100 * part / whole * 1000) / 1000:.3f}%"
    return text


def fmt_metric(key: str, v) -> str:
    """A metric as the tables show it: SQNR to 0.01 dB, cosine to 7 digits (0.9999995 is not 1), shares as
    percentages, the rest as fmt_value."""
    if v is None or not isinstance(v, float) or not math.isfinite(v):
        return fmt_value(v)
    if key == "frac_changed":
        return share(v, 1.0)
    if key == "sqnr_db":
        return f"{v:.2f}"
    if key == "cosine":
        return f"{v:.7g}"
    return fmt_value(v)


def tensor_table(rows, width: int, *, wide: bool, title: str):
    """The tensor rows; the "name in B" column only when some tensor of `rows` has another name in B."""
    mapped = any(t.name_b is not None and t.name_b != t.name for t in rows)
    cols = [(k, c) for k, c in DIFF_COLUMNS if k != "name_b" or mapped]
    return fit_table([c for _, c in cols], [[_cell(t, k) for k, _ in cols] for t in rows], width,
                     title=title, wide=wide, hint="--wide shows every column, --format json every value")


def _summary(d) -> list[tuple[str, object]]:
    agg = d.aggregates
    c = agg["counts"]
    rows: list[tuple[str, object]] = [("A", f"{d.a}  ({d.format_a})"), ("B", f"{d.b}  ({d.format_b})")]
    rows.append(("tensors", f"A {agg['tensors_a']:,}, B {agg['tensors_b']:,}: "
                 + ", ".join(f"{n:,} {s}" for s, n in c.items() if n)))
    rows.append(("parameters", f"A {agg['params_a']:,} ({human(agg['params_a'])}), "
                 f"B {agg['params_b']:,} ({human(agg['params_b'])})"))
    if agg["tensors_compared"]:
        rows.append(("values", f"{agg['params_changed']:,} of {agg['elements_compared']:,} compared elements "
                     f"differ ({share(agg['params_changed'], agg['elements_compared'])}), in "
                     f"{agg['tensors_compared']:,} tensors"))
        rows.append(("overall", "  ".join(f"{label} {fmt_metric(k, agg[k])}" for label, k in (
            ("rel_l2", "rel_l2"), ("SQNR dB", "sqnr_db"), ("cosine", "cosine"), ("max |Δ|", "max_abs_diff"),
            ("mean |Δ|", "mean_abs_diff")))))
    t = d.timing
    if d.backend:
        rows.append(("diff", f"{d.backend} backend, {t['diff_s']:.3f} s"
                     + (f", {t['gb_per_s']:.2f} GB/s (both models)" if t.get("gb_per_s") else "")))
    rows.append(("result", "identical" if d.identical else "different"))
    return rows


def render_diff(d, console, rows, *, wide: bool, threshold: float | None, hidden: int) -> None:
    width = console.width
    console.print(key_values(_summary(d)))
    for n in d.notes:
        console.print(Text.assemble(("note", "yellow"), f": {n}"))
    conv = sorted({c for t in d.tensors for c in t.conversions if not c.startswith("name ")})
    for c in conv:
        k = sum(c in t.conversions for t in d.tensors)
        console.print(Text.assemble(("conversion", "yellow"), f": {c} ({k} tensor{'s' if k != 1 else ''})"))
    top = d.most_changed()
    if top:
        console.print(tensor_table(top, width, wide=wide, title=f"most changed tensors (by rel_l2, top {len(top)})"))
    title = "tensors" + ("" if threshold is None else f" (threshold rel_l2 <= {fmt_value(threshold)})")
    console.print(tensor_table(rows, width, wide=wide, title=title))
    if hidden:
        console.print(Text(f"… {hidden:,} more tensors (--all lists every one, --format json every value)",
                           style="dim"))


def cmd_diff(args) -> int:
    from .model_diff import diff
    from .report import _json_safe
    html = bool(args.output) and args.output.lower().endswith((".html", ".htm"))
    if html:   # fail before the data pass when matplotlib is missing
        from .report_charts import require
        require()
    if args.threshold is not None and not args.threshold >= 0:
        raise ValueError("--threshold X needs X >= 0")
    d = diff(args.a, args.b, backend=args.backend, threads=args.threads, tensors=args.tensors,
             progress=args.format == "table" and sys.stderr.isatty() or args.progress)
    differs = [t for t in d.tensors if counts_as_difference(t, args.threshold)]
    listed = differs if args.only_changed else d.tensors
    out = d.to_dict()
    if args.only_changed:
        keep = {id(t) for t in listed}
        out["tensors"] = [row for t, row in zip(d.tensors, out["tensors"]) if id(t) in keep]
    text = json.dumps(_json_safe(out), indent=2, allow_nan=False)
    if html:
        d.to_html(args.output)
    elif args.output:
        write_text_atomic(args.output, text)
    if args.format == "json":
        print(text)
    else:
        rows = listed if args.all else listed[:DEFAULT_ROWS]
        render_diff(d, make_console(wide=args.wide), rows, wide=args.wide, threshold=args.threshold,
                    hidden=len(listed) - len(rows))
    return 1 if differs else 0
