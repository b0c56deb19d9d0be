"""Remote-weights benchmark (issue 15), all on the loopback range server of tests/http_server.py: header-only scans
of many safetensors / GGUF / PyTorch files (requests, bytes and wall time per file, files/s, with and without the
header cache), and full statistics over HTTP against a local scan and a plain download of the same file."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
try:
    import paramkit  # noqa: F401
except ImportError:
    sys.path.insert(0, str(HERE.parent / "python"))
import numpy as np  # noqa: E402

import paramkit  # noqa: E402,F811
from http_server import RangeServer  # noqa: E402


def _safetensors(path: str, tensors: int) -> None:
    from safetensors.numpy import save_file
    save_file({f"model.layers.{i // 10}.mlp.experts.{i % 10}.weight": np.zeros((4, 4), np.float16)
               for i in range(tensors)}, path)


def _gguf(path: str, tokens: int) -> None:
    import gguf
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(2)
    w.add_token_list([f"token-{i}" for i in range(tokens)])
    for i in range(20):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((8, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _torch(path: str, tensors: int) -> None:
    import torch
    torch.save({f"layer.{i}.weight": torch.zeros(8, 8) for i in range(tensors)}, path)


def header_only(server: RangeServer, workdir: str, files: int) -> list[dict]:
    """Per format: `files` copies served under distinct paths, scanned header-only one after another (scan_many),
    then again with PARAMKIT_HEADER_CACHE set (second run: revalidation only)."""
    kinds = {"safetensors (1,000 tensors)": ("model.safetensors", lambda p: _safetensors(p, 1000)),
             "GGUF (32,000-token vocabulary)": ("model.gguf", lambda p: _gguf(p, 32_000)),
             "PyTorch zip (200 tensors)": ("pytorch_model.bin", lambda p: _torch(p, 200))}
    rows = []
    for label, (name, write) in kinds.items():
        local = os.path.join(workdir, name)
        write(local)
        data = Path(local).read_bytes()
        urls = [server.add(f"h/{k}/{name}", data) for k in range(files)]
        for cache in (None, "cold", "warm"):
            if cache is None:
                os.environ.pop("PARAMKIT_HEADER_CACHE", None)
            else:
                os.environ["PARAMKIT_HEADER_CACHE"] = os.path.join(workdir, f"cache-{name}")
            server.clear_log()
            t0 = time.perf_counter()
            for _, rep, err in paramkit.scan_many(urls, stats=False):
                assert err is None, err
            dt = time.perf_counter() - t0
            log = [r for r in server.requests() if r.path.endswith(name)]
            rows.append({"format": label, "file_bytes": len(data), "cache": cache or "off",
                         "requests_per_file": len(log) / files, "bytes_per_file": sum(r.nbytes for r in log) / files,
                         "ms_per_file": dt / files * 1e3, "files_per_s": files / dt})
        os.environ.pop("PARAMKIT_HEADER_CACHE", None)
    return rows


def full_stats(server: RangeServer, workdir: str, mb: int, backend: str, repeat: int) -> dict:
    """One bf16 safetensors file of about `mb` MB: best-of-`repeat` wall time of a local scan, the same scan over
    HTTP, and a plain download (one GET, read in 16 MiB pieces and dropped) through urllib3."""
    import torch
    import urllib3
    from safetensors.torch import save_file
    path = os.path.join(workdir, "full.safetensors")
    g = torch.Generator().manual_seed(0)
    n = max(mb * 1_000_000 // 2 // (2048 * 2048) - 2, 1)
    state = {f"layers.{i}.w": (torch.randn(2048, 2048, generator=g) * 0.02).to(torch.bfloat16) for i in range(n)}
    state["embed"] = torch.ones(8192, 2048, dtype=torch.bfloat16)
    save_file(state, path)
    del state
    raw = Path(path).read_bytes()
    size = len(raw)
    url = server.add("full/full.safetensors", raw)
    del raw

    def best(fn):
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)
    local = best(lambda: paramkit.scan(path, backend=backend))
    server.clear_log()
    remote = best(lambda: paramkit.scan(url, backend=backend))
    rep = paramkit.scan(url, backend=backend)
    pool = urllib3.PoolManager()

    def download():
        r = pool.request("GET", url, preload_content=False)
        while r.read(16 << 20):
            pass
        r.release_conn()
    plain = best(download)
    return {"file_bytes": size, "backend": rep.backend, "local_s": local, "remote_s": remote, "download_s": plain,
            "local_gb_s": size / local / 1e9, "remote_gb_s": size / remote / 1e9, "download_gb_s": size / plain / 1e9,
            "remote_vs_local": remote / local, "remote_vs_download": remote / plain,
            "data_requests": rep.transfer["data"]["requests"], "window": rep.engine_info["remote"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=300, help="copies of each header-only file (default 300)")
    ap.add_argument("--mb", type=int, default=512, help="size of the full-statistics file in MB (default 512)")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None, metavar="FILE")
    args = ap.parse_args()
    server = RangeServer()
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"}
    try:
        with tempfile.TemporaryDirectory(prefix="paramkit-remote-bench-") as workdir:
            out["header_only"] = header_only(server, workdir, args.files)
            server.files.clear()
            out["full_stats"] = full_stats(server, workdir, args.mb, args.backend, args.repeat)
    finally:
        server.close()
    print("| format | header cache | requests/file | bytes/file | ms/file | files/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in out["header_only"]:
        print(f"| {r['format']} | {r['cache']} | {r['requests_per_file']:.2f} | {r['bytes_per_file']:,.0f} | "
              f"{r['ms_per_file']:.2f} | {r['files_per_s']:,.0f} |")
    f = out["full_stats"]
    print(f"\nfull statistics, {f['file_bytes'] / 1e6:,.0f} MB bf16, backend {f['backend']}: local {f['local_s']:.2f} s "
          f"({f['local_gb_s']:.2f} GB/s), over loopback HTTP {f['remote_s']:.2f} s ({f['remote_gb_s']:.2f} GB/s, "
          f"{f['data_requests']} data requests), plain download {f['download_s']:.2f} s ({f['download_gb_s']:.2f} "
          f"GB/s); remote/local {f['remote_vs_local']:.2f}x, remote/download {f['remote_vs_download']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
