"""The cpu backend's kernels exist once per instruction set (baseline and AVX2, chosen at run time);
both must give bit-identical results, so forcing the baseline (PARAMKIT_ISA=generic) changes nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import cpu_engine_built

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
# float32 (blocked one-pass kernel, 1024-element blocks, 8-element groups): sizes around block and
# group edges, NaN/Inf blocks, an all-NaN block, and finite values over a wide exponent range
for n in (1, 7, 8, 9, 1023, 1024, 1025, 4096 + 33):
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-30, 30, n)).astype(np.float32)
    if n > 40:
        x[5] = np.inf; x[6] = -np.inf; x[10:20] = 0; x[21] = -0.0; x[30] = 1e-40; x[-2] = np.nan
    if n > 4000:
        x[2048:3072] = np.nan; x[2050] = -np.inf; x[3072:3072 + 1024] = 1.5
    for q in (False, True):
        out[f"f32/{n}/{q}"] = paramkit.tensor_stats(x, quantiles=q, backend="cpu")
# bfloat16 (bit patterns): without quantiles the blocked one-pass kernel (1024-element blocks,
# 16-element groups), with quantiles the histogram; sizes around block and group edges, blocks
# with and without NaN/Inf, +-0, subnormals, and a block of only non-finite values
for n in (1, 15, 16, 17, 1023, 1024, 1025, 4096 + 33, 100_003):
    b = (rng.standard_normal(n) * 0.02 + 0.001).astype(np.float32).view(np.uint32)
    b = (b >> 16).astype(np.uint16)
    if n > 40:
        b[::997] = 0x7FC0; b[5] = 0x7F80; b[6] = 0xFF80; b[10:20] = 0; b[21] = 0x8000
        b[30] = 0x0001; b[31] = 0x8011; b[33] = 0xFFC1; b[-3] = 0x7F80
    if n > 4000:
        b[2048:3072] = 0x7FC0; b[2050] = 0xFF80                  # a block with no finite value
        b[3072:3072 + 1024] = 0x3F80                             # a constant block
    for q in (False, True):
        out[f"bf16/{n}/{q}"] = paramkit.tensor_stats(b, dtype="BF16", quantiles=q, backend="cpu")
# float16 (same blocked kernel, F16C widening in the AVX2 build): NaN, +-Inf, +-0, subnormals
# (decoded exactly), +-65504, a block of only non-finite values and a constant block
for n in (1, 15, 16, 17, 1023, 1024, 1025, 4096 + 33, 100_003):
    h = (rng.standard_normal(n) * 0.02 + 0.001).astype(np.float16)
    if n > 40:
        h[::997] = np.nan; h[5] = np.inf; h[6] = -np.inf; h[10:20] = 0; h[21] = -0.0
        h[30] = 6e-8; h[31] = -3e-5; h[32] = 65504; h[34] = -65504; h[-3] = np.inf
    if n > 4000:
        h[2048:3072] = np.nan; h[2050] = -np.inf                 # a block with no finite value
        h[3072:3072 + 1024] = 1.5                                # a constant block
    for q in (False, True):
        out[f"f16/{n}/{q}"] = paramkit.tensor_stats(h, quantiles=q, backend="cpu")
# finite only (every whole group takes the AVX2 path): +-0, subnormals and +-65504 among them
f = (rng.standard_normal(4096 + 33) * 0.02).astype(np.float16)
f[100:110] = np.float16(6e-8) * np.arange(10); f[111] = -0.0; f[1500] = 65504; f[1501] = -65504; f[2100] = -3e-5
for q in (False, True):
    out[f"f16/finite/{q}"] = paramkit.tensor_stats(f, quantiles=q, backend="cpu")
# finite values spread over the exponent range: subnormals next to thousands in the vector blocks
w = rng.standard_normal(20_011) * 10.0 ** rng.uniform(-7.5, 3.5, 20_011)   # |w| < 65504
out["f16/wide"] = paramkit.tensor_stats(w.astype(np.float16), quantiles=False, backend="cpu")
wb = (w.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
out["bf16/wide"] = paramkit.tensor_stats(wb, dtype="BF16", quantiles=False, backend="cpu")
print(json.dumps(out, sort_keys=True))
"""


def _run(isa: str) -> dict:
    env = dict(os.environ, PARAMKIT_ISA=isa)
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def test_generic_and_simd_kernels_bit_identical():
    assert cpu_engine_built(), "the C++ extension must be built for this test"
    from paramkit import _core
    assert _core.build_info()["isa"] in ("avx2", "generic")
    assert _run("generic") == _run("native")


QUANT_SCRIPT = r"""
import json, numpy as np
from paramkit import _core
rng = np.random.default_rng(11)
out = {}
for kind in range(9):
    group = {2: 128, 3: 32, 4: 64, 5: 32, 6: 32, 7: 64}.get(kind, 0)
    for rows, row_len in ((3, 96), (7, 160), (1, 1), (5, 37), (2, 0), (4, 64)):
        if kind in (5, 6) and row_len % 32:
            continue
        x = (rng.standard_normal(rows * row_len) * 0.02).astype(np.float32)
        if x.size > 20:
            x[::13] = np.nan; x[3] = np.inf; x[4] = -np.inf; x[5:9] = 0; x[9] = -0.0
            x[10] = 1e-41; x[11] = -3e-39
            x[12:20] = (np.arange(8) + 0.5).astype(np.float32) * np.float32(0.02 / 127)  # ties of int8
        s = _core.quant_error_sums(x, kind, group, rows, row_len)
        out[f"{kind}/{rows}x{row_len}"] = s
        if kind in (0, 8):   # per-tensor scale given, and a tiny one (codes overflow, clipping)
            out[f"{kind}/{rows}x{row_len}/tiny"] = _core.quant_error_sums(x, kind, group, rows, row_len, 1e-39)
print(json.dumps(out, sort_keys=True))
"""


def test_generic_and_simd_quant_kernels_agree():
    """The AVX2 quantization kernel gives the same dequantized values as the baseline (counts and
    max error exact); float64 sums are added in lanes, so they agree to rounding only."""
    assert cpu_engine_built(), "the C++ extension must be built for this test"
    env = dict(os.environ)
    runs = {}
    for isa in ("generic", "native"):
        env["PARAMKIT_ISA"] = isa
        res = subprocess.run([sys.executable, "-c", QUANT_SCRIPT], env=env, capture_output=True, text=True, check=True)
        runs[isa] = json.loads(res.stdout)
    g, v = runs["generic"], runs["native"]
    assert g.keys() == v.keys() and len(g) > 40
    for key in g:
        a, b = g[key], v[key]
        for k in ("n", "nonfinite", "clipped", "scale_clamped", "max_abs_err"):
            assert a[k] == b[k], (key, k, a[k], b[k])
        for k in ("sse", "sum_w2", "sum_q2", "sum_wq"):
            assert a[k] == pytest.approx(b[k], rel=1e-12, abs=1e-300), (key, k)


DIFF_SCRIPT = r"""
import json, os, sys, numpy as np, ml_dtypes, paramkit
from safetensors.numpy import save_file
rng = np.random.default_rng(5)
d = sys.argv[1]
NP = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16, "F64": np.float64}
a, b = {}, {}
# sizes around the fused kernel's 4-pair groups and 2048-pair blocks; NaN/Inf in some blocks only
for k, (da, db, n) in enumerate([("F32", "F32", 1), ("BF16", "BF16", 7), ("F16", "F16", 2049), ("BF16", "F32", 4099),
                                 ("F32", "F32", 10_001), ("F64", "F32", 999), ("F16", "BF16", 6000)]):
    x = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)
    y = x + rng.standard_normal(n) * 1e-3 * (rng.random(n) < 0.5)
    if n > 4000:
        x[3000] = np.nan; y[n - 3] = np.inf
    with np.errstate(over="ignore"):
        a[f"t{k}"], b[f"t{k}"] = x.astype(NP[da]), y.astype(NP[db])
save_file(a, os.path.join(d, "a.safetensors")); save_file(b, os.path.join(d, "b.safetensors"))
r = paramkit.diff(os.path.join(d, "a.safetensors"), os.path.join(d, "b.safetensors"), backend="cpu").to_dict()
for key in ("timing", "options", "engine"):
    r.pop(key)
print(json.dumps(r, sort_keys=True))
"""


def test_generic_and_simd_diff_kernels_bit_identical(tmp_path):
    """The fused float32 diff kernel (AVX2 lanes vs the scalar loop) and the long way give the same bits."""
    assert cpu_engine_built(), "the C++ extension must be built for this test"
    runs = {}
    for isa in ("generic", "native"):
        res = subprocess.run([sys.executable, "-c", DIFF_SCRIPT, str(tmp_path)], env=dict(os.environ, PARAMKIT_ISA=isa),
                             capture_output=True, text=True, check=True)
        runs[isa] = res.stdout
    assert json.loads(runs["generic"])["tensors"] and runs["generic"] == runs["native"]
