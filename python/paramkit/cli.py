"""The `paramkit` command (also `python -m paramkit`): scan, demo, doctor, and the plan, quant, diff and ingest
subcommands of cli_plan/cli_quant/cli_diff/cli_ingest; output is fitted to the terminal by cli_render. Exit
codes: 0 on success, 2 on a FormatError (its code printed), 1 on any other error (I/O errors included); diff: 1
when the models differ, 2 on any error; ingest: 3 when some models are error rows."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from rich.text import Text

from . import __version__
from .cli_render import (Col, drop_order, fit_table, fmt_bytes, fmt_count, fmt_value, human, key_values,
                         make_console, percent)


# ---- shared by the subcommands ------------------------------------------------------------------
def name_pattern(option: str, pattern: str | None):
    """The compiled regex of a --filter/--tensors option; a bad one is a ValueError naming it."""
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{option} {pattern!r} is not a regular expression: {e}") from None


# ---- scan: the tensor rows, selected, sorted and in each output format --------------------------
#: per-tensor columns of the table and markdown output: key, column (drop rank: the highest goes
#: first when the terminal is too narrow)
TENSOR_COLUMNS: tuple[tuple[str, Col], ...] = (
    ("name", Col("name", fit="name", min_width=36)),
    ("dtype", Col("dtype")),
    ("shape", Col("shape")),
    ("role", Col("role", drop=9)),
    ("min", Col("min", "right", drop=6)),
    ("max", Col("max", "right", drop=5)),
    ("mean", Col("mean", "right", drop=3)),
    ("std", Col("std", "right", drop=2)),
    ("absmax", Col("absmax", "right", drop=1)),
    ("zeros", Col("zeros", "right", drop=4)),
    ("nan", Col("nan", "right", drop=7)),
    ("inf", Col("inf", "right", drop=8)),
)
STAT_KEYS = ("min", "max", "mean", "std", "absmax", "l2", "zeros", "nan", "inf")
#: --sort keys: file order, name (A→Z), and per tensor sizes and statistics (largest first; min:
#: the most negative first)
SORT_KEYS = ("file", "name", "numel", "bytes") + STAT_KEYS
#: csv columns (stats flattened; quantiles follow as q0.001 ...)
CSV_COLUMNS = ("name", "dtype", "shape", "numel", "nbytes", "role", "min", "max", "mean", "std", "absmax",
               "l2", "zeros", "nan", "posinf", "neginf", "subnormal")
FORMATS = ("table", "csv", "markdown", "json")
DEFAULT_TABLE_ROWS = 40


def _stat(t, key: str):
    s = t.stats
    if s is None:
        return None
    return s["posinf"] + s["neginf"] if key == "inf" else s.get(key)


def _sort_value(t, key: str):
    if key == "name":
        return t.name
    if key == "numel":
        return t.numel
    if key == "bytes":
        return t.nbytes
    return _stat(t, key)


def select_tensors(tensors, *, pattern=None, sort: str = "file", top: int | None = None) -> list:
    """The tensors named by --filter (re.search), in --sort order (stable; tensors without the
    statistic last), the first --top of them."""
    rows = [t for t in tensors if pattern is None or pattern.search(t.name)]
    if sort != "file":
        have = [t for t in rows if _sort_value(t, sort) is not None]
        lack = [t for t in rows if _sort_value(t, sort) is None]
        ascending = sort in ("name", "min")
        have.sort(key=lambda t: _sort_value(t, sort), reverse=not ascending)
        rows = have + lack
    return rows if top is None else rows[:top]


def _shape(shape) -> str:
    return "×".join(map(str, shape)) or "scalar"


def _display(t, key: str) -> str:
    if key == "name":
        return t.name
    if key == "dtype":
        return t.dtype
    if key == "shape":
        return _shape(t.shape)
    if key == "role":
        return t.role
    if key in ("zeros", "nan", "inf"):
        return fmt_count(_stat(t, key))
    return fmt_value(_stat(t, key))


def _columns(r) -> list[tuple[str, Col]]:
    return [(k, c) for k, c in TENSOR_COLUMNS if r.backend or k not in STAT_KEYS]


def tensor_table(r, rows, width: int, *, wide: bool = False, title: str = "tensors"):
    cols = _columns(r)
    return fit_table([c for _, c in cols], [[_display(t, k) for k, _ in cols] for t in rows], width,
                     title=title, wide=wide, hint="--wide shows every column, --format csv every value")


def write_csv(r, rows, out) -> None:
    import csv
    qkeys = sorted({q for t in rows if t.stats and t.stats.get("quantiles") for q in t.stats["quantiles"]},
                   key=float)
    w = csv.writer(out, lineterminator="\n")
    w.writerow(list(CSV_COLUMNS) + [f"q{q}" for q in qkeys])
    for t in rows:
        s = t.stats or {}
        base = {"name": t.name, "dtype": t.dtype, "shape": "x".join(map(str, t.shape)), "numel": t.numel,
                "nbytes": t.nbytes, "role": t.role}
        vals = [base[k] if k in base else s.get(k) for k in CSV_COLUMNS]
        vals += [(s.get("quantiles") or {}).get(q) for q in qkeys]
        w.writerow(["" if v is None else v for v in vals])


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def write_markdown(r, rows, out) -> None:
    out.write(f"**{_md_cell(r.path)}**: {r.format}, {r.total_params:,} parameters ({human(r.total_params)}), "
              f"{len(r.tensors):,} tensors, {fmt_bytes(r.bytes_total)}\n\n")
    cols = _columns(r)
    out.write("| " + " | ".join(col.header for _, col in cols) + " |\n")
    out.write("|" + "|".join(" ---: " if col.justify == "right" else " --- " for _, col in cols) + "|\n")
    for t in rows:
        out.write("| " + " | ".join(_md_cell(_display(t, k)) for k, _ in cols) + " |\n")


def _declared(v: dict) -> str:
    """One declared total (index/file metadata) next to the computed one."""
    same = v["difference"] == 0
    return (f"{v['declared']:,} ({v['source']} metadata; computed {v['computed']:,}"
            + (": matches)" if same else f": differs by {v['difference']:+,})"))


def render_scan(r, console, rows=None, *, wide: bool = False, more_hint: str = "") -> None:
    """The scan summary, dtype and module tables, the tensor table (`rows`: the tensors to list,
    default the first 40) and the model-wide statistics, fitted to the console's width."""
    width = console.width
    c = r.counting
    head = [("file", r.path + ("" if len(r.files) == 1 else f"  ({len(r.files)} shards)")),
            ("format", r.format),
            ("parameters", f"{r.total_params:,}  ({human(r.total_params)})")]
    if getattr(c, "active_params", None) not in (None, r.total_params):
        head.append(("active parameters", f"{c.active_params:,}  ({human(c.active_params)})"))
    head.append(("buffers", f"{r.buffer_elements:,} elements"))
    if getattr(c, "quant_state_elements", 0):
        head.append(("quantization state", f"{c.quant_state_elements:,} elements"))
    if getattr(c, "optimizer_elements", 0):
        head.append(("optimizer state", f"{c.optimizer_elements:,} elements (not parameters)"))
    head += [("tensors", f"{len(r.tensors):,}"), ("size", fmt_bytes(r.bytes_total))]
    g = getattr(c, "gguf", None)
    if g:
        bpw = f"{g['bits_per_weight']:.2f} bits/weight" if g["bits_per_weight"] else "no parameters"
        head.append(("gguf", f"v{g['version']}, {g['file_type'] or 'file type not given'}, {bpw}"
                     + (", big-endian" if g["byteorder"] == "big" else "")
                     + (f", {fmt_bytes(g['padding_bytes'])} padding" if g["padding_bytes"] else "")))
    for k, v in (c.declared or {}).items():
        head.append((f"declared {k}", _declared(v)))
    if r.backend:
        t = r.timing
        head.append(("statistics", f"{r.backend} backend, {t['stats_s']:.3f} s"
                     + (f", {t['gb_per_s']:.2f} GB/s" if t.get("gb_per_s") else "")))
    else:
        head.append(("statistics", "skipped (--no-stats)"))
    for k, v in (r.engine_info.get("block_types") or {}).items():   # GGML block types not done natively
        if v["values"] != r.backend:
            head.append((f"{k} values", (f"{v['values']} backend: " if v["values"] else "") + v["why"]))
    console.print(key_values(head))

    tot = max(r.total_elements, 1)
    console.print(fit_table([Col("dtype"), Col("elements", "right"), Col("share", "right")],
                            [[k, f"{v:,}", percent(v, tot)]
                             for k, v in sorted(r.elements_by_dtype.items(), key=lambda kv: -kv[1])],
                            width, title="stored elements by dtype", wide=wide))
    mods = r.groups.get("modules", {})
    if mods:
        console.print(fit_table([Col("module", fit="name"), Col("params", "right"), Col("tensors", "right")],
                                [[k, f"{v.get('params', 0):,}", str(v.get("tensors", ""))] for k, v in mods.items()],
                                width, title="parameters by top-level module", wide=wide))

    rows = r.tensors[:DEFAULT_TABLE_ROWS] if rows is None else rows
    console.print(tensor_table(r, rows, width, wide=wide))
    if more_hint:
        console.print(Text(more_hint, style="dim"))
    elif len(rows) < len(r.tensors):
        console.print(Text(f"… {len(r.tensors) - len(rows)} more tensors (--all shows every one, --top N "
                           "the first N, --format csv every value)", style="dim"))
    if r.aggregates:
        a = r.aggregates
        chosen = r.options.get("tensors")
        console.print(Text.assemble(
            ("all parameters" if chosen is None else f"parameters matching /{chosen}/", "bold"),
            f": min {fmt_value(a['min'])}  max {fmt_value(a['max'])}  mean {fmt_value(a['mean'])}"
            f"  std {fmt_value(a['std'])}  absmax {fmt_value(a['absmax'])}  l2 {fmt_value(a['l2'])}"
            f"  zeros {a['zeros']:,} ({percent(a['zeros'], a['numel'])})  NaN {a['nan']:,}"
            f"  Inf {a['posinf'] + a['neginf']:,}  subnormal {a['subnormal']:,}"))
    for f in r.unreferenced_files:
        console.print(Text.assemble(("note", "yellow"), f": {f} is not named by the index: not part of the model"))
    for f in r.ignored_files:
        console.print(Text.assemble(("note", "yellow"), f": {os.path.basename(f['file'])} ignored: {f['reason']}"))


def cmd_scan(args) -> int:
    from .api import scan
    fmt = "json" if args.json else args.format
    if args.json and args.format not in ("table", "json"):
        raise ValueError(f"--json is --format json; it cannot go with --format {args.format}")
    pattern = name_pattern("--filter", args.filter)
    if args.histograms and fmt != "json":
        raise ValueError("--histograms adds the histograms to the JSON report: use it with --json")
    if args.histograms and (args.no_stats or args.no_quantiles):
        raise ValueError("--histograms needs the statistics with quantiles: leave out --no-stats / --no-quantiles")
    if args.no_stats and args.sort in STAT_KEYS:
        raise ValueError(f"--sort {args.sort} needs the statistics: leave out --no-stats")
    if args.top is not None and args.top < 1:
        raise ValueError("--top N needs N >= 1")
    if pattern is not None:      # say so before the data pass when the filter matches nothing
        names = [t.name for t in scan(args.path, stats=False, strict=not args.lenient).tensors]
        if not any(pattern.search(n) for n in names):
            raise ValueError(f"--filter {args.filter!r} matches none of the {len(names):,} tensors")
    r = scan(args.path, stats=not args.no_stats, quantiles=not args.no_quantiles, backend=args.backend,
             threads=args.threads, progress=fmt == "table" and sys.stderr.isatty() or args.progress,
             strict=not args.lenient, tensors=args.filter)   # only the matching tensors are read
    top = args.top
    if fmt == "table" and top is None and not args.all:
        top = DEFAULT_TABLE_ROWS
    rows = select_tensors(r.tensors, pattern=pattern, sort=args.sort, top=top)
    if fmt == "json":
        from .report import _json_safe
        d = r.to_dict(histograms=args.histograms)
        if pattern is not None or args.sort != "file" or args.top is not None:
            index = {id(t): i for i, t in enumerate(r.tensors)}
            d["tensors"] = [d["tensors"][index[id(t)]] for t in rows]
        print(json.dumps(_json_safe(d), indent=2, allow_nan=False))
    elif fmt == "csv":
        write_csv(r, rows, sys.stdout)
    elif fmt == "markdown":
        write_markdown(r, rows, sys.stdout)
    else:
        matched = len(select_tensors(r.tensors, pattern=pattern))
        hint = ""
        if pattern is not None or args.sort != "file":
            hint = (f"{len(rows):,} of {matched:,} tensors"
                    + (f" matching /{args.filter}/" if pattern is not None else "")
                    + (f", sorted by {args.sort}" if args.sort != "file" else "")
                    + (f" ({len(r.tensors):,} in the model)" if pattern is not None else ""))
        render_scan(r, make_console(wide=args.wide), rows, wide=args.wide, more_hint=hint)
    return 0


def cmd_demo(args) -> int:
    from .api import scan
    from .demo import write_demo_checkpoint
    path = write_demo_checkpoint(args.dir)
    console = make_console(wide=args.wide)
    console.print(Text(f"wrote the demo checkpoint {path}", style="dim"))
    r = scan(path, backend=args.backend)
    if args.json:
        print(r.to_json(indent=2))
    else:
        render_scan(r, console, wide=args.wide)
    return 0


def doctor_info() -> dict:
    import platform
    from .backends import backends
    from .backends.cuda_backend import probe
    info: dict = {"paramkit": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
                  "cpu_count": os.cpu_count()}
    try:
        from . import _core
        info["build"] = dict(_core.build_info())
    except ImportError as e:
        info["build"] = {"error": str(e)}
    p = probe()
    info["cuda"] = p if p is not None else {"built": False}
    info["backends"] = [{"name": b.name, "available": b.available, "reason": b.reason} for b in backends()]
    env = os.environ.get("PARAMKIT_BACKEND")
    info["PARAMKIT_BACKEND"] = env
    return info


def cmd_doctor(args) -> int:
    from .backends.cuda_backend import no_device_reason
    info = doctor_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    console = make_console()
    rows: list[tuple[str, object]] = [("paramkit", info["paramkit"]),
                                      ("python", f"{info['python']} on {info['platform']}")]
    b = info["build"]
    if "error" in b:
        rows.append(("C++ core", Text.assemble(("not loaded", "red"), f": {b['error']}")))
    else:
        rows += [("C++ core", f"{b['compiler']}, {b['build_type']}"),
                 ("SIMD", f"{b['isa']} in use (compiled: {', '.join(b['isa_compiled'])})"),
                 ("threads", str(b["default_threads"]))]
    cu = info["cuda"]
    if cu.get("built") is False:
        rows.append(("CUDA build", "not built (no nvcc at build time, or PARAMKIT_CUDA=OFF)"))
    else:
        rows.append(("CUDA build", f"runtime {cu['runtime_version']}, driver {cu['driver_version'] or 'none'}, "
                                   f"archs {cu['archs']}"))
        devs = ", ".join(f"{d['name']} (sm_{d['compute_capability'].replace('.', '')}, "
                         f"{d['total_memory'] / 2**30:.0f} GiB)" for d in cu["devices"]) or \
            f"none: {no_device_reason(cu) or 'the driver lists no device'}"
        rows.append(("CUDA devices", devs))
    if info["PARAMKIT_BACKEND"]:
        rows.append(("PARAMKIT_BACKEND", info["PARAMKIT_BACKEND"]))
    console.print(key_values(rows))
    console.print(fit_table(
        [Col("backend"), Col("available"), Col("why", fit="wrap", min_width=20)],
        [[row["name"], Text("yes", "green") if row["available"] else Text("no", "red"), row["reason"]]
         for row in info["backends"]],
        console.width, title="backends (auto picks the first available)"))
    return 0


BACKENDS = ["auto", "cuda", "cpu", "numpy"]
WIDE_HELP = ("every column at full width, whatever the terminal's width (by default lines fit COLUMNS, "
             "the terminal, or 80 columns when piped; columns are left out when short of width)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="paramkit", description="Read neural-network weight files: parameter counts, "
                                "per-tensor statistics, quantization error, deployment plans.")
    p.add_argument("--version", action="version", version=f"paramkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser(
        "scan", help="count parameters and compute per-tensor statistics",
        description="Scan a weight file (.safetensors, PyTorch .bin/.pt/.pth/.ckpt, NumPy .npy/.npz, GGUF), an index "
                    "(model.safetensors.index.json, pytorch_model.bin.index.json) or a directory: a summary, "
                    "the stored elements per dtype, parameters per top-level module and a per-tensor table. "
                    "The table fits the terminal (COLUMNS, the terminal's width, 80 when piped): long names "
                    "are shortened in the middle and, when short of width, columns are left out in this "
                    f"order: {drop_order([c for _, c in TENSOR_COLUMNS])} (--wide keeps them all).")
    s.add_argument("path", help="weight file (safetensors, PyTorch, NumPy, GGUF), index or directory")
    s.add_argument("--format", default="table", choices=FORMATS,
                   help="table (default; fitted to the terminal), csv (one row per tensor, every statistic "
                        "at full precision), markdown (the table with whole names and every column) or json "
                        "(the full report, ScanReport.to_dict())")
    s.add_argument("--json", action="store_true", help="the same as --format json")
    s.add_argument("--sort", default="file", choices=SORT_KEYS, metavar="STAT",
                   help="order of the tensors: " + ", ".join(SORT_KEYS) + " (default file: the file's order; "
                        "name A to Z; the others largest first, min most negative first; tensors without "
                        "the statistic last)")
    s.add_argument("--filter", default=None, metavar="REGEX",
                   help="only the tensors whose name matches REGEX (re.search): only they are read, and the "
                        "model-wide statistics are theirs (the counts are the whole model's); matching none is "
                        "an error")
    rows = s.add_mutually_exclusive_group()
    rows.add_argument("--top", type=int, default=None, metavar="N",
                      help="only the first N tensors (after --filter and --sort); every format")
    rows.add_argument("--all", action="store_true",
                      help="list every tensor in the table (default: the first 40; csv, markdown and json "
                           "list every tensor)")
    s.add_argument("--wide", action="store_true", help=WIDE_HELP)
    s.add_argument("--no-stats", action="store_true", help="headers only: counts, no tensor data read")
    s.add_argument("--no-quantiles", action="store_true", help="skip the quantile histograms")
    s.add_argument("--histograms", action="store_true",
                   help="with --json: each tensor's compact histogram from the statistics pass (\"histogram\": "
                        "64 equal-width bins over its finite [min, max], exact for 8/16-bit dtypes, bf16 "
                        "resolution otherwise; ScanReport.to_dict(histograms=True))")
    s.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="compute backend (default auto: cuda, then cpu, then numpy; $PARAMKIT_BACKEND overrides auto)")
    s.add_argument("--threads", type=int, default=None,
                   help="cpu worker threads (default: all cores); with the cuda backend, the threads "
                   "that read the file (default: one per core, at most 8)")
    s.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    s.add_argument("--lenient", action="store_true", help="tolerate a malformed __metadata__ (strict=False)")
    s.set_defaults(func=cmd_scan)
    d = sub.add_parser(
        "demo", help="write the built-in demo checkpoint and scan it (no download)",
        description="Write paramkit's built-in demo checkpoint (a 2-layer Llama-style bf16 model with an "
                    "int64 buffer and a config.json, made on the spot: nothing is downloaded) and print "
                    "`paramkit scan` of it.")
    d.add_argument("--dir", default=None,
                   help="where to write it (default $PARAMKIT_DEMO_DIR or ~/.cache/paramkit/demo)")
    d.add_argument("--backend", default="auto", choices=BACKENDS, help="compute backend (as for scan)")
    d.add_argument("--wide", action="store_true", help=WIDE_HELP)
    d.add_argument("--json", action="store_true", help="print the scan report as JSON")
    d.set_defaults(func=cmd_demo)
    doc = sub.add_parser(
        "doctor", help="print build information and which backends can run, and why",
        description="Print the paramkit and Python versions, how the C++ core was built (compiler, "
                    "SIMD in use and compiled, default threads), the CUDA build and devices, and for each "
                    "backend whether it can run here and why.")
    doc.add_argument("--json", action="store_true", help="print the same as JSON")
    doc.set_defaults(func=cmd_doctor)
    for mod in ("cli_plan", "cli_quant", "cli_diff", "cli_report", "cli_ingest"):
        try:
            m = __import__(f"paramkit.{mod}", fromlist=["register"])
        except ImportError:
            continue
        m.register(sub)
    return p


def main(argv=None) -> int:
    from .errors import BackendUnavailable, FormatError
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    # a command whose exit status 1 has a meaning of its own (diff: the models differ) exits error_status on errors
    failed = getattr(args, "error_status", None)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # the reader went away (`paramkit scan --json ... | head`): not an error of ours; point
        # stdout at /dev/null so that the interpreter's final flush does not complain again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except FormatError as e:
        where = f" (file {e.path}" + (f", tensor {e.tensor}" if e.tensor else "") + ")" if e.path else ""
        print(f"paramkit: error [{e.code}]: {e.message}{where}", file=sys.stderr)
        return failed or 2
    except OSError as e:   # I/O: a path that does not exist, permissions, a failed read or write
        what = f"{e.filename}: {e.strerror}" if e.filename is not None and e.strerror else str(e)
        print(f"paramkit: error: {what}", file=sys.stderr)
        return failed or 1
    except (BackendUnavailable, ValueError, TypeError, ImportError, NotImplementedError) as e:
        print(f"paramkit: error: {e}", file=sys.stderr)
        return failed or 1
    except KeyboardInterrupt:
        print("paramkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
