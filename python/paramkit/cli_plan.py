"""`paramkit plan PATH`: what it takes to run or train a model, from its headers and config.json alone
(no tensor data read): weights memory, KV cache, training memory, GPU fit, FLOPs; --explain shows formulas."""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> argparse.ArgumentParser:
    from .cli_render import drop_order
    from .planning import KV_DTYPES
    p = subparsers.add_parser(
        "plan", help="memory, GPU fit and FLOPs to run or train a model (headers + config.json only)",
        description="Count the model from its headers (and config.json beside it) and plan: weights "
                    "memory per precision and quantization scheme, KV cache, training memory, how many "
                    "of each GPU it needs, FLOPs. GB = 1e9 bytes.")
    p.add_argument("path", help="a weight file (safetensors, PyTorch, NumPy, GGUF), an index, or a model directory")
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
    p.add_argument("--wide", action="store_true",
                   help="every column at full width, whatever the terminal's width (by default the tables fit "
                        f"COLUMNS, the terminal, or 80 columns when piped; the GPU table leaves out "
                        f"{drop_order(gpu_table_columns())} in that order)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--lenient", action="store_true", help="tolerate a malformed __metadata__ (strict=False)")
    p.set_defaults(func=cmd_plan)
    return p


def cmd_plan(args) -> int:
    from .counting import count_table
    from .formats import open_table
    from .planning import plan

    table = open_table(args.path, strict=not args.lenient)
    counting = count_table(table)
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
    render(pl, counting, table.path, explain=args.explain, wide=args.wide)
    return 0


#: GPU-fit columns: (fit key, header, drop rank: the highest goes first when short of width; GPU
#: and bf16 always stay)
GPU_FIT_COLUMNS = (("stored", "as stored", 4), ("bf16", "bf16", None), ("fp8", "fp8/int8", 3), ("int4", "int4", 1),
                   ("train_adam", "train Adam", 5), ("train_qlora", "QLoRA", 6))


def gpu_table_columns() -> list:
    from .cli_render import Col
    return [Col("GPU"), Col("usable", "right", drop=2)] + [Col(label, "right", drop=rank)
                                                          for _, label, rank in GPU_FIT_COLUMNS]
COMPUTE_ROWS = (("inference_flops_per_token_non_embedding", "inference FLOPs / token"),
                ("inference_flops_per_token", "inference FLOPs / token"),
                ("chinchilla_tokens", "Chinchilla-optimal tokens"),
                ("training_flops", "training FLOPs"),
                ("training_h100_hours", "H100-hours"))


def render(pl, counting, path: str, *, explain: bool = False, console=None, wide: bool = False) -> None:
    """Print a plan as tables fitted to the console's width (stdout)."""
    from rich.text import Text

    from .cli_render import Col, fit_table, make_console
    from .planning import fmt_bytes, fmt_num

    con = console or make_console(wide=wide)
    width = con.width
    d = pl.to_dict()
    P = counting.total_params
    act = counting.active_params
    q = counting.quantization or {}
    head = f"{P:,} parameters"
    if counting.moe.get("detected"):
        head += f", {act:,} active" if act is not None else f", active unknown ({counting.active_params_reason})"
    if q.get("method"):
        head += f" · quantized: {q['method']}" + (f" {q['bits']}-bit" if q.get("bits") else "")
    con.print(Text(path, style="bold"))
    con.print(Text(head))
    formula = [Col("formula", fit="wrap", min_width=24)] if explain else []

    rows = []
    for r in d["weights"]:
        bpw = r.get("bits_per_weight")
        rows.append([r["label"], "" if bpw is None else f"{bpw:.4g}", fmt_bytes(r["bytes"]["value"])]
                    + ([r["bytes"]["formula"]] if explain else []))
    con.print(fit_table([Col("precision / scheme"), Col("bits/weight", "right"), Col("memory", "right")] + formula,
                        rows, width, title="Weights memory", wide=wide))

    kv = d["kv_cache"]
    if kv.get("applicable"):
        line = (f"KV cache ({kv['kv_dtype']}, {kv['context']:,} tokens × batch {kv['batch']}): "
                f"{fmt_bytes(kv['total']['value'])}; {fmt_bytes(kv['per_token']['value'])} per token "
                f"({kv['layers']} layers, {kv['kv_heads']} kv heads × {kv['head_dim']} head_dim"
                + (f", {kv['sliding_window_layers']} sliding-window layers capped at "
                   + "/".join(f"{w:,}" for w in kv["sliding_window"])
                   if kv.get("sliding_window_layers") else "")
                + (", MLA latent" if kv.get("kind") == "mla" else "") + ")")
        con.print(Text(line))
        if explain:
            con.print(Text(f"  per token: {kv['per_token']['formula']}\n  total: {kv['total']['formula']}"))
    else:
        con.print(Text(f"KV cache: not included ({kv.get('reason')})"))

    rows = []
    for r in d["training"]:
        rows.append([r["label"], fmt_bytes(r["bytes"]["value"])]
                    + ([r["bytes"]["formula"] + (f"; adapters: {r['adapter_params']['formula']}"
                                                 if "adapter_params" in r else "")] if explain else []))
    con.print(fit_table([Col("setup", fit="wrap", min_width=24), Col("memory", "right")] + formula, rows, width,
                        title="Training memory (activations excluded)", wide=wide))

    g = d["gpu_fit"]
    rows = []
    for row in g["rows"]:
        cells = [row["gpu"], fmt_bytes(row["usable"]["value"])]
        for k, _, _ in GPU_FIT_COLUMNS:
            c = row["fit"][k]["count"]
            cells.append("—" if c is None else (Text("1 ✓", "green") if c == 1 else f"{c}"))
        rows.append(cells)
    con.print(fit_table(gpu_table_columns(), rows, width,
                        title=f"GPUs needed (weights + KV cache; reserve: {g['overhead']['formula']})", wide=wide))
    if explain:
        for row in g["rows"]:
            con.print(Text(f"  {row['gpu']} bf16: {row['fit']['bf16']['formula']}"))

    c = d["compute"]
    rows = []
    for key, label in COMPUTE_ROWS:
        v = c[key]["value"]
        rows.append([label + (f", {c[key]['label']}" if c[key].get("label") and "FLOPs" in label else ""),
                     fmt_num(v) if key != "training_h100_hours" else (f"{v:,.0f}" if v >= 10 else f"{v:.3g}")]
                    + ([c[key]["formula"]] if explain else []))
    con.print(fit_table([Col("figure", fit="wrap", min_width=24), Col("value", "right")] + formula, rows, width,
                        title="Compute", wide=wide))
    if explain:
        con.print(Text("training FLOPs and H100-hours use 6 × all parameters × tokens (embeddings included, "
                       "the Chinchilla convention); the non-embedding FLOPs per token are Kaplan et al.'s 2N, "
                       "the all-parameters figure an upper bound", style="dim"))
    for n in d["notes"] + list(counting.notes):
        con.print(Text.assemble(("note:", "yellow"), f" {n}"))
    if explain:
        for a in d["assumptions"]:
            con.print(Text(f"assumes: {a}", style="dim"))
