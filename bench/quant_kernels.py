"""Per-scheme cost of the quantization kernels (ns per element, one thread), AVX2 and baseline
builds side by side: where the time of `scan(quant=...)` goes (bench/RESULTS.md, issue 3)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

SCRIPT = r"""
import json, sys, time
import numpy as np
from paramkit import _core
from paramkit.quant import resolve_schemes
from paramkit.quant.plan import engine_kind
n_rows, row = int(sys.argv[1]), int(sys.argv[2])
x = (np.random.default_rng(0).standard_normal(n_rows * row) * 0.02).astype(np.float32)
am = float(np.abs(x).max())
out = {"isa": _core.build_info()["isa"]}
for s in resolve_schemes("default"):
    kind, group = engine_kind(s)
    best = 1e9
    for _ in range(3):
        t = time.process_time()
        _core.quant_error_sums(x, kind, group, n_rows, row, am if s.needs_tensor_absmax else None)
        best = min(best, time.process_time() - t)
    out[s.id] = best / x.size * 1e9
print(json.dumps(out))
"""


def run(isa: str | None, rows: int, row: int) -> dict:
    env = dict(os.environ)
    if isa:
        env["PARAMKIT_ISA"] = isa
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(rows), str(row)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout)


def main() -> int:
    rows, row = 1024, 4096            # one 1024x4096 float32 matrix (16 MiB), N(0, 0.02)
    t0 = time.perf_counter()
    native = run(None, rows, row)
    generic = run("generic", rows, row)
    print(f"quantization kernels, {rows}x{row} float32, one thread, ns per element (min of 3)")
    print(f"{'scheme':16s} {native['isa']:>10s} {'generic':>10s} {'speed-up':>9s}")
    for k in native:
        if k == "isa":
            continue
        print(f"{k:16s} {native[k]:10.2f} {generic[k]:10.2f} {generic[k] / native[k]:8.1f}x")
    tot_n = sum(v for k, v in native.items() if k != "isa")
    tot_g = sum(v for k, v in generic.items() if k != "isa")
    print(f"{'all 9 (sum)':16s} {tot_n:10.2f} {tot_g:10.2f} {tot_g / tot_n:8.1f}x")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
