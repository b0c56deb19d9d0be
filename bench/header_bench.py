"""Header-only benchmark (issue 13): how long paramkit takes to read a safetensors header into a TensorTable,
count it and scan(stats=False) it, against json.loads of the same header and safetensors.safe_open in one run."""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"

# dtypes of the layout and the torch dtype that writes them
_TORCH = {"BF16": "bfloat16", "F32": "float32", "F16": "float16", "I64": "int64", "BOOL": "bool", "U8": "uint8",
          "F8_E4M3": "float8_e4m3fn"}


def moe_layout(n: int, experts: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """n tensors of a MoE decoder with tiny shapes: per layer norms (F32), attention (BF16), a router, a scalar
    (F32, shape []), `experts` x 3 expert matrices (BF16; every 4th expert FP8 with an F32 scale), and every
    tenth layer a zero-size U8 tensor and a BOOL mask; an embedding, position_ids (I64) and a final norm."""
    out = [("model.embed_tokens.weight", "BF16", (32, 16)), ("model.position_ids", "I64", (1, 16))]
    layer = 0
    while len(out) < n - 1:
        p = f"model.layers.{layer}."
        block = [(p + "input_layernorm.weight", "F32", (16,)), (p + "post_attention_layernorm.weight", "F32", (16,)),
                 (p + "self_attn.q_proj.weight", "BF16", (16, 16)), (p + "self_attn.k_proj.weight", "BF16", (4, 16)),
                 (p + "self_attn.v_proj.weight", "BF16", (4, 16)), (p + "self_attn.o_proj.weight", "BF16", (16, 16)),
                 (p + "mlp.gate.weight", "BF16", (experts, 16)), (p + "self_attn.rotary_emb.scale", "F32", ())]
        if layer % 10 == 0:
            block += [(p + "mlp.experts.unused_bias", "U8", (0, 16)), (p + "self_attn.mask", "BOOL", (1, 4, 4))]
        for e in range(experts):
            q = f"{p}mlp.experts.{e}."
            for proj, shape in (("gate_proj", (8, 16)), ("up_proj", (8, 16)), ("down_proj", (16, 8))):
                if e % 4 == 3:
                    block += [(q + proj + ".weight", "F8_E4M3", shape), (q + proj + ".weight_scale", "F32", ())]
                else:
                    block.append((q + proj + ".weight", "BF16", shape))
        out += block[:n - 1 - len(out)]
        layer += 1
    out.append(("model.norm.weight", "F32", (16,)))
    return out


def ensure_file(n: int) -> Path:
    """The n-tensor checkpoint, written once by the safetensors package itself (its header order and padding)."""
    path = CACHE / f"header_{n}_tensors.safetensors"
    if path.exists():
        return path
    import torch
    from safetensors.torch import save_file
    CACHE.mkdir(parents=True, exist_ok=True)
    layout = moe_layout(n, 8 if n <= 10_000 else 64)
    assert len(layout) == n and len({name for name, _, _ in layout}) == n
    tensors = {name: torch.zeros(shape, dtype=getattr(torch, _TORCH[dt])) for name, dt, shape in layout}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    return path


def header_of(path: Path) -> bytes:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return f.read(n)


def approaches(path: Path):
    """(label, setup() -> arg, timed(arg)) per timed approach; setup runs untimed before each timing."""
    import paramkit
    from paramkit.counting import count_table
    from paramkit.formats import open_table
    from safetensors import safe_open
    raw = header_of(path)
    p = str(path)

    def st_keys(_):
        with safe_open(p, framework="numpy") as f:
            return f.keys()

    def loads_gc_paused(b):
        gc.disable()
        try:
            return json.loads(b)
        finally:
            gc.enable()

    return [("json.loads(header bytes)", lambda: raw, json.loads),
            ("json.loads(header bytes), gc paused", lambda: raw, loads_gc_paused),
            ("safetensors.safe_open(...).keys()", lambda: None, st_keys),
            ("paramkit.formats.open_table", lambda: p, open_table),
            ("table.tensors, first access (TensorInfo objects)", lambda: open_table(p), lambda t: t.tensors),
            ("paramkit.counting.count_table (of open_table's table)", lambda: open_table(p), count_table),
            ("paramkit.scan(path, stats=False)", lambda: p, lambda q: paramkit.scan(q, stats=False))]


def measure(path: Path, rounds: int) -> list[dict]:
    """Median (and min) milliseconds of each approach over `rounds` interleaved rounds after one warm-up round."""
    items = approaches(path)
    times: dict[str, list[float]] = {label: [] for label, _, _ in items}
    for r in range(rounds + 1):
        for label, setup, fn in items:
            arg = setup()
            gc.collect()
            t = time.perf_counter()
            fn(arg)
            dt = time.perf_counter() - t
            if r:
                times[label].append(dt * 1e3)
            del arg
    return [{"approach": k, "median_ms": statistics.median(v), "min_ms": min(v), "rounds": len(v)}
            for k, v in times.items()]


def run_all(sizes: list[int], rounds_small: int, rounds_big: int) -> dict:
    out = {}
    for n in sizes:
        path = ensure_file(n)
        rows = measure(path, rounds_small if n <= 10_000 else rounds_big)
        out[str(n)] = {"file": path.name, "size": path.stat().st_size, "header_bytes": len(header_of(path)),
                       "rows": rows}
    return out


def paramkit_build() -> str:
    import paramkit
    try:
        from paramkit import _core  # noqa: F401
        native = "paramkit._core loaded"
    except ImportError:
        native = "no paramkit._core"
    return f"paramkit from {Path(paramkit.__file__).parent} ({native})"


def table(results: dict, label: str) -> list[str]:
    lines = [f"| {label} | tensors | header | approach | median ms | min ms | / json.loads | / safe_open |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for n, res in results.items():
        rows = {r["approach"]: r for r in res["rows"]}
        js = rows["json.loads(header bytes)"]["median_ms"]
        so = rows["safetensors.safe_open(...).keys()"]["median_ms"]
        for r in res["rows"]:
            lines.append(f"| {res['file']} | {int(n):,} | {res['header_bytes'] / 1e6:.2f} MB | {r['approach']} | "
                         f"{r['median_ms']:.2f} | {r['min_ms']:.2f} | {r['median_ms'] / js:.2f} | "
                         f"{r['median_ms'] / so:.2f} |")
    return lines


def summary(runs) -> list[str]:
    """Targets of perf.md / issue 13 on the last run, and before -> after where a --before run exists."""
    def ms(run, n, approach):
        return next(r["median_ms"] for r in run["results"][n]["rows"] if r["approach"] == approach)
    last = runs[-1][1]
    out = []
    for n, limit in (("1000", 2.0), ("100000", 100.0)):
        if n not in last["results"]:
            continue
        for approach in ("paramkit.formats.open_table", "paramkit.scan(path, stats=False)"):
            got = ms(last, n, approach)
            verdict = "PASS" if got < limit else "MISS"
            before = f" (before: {ms(runs[0][1], n, approach):.2f} ms)" if len(runs) > 1 else ""
            out.append(f"{verdict}  {int(n):,} tensors, {approach} < {limit:g} ms: {got:.2f} ms{before}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="1000,10000,100000",
                    help="tensor counts of the files (default 1000,10000,100000)")
    ap.add_argument("--rounds", type=int, default=30, help="rounds for files up to 10,000 tensors (default 30)")
    ap.add_argument("--rounds-big", type=int, default=7, help="rounds for larger files (default 7)")
    ap.add_argument("--before", metavar="DIR", help="also time the paramkit package under DIR (a python/ directory "
                    "of another checkout, e.g. the commit before a change) in a child process of the same run")
    ap.add_argument("--json", metavar="FILE", help="write the raw results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.worker:
        print(json.dumps({"build": paramkit_build(), "results": run_all(sizes, args.rounds, args.rounds_big)}))
        return
    runs = []
    if args.before:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(args.before))
        child = subprocess.run([sys.executable, __file__, "--worker", "--sizes", args.sizes, "--rounds",
                                str(args.rounds), "--rounds-big", str(args.rounds_big)], env=env, check=True,
                               capture_output=True, text=True)
        runs.append(("before", json.loads(child.stdout)))
    runs.append(("this checkout", {"build": paramkit_build(), "results": run_all(sizes, args.rounds,
                                                                                args.rounds_big)}))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}")
    for label, run in runs:
        print(f"\n{label}: {run['build']}\n")
        print("\n".join(table(run["results"], label)))
    print("\n" + "\n".join(summary(runs)))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(runs), indent=1))


if __name__ == "__main__":
    main()
