"""GPU benchmark for bench/gpu_check.sh, one run on a generated bf16 safetensors file (warm page cache):
paramkit cuda end to end (with and without quantiles, with the default quantization schemes) against
the pinned H2D copy ceiling; the statistics kernel on device-resident data against a D2D copy of the
same bytes; the torch baseline (safetensors to cuda + torch reductions); the cpu backend."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

import paramkit
from paramkit import _cuda
from paramkit.backends import get_engine


def make_file(path: str, gib: float) -> None:
    """~gib GiB of bf16 in 64 tensors of equal size plus 64 small norms, written in 64 MiB steps."""
    if os.path.exists(path) and abs(os.path.getsize(path) - gib * 2**30) < 2**26:
        return
    per = int(gib * 2**30) // 2 // 64
    header, off = {}, 0
    for i in range(64):
        header[f"layer{i}.weight"] = {"dtype": "BF16", "shape": [per], "data_offsets": [off, off + 2 * per]}
        off += 2 * per
        header[f"layer{i}.norm"] = {"dtype": "BF16", "shape": [1024], "data_offsets": [off, off + 2048]}
        off += 2048
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    rng = np.random.default_rng(0)
    block = (rng.standard_normal(32 << 20).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        left = off
        while left:
            k = min(left, len(block))
            f.write(block[:k])
            left -= k


def _infos(path: str):
    from paramkit.table import TensorInfo
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return [TensorInfo(k, e["dtype"], tuple(e["shape"]), os.path.abspath(path), 8 + n + e["data_offsets"][0],
                       e["data_offsets"][1] - e["data_offsets"][0], int(np.prod(e["shape"])))
            for k, e in header.items() if k != "__metadata__"]


def timed(fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def torch_baseline(path: str) -> float | None:
    """safetensors load to cuda + torch reductions per tensor (what a user would write), or None
    when torch with CUDA is missing."""
    try:
        import torch
        from safetensors.torch import load_file
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None

    def run():
        out = {}
        for k, t in load_file(path, device="cuda").items():
            f = t.float()
            fin = torch.isfinite(f)
            out[k] = (f.min(), f.max(), f.mean(), f.std(), f.abs().max(), torch.linalg.vector_norm(f),
                      (f == 0).sum(), torch.isnan(f).sum(), torch.isinf(f).sum(), fin.sum())
        torch.cuda.synchronize()
        return out
    return timed(run)


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/pk_gpu_bench.safetensors"
    gib = float(os.environ.get("PK_BENCH_GIB", "2"))
    make_file(path, gib)
    size = os.path.getsize(path)
    with open(path, "rb") as f:                       # warm the page cache
        while f.read(64 << 20):
            pass
    BF16 = 3
    ceiling = _cuda.h2d_ceiling(256 << 20, 8)
    rows = [("pinned H2D ceiling (cudaMemcpyAsync, 2 streams)", None, ceiling, None)]
    t_cuda = timed(lambda: paramkit.scan(path, backend="cuda"))
    rows.append(("paramkit cuda scan, end to end", t_cuda, size / t_cuda / 1e9, "H2D"))
    t_cudaq = timed(lambda: paramkit.scan(path, backend="cuda", quantiles=False))
    rows.append(("paramkit cuda scan, quantiles=False", t_cudaq, size / t_cudaq / 1e9, "H2D"))
    t_quant = timed(lambda: paramkit.scan(path, backend="cuda", quant="default"), reps=2)
    rows.append(("paramkit cuda scan + 9 default quant schemes", t_quant, size / t_quant / 1e9, "H2D"))
    dev = {q: _cuda.device_bench(1 << 30, BF16, q, 5) for q in (True, False)}
    rows.append(("device-to-device copy ceiling (1 GiB bf16)", dev[True]["d2d_ms"] / 1e3, dev[True]["d2d_gbps"], None))
    rows.append(("stats kernel only, device-resident (16-bit histogram)", dev[True]["kernel_ms"] / 1e3,
                 dev[True]["kernel_gbps"], "D2D"))
    rows.append(("stats kernel only, device-resident, quantiles=False", dev[False]["kernel_ms"] / 1e3,
                 dev[False]["kernel_gbps"], "D2D"))
    t_torch = torch_baseline(path)
    if t_torch is not None:
        rows.append(("torch baseline: safetensors -> cuda + reductions", t_torch, size / t_torch / 1e9, None))
    t_cpu = timed(lambda: paramkit.scan(path, backend="cpu"), reps=2)
    rows.append(("paramkit cpu scan, end to end", t_cpu, size / t_cpu / 1e9, None))
    infos = _infos(path)
    same = get_engine("cuda").run_stats(infos) == get_engine("cpu").run_stats(infos)
    print(f"\nfile: {size / 1e9:.2f} GB bf16, {get_engine('cuda').build_info()['device']['name']}")
    print(f"{'what':56s} {'seconds':>9s} {'GB/s':>8s}  ratio")
    d2d = dev[True]["d2d_gbps"]
    for name, t, bw, vs in rows:
        ratio = "" if vs is None else f"{bw / (ceiling if vs == 'H2D' else d2d):.0%} of {vs}"
        print(f"{name:56s} {('-' if t is None else f'{t:9.3f}'):>9s} {bw:8.2f}  {ratio}")
    print(f"targets: end to end >= 80% of H2D: {t_cuda and size / t_cuda / 1e9 / ceiling:.0%}; kernel >= 80% of D2D: "
          f"{dev[True]['kernel_gbps'] / d2d:.0%}; >= 5x torch: "
          + (f"{t_torch / t_cuda:.1f}x" if t_torch is not None else "torch with CUDA not found")
          + f"; cuda vs cpu: {t_cpu / t_cuda:.1f}x; bf16 stats identical to cpu: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
