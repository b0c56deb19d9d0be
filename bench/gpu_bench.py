"""GPU benchmark for bench/gpu_check.sh, one run on a generated bf16 safetensors file (warm page cache):
paramkit cuda end to end (with and without quantiles, with the default quantization schemes, with 1, 4
and all-core reader threads) against the pinned H2D copy ceiling and the page-cache read ceiling
(preadv threads, no GPU); the statistics kernel on device-resident data against a D2D copy of the
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


def read_ceiling(path: str, threads: int, piece: int = 8 << 20) -> float:
    """GB/s of reading the (cached) file with `threads` threads of os.preadv in `piece`-byte reads, into
    reused buffers: what the engine's reader threads do before the H2D copy, without the GPU. Best of 3."""
    import itertools
    import threading
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        def once():
            offsets = itertools.count(0, piece)     # next() is atomic under the GIL; preadv releases it
            def worker():
                mv = memoryview(bytearray(piece))
                while (off := next(offsets)) < size:
                    os.preadv(fd, [mv[:min(piece, size - off)]], off)
            ts = [threading.Thread(target=worker) for _ in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        return size / timed(once) / 1e9
    finally:
        os.close(fd)


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
    # the other bound of a file -> GPU scan: reading the page cache (perf.md: the slower of the two)
    ncpu = os.cpu_count() or 1
    reads = {n: read_ceiling(path, n) for n in sorted({1, 4, min(8, ncpu), ncpu})}
    for n, bw in reads.items():
        rows.append((f"page-cache read ceiling, {n} thread{'s' * (n > 1)} of 8 MiB preadv", None, bw, None))
    host = max(reads.values())
    t_cuda = timed(lambda: paramkit.scan(path, backend="cuda"))
    readers = get_engine("cuda").last_run["threads"]   # the default reader count of those scans
    rows.append((f"paramkit cuda scan, end to end ({readers} readers)", t_cuda, size / t_cuda / 1e9, "H2D"))
    for n in sorted({1, 4, min(ncpu, 64)} - {readers}):
        t = timed(lambda: paramkit.scan(path, backend="cuda", threads=n), reps=2)
        rows.append((f"paramkit cuda scan, threads={n} ({n} reader{'s' * (n > 1)})", t, size / t / 1e9, "H2D"))
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
    bound = min(ceiling, host)
    print(f"bound of a file -> GPU scan: min(H2D {ceiling:.1f}, page-cache read {host:.1f}) = {bound:.1f} GB/s; "
          f"end to end reaches {size / t_cuda / 1e9 / bound:.0%} of it")
    print(f"targets: end to end >= 80% of H2D: {t_cuda and size / t_cuda / 1e9 / ceiling:.0%}; kernel >= 80% of D2D: "
          f"{dev[True]['kernel_gbps'] / d2d:.0%}; >= 5x torch: "
          + (f"{t_torch / t_cuda:.1f}x" if t_torch is not None else "torch with CUDA not found")
          + f"; cuda vs cpu: {t_cpu / t_cuda:.1f}x; bf16 stats identical to cpu: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
