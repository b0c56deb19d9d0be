"""The cpu backend's kernels exist once per instruction set (baseline and AVX2, chosen at run time);
both must give bit-identical results, so forcing the baseline (PARAMKIT_ISA=generic) changes nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import available_backends

SCRIPT = r"""
import json, sys, numpy as np, paramkit
rng = np.random.default_rng(7)
out = {}
for dt in ("float32", "float64", "int32", "int64", "uint32", "uint64"):
    if dt.startswith("float"):
        x = (rng.standard_normal(100_003) * 0.02).astype(dt)
        x[::997] = np.nan; x[5] = np.inf; x[6] = -np.inf; x[10:20] = 0; x[30] = 1e-40 if dt == "float32" else 1e-310
    else:
        info = np.iinfo(dt)
        x = rng.integers(info.min, info.max, size=100_003, dtype=dt, endpoint=True)
    out[dt] = paramkit.tensor_stats(x, backend="cpu")
print(json.dumps(out, sort_keys=True))
"""


def _run(isa: str) -> dict:
    env = dict(os.environ, PARAMKIT_ISA=isa)
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def test_generic_and_simd_kernels_bit_identical():
    assert "cpu" in available_backends(), "the C++ extension must be built for this test"
    from paramkit import _core
    assert _core.build_info()["isa"] in ("avx2", "generic")
    assert _run("generic") == _run("native")
