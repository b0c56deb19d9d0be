"""Scan time of a strided view (a transposed bf16 matrix saved with torch.save) against the same values saved
contiguous, on the cpu backend: with the native read layer (the engine reads the view) and with the views
made plain first (paramkit.materialize's temporary file, what the engine had before it read views).
Usage: python bench/view_bench.py [rows cols [rounds [dir]]]   (default 8192 x 16384: 256 MiB of bf16)"""
from __future__ import annotations

import os
import sys
import time

import torch

import paramkit
from paramkit.backends import cpu_backend


def best(path: str, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        paramkit.scan(path, backend="cpu")
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    rows, cols = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (8192, 16384)
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    where = sys.argv[4] if len(sys.argv) > 4 else "."
    x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    view, plain = os.path.join(where, "view_t.pt"), os.path.join(where, "view_plain.pt")
    torch.save({"w": x.t()}, view)
    torch.save({"w": x.t().contiguous()}, plain)
    del x
    paramkit.scan(plain, backend="cpu")   # warm the page cache
    paramkit.scan(view, backend="cpu")
    t_plain = best(plain, rounds)
    t_native = best(view, rounds)
    cpu_backend.CpuEngine.reads_views = False   # views made plain in Python first
    t_materialized = best(view, rounds)
    cpu_backend.CpuEngine.reads_views = True
    mb = rows * cols * 2 / 2**20
    print(f"{mb:.0f} MiB bf16, transposed view vs contiguous, cpu backend, best of {rounds}:")
    print(f"  contiguous {t_plain:.3f} s; view, engine reads it {t_native:.3f} s ({t_native / t_plain:.2f}x); "
          f"view made plain first {t_materialized:.3f} s ({t_materialized / t_plain:.2f}x)")


if __name__ == "__main__":
    main()
