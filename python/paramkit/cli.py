"""The `paramkit` command (also `python -m paramkit`): scan, demo, doctor, plan. Exit codes: 0 on
success, 2 on a FormatError (its code printed), 1 on any other error."""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__


def _human(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def _bytes(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if v != v or v in (float("inf"), float("-inf")):
        return str(v)
    return f"{v:.4g}"


def _console():
    """A rich console for stdout; wide enough for the tensor table when stdout is not a terminal."""
    from rich.console import Console
    return Console() if sys.stdout.isatty() else Console(width=160)


def render_scan(r, console, show_all: bool = False, limit: int = 40) -> None:
    from rich.table import Table

    c = r.counting
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("file", r.path + ("" if len(r.files) == 1 else f"  ({len(r.files)} shards)"))
    head.add_row("format", r.format)
    head.add_row("parameters", f"{r.total_params:,}  ({_human(r.total_params)})")
    if getattr(c, "active_params", None) not in (None, r.total_params):
        head.add_row("active parameters", f"{c.active_params:,}  ({_human(c.active_params)})")
    head.add_row("buffers", f"{r.buffer_elements:,} elements")
    if getattr(c, "quant_state_elements", 0):
        head.add_row("quantization state", f"{c.quant_state_elements:,} elements")
    head.add_row("tensors", f"{len(r.tensors):,}")
    head.add_row("size", _bytes(r.bytes_total))
    for k, v in (c.declared or {}).items():
        head.add_row(f"declared {k}", str(v))
    if r.backend:
        t = r.timing
        head.add_row("statistics", f"{r.backend} backend, {t['stats_s']:.3f} s"
                     + (f", {t['gb_per_s']:.2f} GB/s" if t.get("gb_per_s") else ""))
    else:
        head.add_row("statistics", "skipped (--no-stats)")
    console.print(head)

    dt = Table(title="stored elements by dtype", title_justify="left")
    dt.add_column("dtype"); dt.add_column("elements", justify="right"); dt.add_column("share", justify="right")
    tot = max(r.total_elements, 1)
    for k, v in sorted(r.elements_by_dtype.items(), key=lambda kv: -kv[1]):
        dt.add_row(k, f"{v:,}", f"{100 * v / tot:.1f}%")
    console.print(dt)

    mods = r.groups.get("modules", {})
    if mods:
        gt = Table(title="parameters by top-level module", title_justify="left")
        gt.add_column("module"); gt.add_column("params", justify="right"); gt.add_column("tensors", justify="right")
        for k, v in mods.items():
            gt.add_row(k, f"{v.get('params', 0):,}", str(v.get("tensors", "")))
        console.print(gt)

    tt = Table(title="tensors", title_justify="left")
    cols = ["name", "dtype", "shape", "role"]
    stat_cols = ["min", "max", "mean", "std", "absmax", "zeros", "nan", "inf"] if r.backend else []
    for col in cols:
        tt.add_column(col, overflow="fold", ratio=3 if col == "name" else None,
                      no_wrap=col != "name")
    for col in stat_cols:
        tt.add_column(col, justify="right", no_wrap=True)
    rows = r.tensors if show_all else r.tensors[:limit]
    for t in rows:
        vals = [t.name, t.dtype, "×".join(map(str, t.shape)) or "scalar", t.role]
        s = t.stats
        if stat_cols:
            if s is None:
                vals += ["-"] * len(stat_cols)
            else:
                zeros = f"{100 * s['zeros'] / t.numel:.1f}%" if t.numel else "-"
                vals += [_fmt(s["min"]), _fmt(s["max"]), _fmt(s["mean"]), _fmt(s["std"]), _fmt(s["absmax"]),
                         zeros, str(s["nan"]), str(s["posinf"] + s["neginf"])]
        tt.add_row(*vals)
    console.print(tt)
    if len(rows) < len(r.tensors):
        console.print(f"[dim]… {len(r.tensors) - len(rows)} more tensors (--all shows every one, --json everything)[/dim]")
    if r.aggregates:
        a = r.aggregates
        console.print(f"[bold]all parameters[/bold]: min {_fmt(a['min'])}  max {_fmt(a['max'])}  mean {_fmt(a['mean'])}"
                      f"  std {_fmt(a['std'])}  absmax {_fmt(a['absmax'])}  l2 {_fmt(a['l2'])}"
                      f"  zeros {100 * (a['sparsity'] or 0):.2f}%  NaN {a['nan']}  Inf {a['posinf'] + a['neginf']}"
                      f"  subnormal {a['subnormal']}")
    for f in r.unreferenced_files:
        console.print(f"[yellow]note[/yellow]: {f} is not named by the index: not part of the model")


def cmd_scan(args) -> int:
    from rich.console import Console
    from .api import scan
    r = scan(args.path, stats=not args.no_stats, quantiles=not args.no_quantiles, backend=args.backend,
             threads=args.threads, progress=not args.json and sys.stderr.isatty() or args.progress,
             strict=not args.lenient)
    if args.json:
        print(r.to_json(indent=2))
    else:
        render_scan(r, _console(), show_all=args.all)
    return 0


def cmd_demo(args) -> int:
    from rich.console import Console
    from .api import scan
    from .demo import write_demo_checkpoint
    path = write_demo_checkpoint(args.dir)
    console = _console()
    console.print(f"[dim]wrote the demo checkpoint {path}[/dim]")
    r = scan(path, backend=args.backend)
    if args.json:
        print(r.to_json(indent=2))
    else:
        render_scan(r, console)
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
    info = doctor_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    console = Console()
    g = Table.grid(padding=(0, 2))
    g.add_column(style="bold"); g.add_column()
    g.add_row("paramkit", info["paramkit"])
    g.add_row("python", f"{info['python']} on {info['platform']}")
    b = info["build"]
    if "error" in b:
        g.add_row("C++ core", f"[red]not loaded[/red]: {b['error']}")
    else:
        g.add_row("C++ core", f"{b['compiler']}, {b['build_type']}")
        g.add_row("SIMD", f"{b['isa']} in use (compiled: {', '.join(b['isa_compiled'])})")
        g.add_row("threads", str(b["default_threads"]))
    cu = info["cuda"]
    if cu.get("built") is False:
        g.add_row("CUDA build", "not built (no nvcc at build time, or PARAMKIT_CUDA=OFF)")
    else:
        g.add_row("CUDA build", f"runtime {cu['runtime_version']}, driver {cu['driver_version'] or 'none'}, archs {cu['archs']}")
        devs = ", ".join(f"{d['name']} (sm_{d['compute_capability'].replace('.', '')}, {d['total_memory'] / 2**30:.0f} GiB)"
                         for d in cu["devices"]) or (cu["error"] or "none")
        g.add_row("CUDA devices", devs)
    if info["PARAMKIT_BACKEND"]:
        g.add_row("PARAMKIT_BACKEND", info["PARAMKIT_BACKEND"])
    console.print(g)
    t = Table(title="backends (auto picks the first available)", title_justify="left")
    t.add_column("backend"); t.add_column("available"); t.add_column("why")
    for row in info["backends"]:
        t.add_row(row["name"], "[green]yes[/green]" if row["available"] else "[red]no[/red]", row["reason"])
    console.print(t)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="paramkit", description="Read neural-network weight files: parameter counts, "
                                "per-tensor statistics, quantization error, deployment plans.")
    p.add_argument("--version", action="version", version=f"paramkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("scan", help="count parameters and compute per-tensor statistics",
                       description="Scan a .safetensors file, a model.safetensors.index.json or a directory.")
    s.add_argument("path", help="file, index or directory")
    s.add_argument("--json", action="store_true", help="print the full report as JSON (ScanReport.to_dict())")
    s.add_argument("--no-stats", action="store_true", help="headers only: counts, no tensor data read")
    s.add_argument("--no-quantiles", action="store_true", help="skip the quantile histograms")
    s.add_argument("--backend", default="auto", choices=["auto", "cuda", "cpu", "numpy"],
                   help="compute backend (default auto: cuda, then cpu, then numpy; $PARAMKIT_BACKEND overrides auto)")
    s.add_argument("--threads", type=int, default=None,
                   help="cpu worker threads (default: all cores); with the cuda backend, the threads "
                   "that read the file (default: one per core, at most 8)")
    s.add_argument("--all", action="store_true", help="list every tensor in the table (default: the first 40)")
    s.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    s.add_argument("--lenient", action="store_true", help="tolerate a malformed __metadata__ (strict=False)")
    s.set_defaults(func=cmd_scan)
    d = sub.add_parser("demo", help="write the built-in demo checkpoint and scan it (no download)")
    d.add_argument("--dir", default=None, help="where to write it (default ~/.cache/paramkit/demo)")
    d.add_argument("--backend", default="auto", choices=["auto", "cuda", "cpu", "numpy"])
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_demo)
    doc = sub.add_parser("doctor", help="print build information and which backends can run, and why")
    doc.add_argument("--json", action="store_true")
    doc.set_defaults(func=cmd_doctor)
    for mod in ("cli_plan", "cli_quant"):
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
        return 2
    except (BackendUnavailable, OSError, ValueError, TypeError, ImportError) as e:
        print(f"paramkit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("paramkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
