"""`paramkit quant PATH`: simulated quantization under several schemes side by side (bits/weight, model
size, SQNR, relative error: the table to choose a scheme from), and --out/--scheme to export a fake-quantized file."""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter

from rich.text import Text

from .cli_render import Col, drop_order, fit_table, fmt_bytes, human, key_values, make_console


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "quant", help="simulate quantization schemes (error and size side by side) or export a fake-quantized file",
        description="Fake-quantize the weights of a model under each scheme and report bits/weight (scales and "
                    "zero points included), the whole model's size, the error (SQNR, relative error, cosine, "
                    "clipped values) and the worst tensor; by default floating-point parameters with 2 or more "
                    "dimensions are quantized. With --out FILE --scheme S, write FILE: the model with those "
                    "tensors replaced by their fake-quantized values in their original dtype.")
    p.add_argument("path", help="a weight file (safetensors, PyTorch, NumPy, GGUF), an index or a model directory "
                                "(--out: one weight file, written as safetensors)")
    p.add_argument("--schemes", default=None, metavar="A,B,C",
                   help="comma-separated scheme ids (default: the nine default schemes: int8_tensor, int8_channel, "
                        "int8_g128, int4_g128, int4_g128_asym, q8_0, q4_0, nf4, fp8_e4m3; group variants like "
                        "int4_g64 or int4_g32_asym are accepted)")
    p.add_argument("--tensors", default=None, metavar="REGEX",
                   help="quantize the floating-point tensors whose name matches REGEX (re.search) instead of "
                        "the default policy; a REGEX that selects no tensor is an error")
    p.add_argument("--wide", action="store_true",
                   help="every column at full width and whole tensor names, whatever the terminal's width "
                        "(by default the tables fit COLUMNS, the terminal, or 80 columns when piped, leaving "
                        f"out {drop_order(QUANT_COLUMNS)} in that order)")
    p.add_argument("--json", action="store_true",
                   help="print JSON: the scan's quant section (schemes, policy, summary), or with --out the "
                        "export summary")
    p.add_argument("--backend", default="auto", choices=["auto", "cuda", "cpu", "numpy"],
                   help="compute backend (default auto; $PARAMKIT_BACKEND overrides auto)")
    p.add_argument("--out", default=None, metavar="FILE", help="write a fake-quantized copy of PATH to FILE "
                                                                "(needs --scheme)")
    p.add_argument("--scheme", default=None, metavar="S", help="the scheme for --out")
    p.add_argument("--overwrite", action="store_true", help="with --out: replace FILE if it exists")
    p.add_argument("--threads", type=int, default=None,
                   help="cpu worker threads (default: all cores); with the cuda backend, the threads "
                   "that read the file (default: one per core, at most 8)")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    p.set_defaults(func=cmd_quant)
    return p


def _usage_error(msg: str) -> int:
    print(f"paramkit quant: error: {msg}", file=sys.stderr)
    return 1


def cmd_quant(args) -> int:
    if args.out is not None and args.scheme is None:
        return _usage_error("--out needs --scheme S (the scheme to export with; see the table without --out)")
    if args.scheme is not None and args.out is None:
        return _usage_error("--scheme chooses the scheme for --out FILE; to compare schemes use --schemes A,B,C")
    if args.out is not None and args.schemes is not None:
        return _usage_error("--schemes compares schemes; with --out give a single --scheme")
    if args.overwrite and args.out is None:
        return _usage_error("--overwrite only applies to --out FILE")
    progress = (not args.json and sys.stderr.isatty()) or args.progress
    from .api import scan
    from .quant import resolve_schemes
    # unknown ids: ValueError -> exit 1
    chosen = resolve_schemes(args.scheme if args.out is not None else (args.schemes or "default"))
    _check_tensors_select(args.path, chosen, args.tensors)
    if args.out is not None:
        return _export(args, progress)
    schemes = [s.id for s in chosen]
    r = scan(args.path, quant=schemes, quant_tensors=args.tensors, backend=args.backend, quantiles=False,
             threads=args.threads, progress=progress)
    if args.json:
        from .report import _json_safe
        print(json.dumps(_json_safe(r.to_dict()["quant"]), indent=2))
        return 0
    render_quant(r, make_console(wide=args.wide), wide=args.wide)
    return 0


def _check_tensors_select(path, schemes, tensors: str | None) -> None:
    """--tensors REGEX: a bad regex, or one that selects no tensor to quantize, is a ValueError,
    raised from the headers before any tensor data is read."""
    if tensors is None:
        return
    from .api import scan
    from .cli import name_pattern
    from .quant.plan import make_plan
    pattern = name_pattern("--tensors", tensors)
    head = scan(path, stats=False).tensors
    plan = make_plan(head, [t.role for t in head], schemes, tensors)
    if any(plan.masks) or plan.not_applicable:
        return
    named = sum(1 for t in head if pattern.search(t.name))
    raise ValueError(f"--tensors {tensors!r} selects no tensor to quantize: "
                     + (f"it matches {named:,} tensor name{'s' if named > 1 else ''}, none of them a "
                        "floating-point tensor that can be quantized (not a buffer, quantization state or "
                        "a dtype without statistics)"
                        if named else f"it matches none of the {len(head):,} tensor names"))


# ---- the table --------------------------------------------------------------------------------
def _db(v) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "exact" if v > 0 else "-inf"
    return f"{v:.2f}"


def _pct(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if math.isinf(v) or math.isnan(v):
        return str(v)
    return f"{100 * v:.{digits}f}%"


def _cos(v) -> str:
    return "-" if v is None else f"{v:.6f}"


#: the scheme table's columns; when short of width the highest drop rank goes first (scheme,
#: bits/weight and SQNR always stay)
QUANT_COLUMNS = (Col("scheme"), Col("bits/weight", "right"), Col("model size", "right", drop=1),
                 Col("vs original", "right", drop=3), Col("SQNR dB", "right"), Col("rel. error", "right", drop=2),
                 Col("cosine", "right", drop=4), Col("clipped", "right", drop=6), Col("tensors", "right", drop=5))


def render_quant(r, console, *, wide: bool = False) -> None:
    """Print the scheme comparison of a scan(quant=...) report: one row per scheme, fewest bits
    first, then each scheme's worst tensor, fitted to the console's width."""
    d = r.to_dict()["quant"]
    rows = list(d["summary"])
    head = [("file", r.path + ("" if len(r.files) == 1 else f"  ({len(r.files)} shards)")),
            ("parameters", f"{r.total_params:,}  ({human(r.total_params)})"),
            ("size", fmt_bytes(r.bytes_total) + "  (as stored)"),
            ("quantized", d.get("policy") or "")]
    if rows:
        most = max(rows, key=lambda x: x.get("tensors") or 0)
        head.append(("", f"{most.get('tensors', 0):,} of {len(r.tensors):,} tensors, "
                         f"{most.get('quantized_elements', most.get('n', 0)) or 0:,} elements"))
    blocks = (d.get("block_tensors") or {}).get("stored")
    if blocks:
        head.append(("stored as", ", ".join(f"{k} ({v['bits_per_weight']:g} bits/weight, {v['tensors']:,} tensors)"
                                            for k, v in blocks.items())))
        head.append(("", d["block_tensors"]["note"]))
    console.print(key_values(head))

    rows.sort(key=lambda x: (x["bits_per_weight"] if x.get("bits_per_weight") is not None else math.inf,
                             -(x["sqnr_db"] if x.get("sqnr_db") is not None else -math.inf)))
    cells = [[x["scheme"],
              "-" if x.get("bits_per_weight") is None else f"{x['bits_per_weight']:.3f}",
              fmt_bytes(x["quantized_bytes"]) if x.get("quantized_bytes") is not None else "-",
              _pct(x.get("size_ratio"), 1),
              _db(x.get("sqnr_db")), _pct(x.get("rel_err")), _cos(x.get("cosine")),
              f"{x.get('clipped') or 0:,}", f"{x.get('tensors') or 0:,}"] for x in rows]
    width = console.width
    console.print(fit_table(QUANT_COLUMNS, cells, width, title="quantization schemes (fewest bits first)",
                            wide=wide))
    worst = [(x["scheme"], (x.get("worst") or [None])[0]) for x in rows]
    if any(w for _, w in worst):
        console.print(fit_table(
            [Col("scheme"), Col("SQNR dB", "right"), Col("rel. error", "right"), Col("tensor", fit="name")],
            [[s, _db(w.get("sqnr_db")), _pct(w.get("rel_err")), w["name"]] if w else [s, "-", "-", "-"]
             for s, w in worst], width, title="worst tensor per scheme (lowest SQNR)", wide=wide))
    console.print(Text("bits/weight include scales and zero points; model size = quantized tensors under the "
                       "scheme + the rest as stored. SQNR = 10·log10(Σw²/Σ(w−q)²), element-weighted over the "
                       "quantized tensors (higher is better, ≈6 dB per bit); rel. error = ‖w−q‖/‖w‖.",
                       style="dim"))
    console.print(Text(f"export one: paramkit quant {r.path} --out FILE --scheme SCHEME", style="dim"))


# ---- the export --------------------------------------------------------------------------------
def _export(args, progress) -> int:
    from .quant.export import fake_quantize_file
    summary = fake_quantize_file(args.path, args.scheme, args.out, quant_tensors=args.tensors,
                                 backend=args.backend, progress=progress, overwrite=args.overwrite,
                                 threads=args.threads)
    if args.json:
        from .report import _json_safe
        print(json.dumps(_json_safe(summary), indent=2))
        return 0
    con = make_console()
    e = summary["error"]
    con.print(Text.assemble("wrote ", (summary["out"], "bold"), f" ({fmt_bytes(summary['bytes_written'])})"))
    con.print(f"  {summary['n_quantized']:,} of {summary['tensors']:,} tensors fake-quantized with "
              f"{summary['scheme']} ({summary['quantized_elements']:,} elements), each kept in "
              f"its original dtype; policy: {summary['policy']}", markup=False)
    if summary["n_quantized"]:
        bpw = e.get("bits_per_weight")
        con.print(f"  SQNR {_db(e.get('sqnr_db'))} dB, rel. error {_pct(e.get('rel_err'))}, cosine "
                  f"{_cos(e.get('cosine'))}, clipped {e.get('clipped') or 0:,}"
                  + (f"; {bpw:.3f} bits/weight under the scheme, model "
                     f"{fmt_bytes(summary['quantized_bytes'])} vs {fmt_bytes(summary['original_bytes'])}" if bpw else ""))
        se = summary["stored_error"]
        con.print(f"  as stored (after the cast back to the original dtypes): SQNR {_db(se.get('sqnr_db'))} dB")
        worst = summary.get("worst") or []
        if worst:
            con.print("  worst: " + ", ".join(f"{w['name']} ({_db(w['sqnr_db'])} dB)" for w in worst[:3]),
                      markup=False)
    if summary["n_kept"]:
        reasons = Counter(k["reason"] for k in summary["kept"])
        con.print(f"  {summary['n_kept']:,} tensors copied unchanged: "
                  + "; ".join(f"{n} × {why}" for why, n in reasons.most_common()), markup=False)
    con.print(f"  metadata entry {summary['metadata_key']} records the scheme and the tensors", markup=False)
    return 0
