"""`paramkit plan PATH`: what it takes to run or train a model, from its headers and config.json alone
(no tensor data read): weights memory, KV cache, training memory, GPU fit, FLOPs; --explain shows formulas."""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> argparse.ArgumentParser:
    from .planning import KV_DTYPES
    p = subparsers.add_parser(
        "plan", help="memory, GPU fit and FLOPs to run or train a model (headers + config.json only)",
        description="Count the model from its headers (and config.json beside it) and plan: weights "
                    "memory per precision and quantization scheme, KV cache, training memory, how many "
                    "of each GPU it needs, FLOPs. GB = 1e9 bytes.")
    p.add_argument("path", help="a .safetensors file, a model.safetensors.index.json, or a model directory")
    p.add_argument("--context", type=int, default=8192, help="tokens of context for the KV cache (default 8192)")
    p.add_argument("--batch", type=int, default=1, help="concurrent sequences (default 1)")
    p.add_argument("--kv-dtype", default="bf16", choices=sorted(KV_DTYPES), metavar="D",
                   help="KV cache element type: " + ", ".join(sorted(KV_DTYPES)) + " (default bf16)")
    p.add_argument("--gpu", action="append", default=None, metavar="NAME",
                   help="only these GPUs (repeatable; 'h100', '4090', or a custom 'NAME:GB')")
    p.add_argument("--overhead", type=float, default=0.10,
                   help="per-GPU reserve: a fraction of its memory (<1, default 0.10) or bytes (>=1)")
    p.add_argument("--lora-rank", type=int, default=16, help="LoRA rank for the fine-tuning rows (default 16)")
    p.add_argument("--train-tokens", type=float, default=None,
                   help="tokens for the training-compute figure (default Chinchilla: 20 × params)")
    p.add_argument("--explain", action="store_true", help="show the formula behind every figure")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--lenient", action="store_true", help="tolerate a malformed __metadata__ (strict=False)")
    p.set_defaults(func=cmd_plan)
    return p


def cmd_plan(args) -> int:
    from .counting import count_table
    from .formats import open_table
    from .planning import plan

    table = open_table(args.path, strict=not args.lenient)
    counting = count_table(table, tie_check="none")
    try:
        pl = plan(counting, table.config, context=args.context, batch=args.batch,
                  kv_dtype=args.kv_dtype, gpus=args.gpu, overhead=args.overhead,
                  lora_rank=args.lora_rank, train_tokens=args.train_tokens)
    except ValueError as e:
        import sys
        print(f"paramkit plan: {e}", file=sys.stderr)
        return 1
    if args.json:
        out = {"path": table.path, "format": table.format,
               "quantization": counting.quantization, "plan": pl.to_dict()}
        print(json.dumps(out, indent=2, default=str))
        return 0
    render(pl, counting, table.path, explain=args.explain)
    return 0


def render(pl, counting, path: str, *, explain: bool = False, console=None) -> None:
    """Print a plan with rich tables (stdout)."""
    from rich.console import Console
    from rich.table import Table

    from .planning import fmt_bytes, fmt_num

    con = console or Console()
    d = pl.to_dict()
    P = counting.total_params
    act = counting.active_params
    q = counting.quantization or {}
    head = f"[bold]{path}[/bold]\n{P:,} parameters"
    if counting.moe.get("detected"):
        head += f", {act:,} active" if act is not None else f", active unknown ({counting.active_params_reason})"
    if q.get("method"):
        head += f" · quantized: {q['method']}" + (f" {q['bits']}-bit" if q.get("bits") else "")
    con.print(head)

    w = Table(title="Weights memory", title_justify="left")
    w.add_column("precision / scheme")
    w.add_column("bits/weight", justify="right")
    w.add_column("memory", justify="right")
    if explain:
        w.add_column("formula", overflow="fold")
    for r in d["weights"]:
        bpw = r.get("bits_per_weight")
        cells = [r["label"], "" if bpw is None else f"{bpw:.4g}", fmt_bytes(r["bytes"]["value"])]
        if explain:
            cells.append(r["bytes"]["formula"])
        w.add_row(*cells)
    con.print(w)

    kv = d["kv_cache"]
    if kv.get("applicable"):
        line = (f"KV cache ({kv['kv_dtype']}, {kv['context']:,} tokens × batch {kv['batch']}): "
                f"[bold]{fmt_bytes(kv['total']['value'])}[/bold]; {fmt_bytes(kv['per_token']['value'])} per token "
                f"({kv['layers']} layers, {kv['kv_heads']} kv heads × {kv['head_dim']} head_dim"
                + (f", {kv['sliding_window_layers']} sliding-window layers capped at "
                   + "/".join(f"{w:,}" for w in kv["sliding_window"])
                   if kv.get("sliding_window_layers") else "")
                + (", MLA latent" if kv.get("kind") == "mla" else "") + ")")
        con.print(line)
        if explain:
            con.print(f"  per token: {kv['per_token']['formula']}\n  total: {kv['total']['formula']}")
    else:
        con.print(f"KV cache: not included ({kv.get('reason')})")

    t = Table(title="Training memory (activations excluded)", title_justify="left")
    t.add_column("setup")
    t.add_column("memory", justify="right")
    if explain:
        t.add_column("formula", overflow="fold")
    for r in d["training"]:
        cells = [r["label"], fmt_bytes(r["bytes"]["value"])]
        if explain:
            cells.append(r["bytes"]["formula"] + (f"; adapters: {r['adapter_params']['formula']}"
                                                  if "adapter_params" in r else ""))
        t.add_row(*cells)
    con.print(t)

    g = d["gpu_fit"]
    keys = [("stored", "as stored"), ("bf16", "bf16"), ("fp8", "fp8/int8"), ("int4", "int4"),
            ("train_adam", "train Adam"), ("train_qlora", "QLoRA")]
    gt = Table(title=f"GPUs needed (weights + KV cache; reserve: {g['overhead']['formula']})",
               title_justify="left")
    gt.add_column("GPU")
    gt.add_column("usable", justify="right")
    for _, label in keys:
        gt.add_column(label, justify="right")
    for row in g["rows"]:
        cells = [row["gpu"], fmt_bytes(row["usable"]["value"])]
        for k, _ in keys:
            f = row["fit"][k]
            c = f["count"]
            cells.append("—" if c is None else ("[green]1 ✓[/green]" if c == 1 else f"{c}"))
        gt.add_row(*cells)
    con.print(gt)
    if explain:
        for row in g["rows"]:
            con.print(f"  {row['gpu']} bf16: {row['fit']['bf16']['formula']}")

    c = d["compute"]
    ct = Table(title="Compute", title_justify="left")
    ct.add_column("figure")
    ct.add_column("value", justify="right")
    if explain:
        ct.add_column("formula", overflow="fold")
    for key, label in (("inference_flops_per_token", "inference FLOPs / token"),
                       ("chinchilla_tokens", "Chinchilla-optimal tokens"),
                       ("training_flops", "training FLOPs"),
                       ("training_h100_hours", "H100-hours")):
        v = c[key]["value"]
        cells = [label, fmt_num(v) if key != "training_h100_hours" else
                 (f"{v:,.0f}" if v >= 10 else f"{v:.3g}")]
        if explain:
            cells.append(c[key]["formula"])
        ct.add_row(*cells)
    con.print(ct)
    for n in d["notes"] + list(counting.notes):
        con.print(f"[yellow]note:[/yellow] {n}")
    if explain:
        for a in d["assumptions"]:
            con.print(f"[dim]assumes: {a}[/dim]")
