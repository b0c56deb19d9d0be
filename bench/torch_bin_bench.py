"""PyTorch .bin benchmark (issue 13): the same bf16 decoder checkpoint as safetensors and as a torch.save zip,
scanned by paramkit, against torch.load(mmap=True, weights_only=True) + torch reductions, warm page cache, in
one run; prints a markdown table of GB/s and the ratios (.bin vs .safetensors, paramkit vs torch)."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

try:
    import paramkit
except ImportError:  # run from a source checkout without PYTHONPATH=python
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    import paramkit

HERE = Path(__file__).resolve().parent


def build(cache: Path, size_gb: float) -> tuple[Path, Path]:
    """model.safetensors and pytorch_model.bin holding the same tensors (scan_bench's decoder layout)."""
    import torch
    from safetensors.torch import save_file
    sys.path.insert(0, str(HERE))
    from scan_bench import decoder_layout
    d = cache / f"torch_bin_{size_gb:g}gb"
    st, pt = d / "model.safetensors", d / "pytorch_model.bin"
    if st.exists() and pt.exists():
        return st, pt
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    sd = {name: (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)
          for name, _, shape in decoder_layout(int(size_gb * 1e9 / 2), "BF16")}
    save_file(sd, str(st))
    torch.save(sd, pt)
    return st, pt


def torch_baseline(path: Path) -> None:
    """What a benchmark script does without paramkit: load the state dict (mmap, weights only) and reduce
    every tensor to min, max, mean, std, absmax and the zero / NaN / Inf counts in float32."""
    import torch
    sd = torch.load(path, mmap=True, weights_only=True)
    for t in sd.values():
        x = t.float()
        (x.min(), x.max(), x.mean(), x.std(), x.abs().max(), (x == 0).sum(), x.isnan().sum(), x.isinf().sum())


def timed_interleaved(fns: dict, repeat: int) -> dict:
    """Median seconds of each callable over `repeat` rounds, the callables taking turns within a round (so a
    busy spell of the machine hits them alike); one warm-up call each first."""
    for fn in fns.values():
        fn()
    runs = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            runs[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in runs.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-gb", type=float, default=1.0, help="checkpoint size in GB (default 1)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cache-dir", default=str(HERE / ".cache"))
    args = ap.parse_args(argv)
    st, pt = build(Path(args.cache_dir), args.size_gb)
    size = os.path.getsize(st)
    rows = list(timed_interleaved({
        "paramkit scan, model.safetensors": lambda: paramkit.scan(st, quantiles=False),
        "paramkit scan, pytorch_model.bin": lambda: paramkit.scan(pt, quantiles=False),
        "paramkit header only, pytorch_model.bin": lambda: paramkit.scan(pt, stats=False),
        "torch.load(mmap, weights_only) + reductions": lambda: torch_baseline(pt),
    }, args.repeat).items())
    base = dict(rows)
    r = paramkit.scan(pt, quantiles=False)
    print(f"file: {size / 1e9:.2f} GB bf16, {len(r.tensors)} tensors; backend {r.backend}; "
          f"median of {args.repeat}, warm page cache")
    print("| what | seconds | GB/s |")
    print("| --- | --- | --- |")
    for name, s in rows:
        print(f"| {name} | {s:.3f} | {size / s / 1e9:.2f} |")
    bin_s = base["paramkit scan, pytorch_model.bin"]
    print(f"\n.bin / .safetensors time: {bin_s / base['paramkit scan, model.safetensors']:.3f}; "
          f"torch baseline / paramkit .bin: {base['torch.load(mmap, weights_only) + reductions'] / bin_s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
