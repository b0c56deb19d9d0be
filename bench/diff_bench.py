"""Benchmark of paramkit.diff (issue 17): two safetensors files of about SIZE_MB each (a base and a "fine-tuned"
copy: most tensors changed by small noise, a few identical), warm page cache, against `cat` of both files and the
baseline a user would write (safetensors load both + NumPy per tensor). GB/s count the bytes of both inputs.

    PYTHONPATH=python python bench/diff_bench.py [--size-mb 100] [--dtype f32|bf16] [--dir /tmp/paramkit-diff-bench]

Rows: cat of both, the cpu engine's native pass (identical copy; a changed pair, default threads and 1), the numpy
backend's pass, and the naive baseline.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_bench import timed  # noqa: E402  (the median-of-N timer the other benches use)


def make_pair(d: str, size_mb: int, dtype: str) -> tuple[str, str, str]:
    import ml_dtypes
    from safetensors.numpy import save_file
    np_dtype = {"f32": np.float32, "bf16": ml_dtypes.bfloat16}[dtype]
    a_path, b_path, c_path = (os.path.join(d, f"{n}_{dtype}_{size_mb}MB.safetensors") for n in ("base", "tuned", "copy"))
    if all(os.path.exists(p) for p in (a_path, b_path, c_path)):
        return a_path, b_path, c_path
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    es = np.dtype(np_dtype).itemsize
    n_tensors = 40
    per = size_mb * 10**6 // es // n_tensors
    cols = 1024
    a, b = {}, {}
    for i in range(n_tensors):
        x = (rng.standard_normal((per // cols, cols), dtype=np.float32) * 0.02)
        a[f"model.layers.{i}.weight"] = x.astype(np_dtype)
        y = x if i % 8 == 0 else x + rng.standard_normal(x.shape, dtype=np.float32) * 1e-4
        b[f"model.layers.{i}.weight"] = y.astype(np_dtype)
    save_file(a, a_path)
    save_file(b, b_path)
    save_file(a, c_path)
    return a_path, b_path, c_path


def naive(a_path: str, b_path: str) -> dict:
    """What a user writes: load both files whole, then per tensor the metrics in float64 NumPy."""
    from safetensors.numpy import load_file
    A, B = load_file(a_path), load_file(b_path)
    out = {}
    for k in A:
        if k not in B:
            continue
        x, y = A[k].astype(np.float64).ravel(), B[k].astype(np.float64).ravel()
        d = x - y
        sse, sa, sb = float(d @ d), float(x @ x), float(y @ y)
        out[k] = {"max_abs_diff": float(np.abs(d).max()), "mean_abs_diff": float(np.abs(d).mean()),
                  "rel_l2": math.sqrt(sse / sa), "cosine": float(x @ y) / math.sqrt(sa * sb),
                  "sqnr_db": 10 * math.log10(sa / sse) if sse else math.inf,
                  "frac_changed": float(np.count_nonzero(d)) / d.size,
                  "delta": {"min": float(d.min()), "max": float(d.max()), "mean": float(d.mean()),
                            "std": float(d.std())}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--dtype", default="f32", choices=("f32", "bf16"))
    ap.add_argument("--dir", default="/tmp/paramkit-diff-bench")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slow-rounds", type=int, default=1, help="rounds of the numpy pass and the naive baseline")
    args = ap.parse_args()
    import paramkit
    a, b, c = make_pair(args.dir, args.size_mb, args.dtype)
    both = os.path.getsize(a) + os.path.getsize(b)
    subprocess.run(["cat", a, b, c], stdout=subprocess.DEVNULL, check=True)     # warm the page cache
    rows = [("cat A B > /dev/null", timed(lambda: subprocess.run(["cat", a, b], stdout=subprocess.DEVNULL,
                                                                   check=True), args.rounds))]
    rows.append(("paramkit.diff(A, copy of A), cpu: identical",
                 timed(lambda: paramkit.diff(a, c, backend="cpu"), args.rounds)))
    rows.append(("paramkit.diff(A, B), cpu (native), default threads",
                 timed(lambda: paramkit.diff(a, b, backend="cpu"), args.rounds)))
    rows.append(("paramkit.diff(A, B), cpu (native), threads=1",
                 timed(lambda: paramkit.diff(a, b, backend="cpu", threads=1), args.rounds)))
    slow = max(1, args.slow_rounds)
    rows.append(("paramkit.diff(A, B), numpy pass", timed(lambda: paramkit.diff(a, b, backend="numpy"), slow)))
    rows.append(("naive: safetensors load both + numpy", timed(lambda: naive(a, b), slow)))
    base = rows[-1][1]
    print(f"files: {os.path.basename(a)}, {os.path.basename(b)}: {both / 1e9:.3f} GB together, {args.dtype}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; median of {args.rounds} rounds "
          f"({args.slow_rounds} for the numpy pass and the naive baseline), warm page cache")
    print("| approach | seconds | GB/s (both inputs) | cat / approach | x naive |")
    print("|---|---:|---:|---:|---:|")
    for name, s in rows:
        print(f"| {name} | {s:.3f} | {both / s / 1e9:.2f} | {rows[0][1] / s:.2f} | {base / s:.1f}x |")


if __name__ == "__main__":
    main()
