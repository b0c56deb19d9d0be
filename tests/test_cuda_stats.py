"""The GPU statistics path (backend="cuda") against the cpu engine and the numpy oracle on real
safetensors files; skipped, with the reason, only where the cuda backend is unavailable (no GPU)."""
from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import paramkit
from paramkit.backends import get_engine, numpy_backend
from paramkit.table import TensorInfo

from conftest import tensor_infos

_status = {b.name: b for b in paramkit.backends()}["cuda"]
if not _status.available:
    pytest.skip(f"cuda backend unavailable: {_status.reason}", allow_module_level=True)

FLOATS = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}
INTS = {"I8": np.int8, "U8": np.uint8, "I16": np.int16, "U16": np.uint16, "I32": np.int32,
        "U32": np.uint32, "I64": np.int64, "U64": np.uint64}
SIZES = [0, 1, 7, 4099, 70001]


def _float_data(np_t, n: int, rng) -> np.ndarray:
    x = (rng.standard_normal(n) * 3).astype(np.float64)
    if n >= 7:
        tiny = float(np.finfo(np_t).smallest_subnormal) if np_t is not ml_dtypes.bfloat16 else 2.0 ** -133
        x[:7] = [np.nan, np.inf, -np.inf, 0.0, -0.0, tiny, -tiny]
        x[n // 2] = float(np.finfo(np_t).max) if np_t is not ml_dtypes.bfloat16 else 3.0e38
    rng.shuffle(x)
    return x.astype(np_t)


def _compare(cu: dict | None, cpu: dict | None, ref: dict | None) -> None:
    assert (cu is None) == (cpu is None) == (ref is None)
    if cu is None:
        return
    for k in ("zeros", "nan", "posinf", "neginf", "subnormal", "min", "max", "absmax"):
        assert cu[k] == cpu[k] == ref[k], (k, cu[k], cpu[k], ref[k])
    for k in ("mean", "std", "l2"):
        a, b = cu[k], ref[k]
        if a is None or b is None:
            assert a is None and b is None, k
        elif math.isinf(b):
            assert a == b, k
        else:
            assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-300), (k, a, b)
            assert math.isclose(a, cpu[k], rel_tol=1e-6, abs_tol=1e-300), (k, a, cpu[k])
    if cu["quantiles"] is not None:
        assert cu["quantiles"] == cpu["quantiles"], (cu["quantiles"], cpu["quantiles"])


def _run_all(path: str, quantiles: bool = True):
    infos = tensor_infos(path)
    cu = get_engine("cuda").run_stats(infos, quantiles=quantiles)
    cpu = get_engine("cpu").run_stats(infos, quantiles=quantiles)
    ref = numpy_backend.ENGINE.run_stats(infos, quantiles=quantiles)
    return infos, cu, cpu, ref


@pytest.mark.parametrize("dtype", list(FLOATS) + list(INTS))
@pytest.mark.parametrize("quantiles", [True, False])
def test_cuda_matches_cpu_and_oracle(tmp_path, dtype, quantiles):
    rng = np.random.default_rng(len(dtype) * 7 + quantiles)
    tensors = {}
    for n in SIZES:
        if dtype in FLOATS:
            a = _float_data(FLOATS[dtype], n, rng)
        else:
            info = np.iinfo(INTS[dtype])
            a = rng.integers(info.min, info.max, size=n, dtype=INTS[dtype], endpoint=True)
            if n >= 3:
                a[:3] = [0, info.min, info.max]
        tensors[f"t{n}"] = a
    tensors["scalar"] = np.array(tensors["t7"][1] if "t7" in tensors else 0).reshape(())
    path = str(tmp_path / "m.safetensors")
    save_file(tensors, path)
    infos, cu, cpu, ref = _run_all(path, quantiles)
    for t, a, b, c in zip(infos, cu, cpu, ref):
        try:
            _compare(a, b, c)
        except AssertionError as e:
            raise AssertionError(f"{dtype} tensor {t.name}: {e}") from None


@pytest.mark.parametrize("dtype", ["BF16", "F32", "F64", "U8"])
def test_cuda_multi_piece_and_many_tensors(tmp_path, monkeypatch, dtype):
    # a 1 MiB ring forces tensors across several batches; 100 tiny tensors exercise the histogram slots
    monkeypatch.setenv("PARAMKIT_CUDA_RING_MB", "1")
    rng = np.random.default_rng(5)
    tensors = {"big": (_float_data(FLOATS[dtype], 3_000_001, rng) if dtype in FLOATS
                       else rng.integers(0, 255, size=3_000_001, dtype=np.uint8))}
    for i in range(100):
        tensors[f"small{i:03d}"] = (_float_data(FLOATS[dtype], 5 + i, rng) if dtype in FLOATS
                                    else rng.integers(0, 255, size=5 + i, dtype=np.uint8))
    path = str(tmp_path / "big.safetensors")
    save_file(tensors, path)
    infos, cu, cpu, ref = _run_all(path)
    for t, a, b, c in zip(infos, cu, cpu, ref):
        _compare(a, b, c)
    again = get_engine("cuda").run_stats(infos, quantiles=True)
    assert json.dumps(again) == json.dumps(cu)      # bit-identical run to run


def test_cuda_scan_end_to_end(tmp_path):
    rng = np.random.default_rng(1)
    path = str(tmp_path / "s.safetensors")
    save_file({"w": _float_data(ml_dtypes.bfloat16, 1000, rng), "b": _float_data(np.float32, 33, rng)}, path)
    a = paramkit.scan(path, backend="cuda")
    b = paramkit.scan(path, backend="cpu")
    assert a is not None and b is not None


def test_cuda_array_stats_and_errors(tmp_path):
    eng = get_engine("cuda")
    x = np.array([1.0, -2.0, np.nan, np.inf, 0.0], dtype=np.float32)
    s = eng.array_stats(x, "F32")
    assert s["min"] == -2.0 and s["max"] == math.inf and s["nan"] == 1 and s["posinf"] == 1
    missing = TensorInfo("x", "F32", (4,), str(tmp_path / "nope.safetensors"), 0, 16, 4)
    with pytest.raises(OSError):
        eng.run_stats([missing])
