"""Ingest benchmark (issue 16): header-only ingestion of N sparse safetensors files (models/s) by paramkit ingest's
local process pool, a Dask LocalCluster(2) and the naive `for p in paths: paramkit.scan(p, stats=False)` loop; and
a statistics ingestion of the multi-GB bench files (GB/s) against one paramkit.scan of the same files, same run."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"


def _sparse_model(path: Path, layers: int) -> None:
    """A small Llama-like header (a few dozen bf16 tensors of real shapes) over a hole: no data written."""
    tensors = [("model.embed_tokens.weight", "BF16", [32000, 512])]
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors += [(p + "input_layernorm.weight", "BF16", [512]), (p + "self_attn.q_proj.weight", "BF16", [512, 512]),
                    (p + "self_attn.k_proj.weight", "BF16", [128, 512]), (p + "self_attn.v_proj.weight", "BF16", [128, 512]),
                    (p + "self_attn.o_proj.weight", "BF16", [512, 512]), (p + "mlp.gate_proj.weight", "BF16", [1408, 512]),
                    (p + "mlp.up_proj.weight", "BF16", [1408, 512]), (p + "mlp.down_proj.weight", "BF16", [512, 1408])]
    header, off = {}, 0
    for name, dt, shape in tensors:
        nb = 2
        for d in shape:
            nb *= d
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + nb]}
        off += nb
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
    os.truncate(path, 8 + len(hb) + off)


def sparse_corpus(n: int) -> Path:
    d = CACHE / f"ingest_{n}_sparse"
    if d.is_dir() and len(list(d.iterdir())) == n:
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for k in range(n):
        _sparse_model(d / f"m{k:06d}.safetensors", 2 + k % 6)
    return d


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000, help="sparse files (default 10,000)")
    ap.add_argument("--stats-files", nargs="*", default=None,
                    help="files for the statistics row (default: scan_bench's bench/.cache/*.safetensors)")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent / "python"))
    import paramkit
    corpus = sparse_corpus(args.n)
    paths = sorted(str(p) for p in corpus.iterdir())
    rows = []
    naive = timed(lambda: [paramkit.scan(p, stats=False) for p in paths])
    rows.append(("naive loop: for p in paths: paramkit.scan(p, stats=False)", naive))
    with tempfile.TemporaryDirectory() as tmp:
        for label, kw in (("paramkit ingest --no-stats, --jobs 1 (this process)", {"jobs": 1}),
                          (f"paramkit ingest --no-stats, local pool (--jobs {os.cpu_count()})", {}),
                          ("paramkit ingest --no-stats, --workers 2 (Dask LocalCluster, incl. its start)",
                           {"workers": 2})):
            out = os.path.join(tmp, label.split()[-1].strip("()") + str(len(rows)))
            s = None

            def run():
                nonlocal s
                s = paramkit.ingest([str(corpus)], out, stats=False, resume=False, **kw)
            rows.append((label, timed(run)))
            assert s.ok == args.n, s.line()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; {args.n:,} sparse safetensors files (header only)\n")
    print("| approach | s | models/s | / naive loop |\n|---|---:|---:|---:|")
    for label, s in rows:
        print(f"| {label} | {s:.2f} | {args.n / s:,.0f} | {naive / s:.2f}x |")
    files = args.stats_files if args.stats_files is not None else sorted(
        str(p) for p in CACHE.glob("decoder_*.safetensors"))
    if files:
        total = sum(os.path.getsize(f) for f in files)
        for f in files:
            paramkit.scan(f)        # warm the page cache
        one = timed(lambda: [paramkit.scan(f) for f in files])
        with tempfile.TemporaryDirectory() as tmp:
            ing = timed(lambda: paramkit.ingest(files, os.path.join(tmp, "o"), jobs=1, resume=False))
        print(f"\nstatistics: {len(files)} files, {total / 1e9:.2f} GB, warm page cache")
        print("| approach | s | GB/s |\n|---|---:|---:|")
        print(f"| paramkit.scan of each file | {one:.2f} | {total / 1e9 / one:.2f} |")
        print(f"| paramkit ingest --jobs 1 (statistics + Parquet rows) | {ing:.2f} | {total / 1e9 / ing:.2f} "
              f"({one / ing:.2f}x of scan) |")


if __name__ == "__main__":
    main()
