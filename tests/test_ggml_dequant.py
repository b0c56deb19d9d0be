"""The native GGML block dequantizers (cpp/include/paramkit/ggml_blocks.hpp, through _core.ggml_dequantize)
against gguf-py's gguf.quants.dequantize, bit for bit (a NaN equals a NaN): random blocks (every bit pattern of
the scales: subnormal, huge, Inf, NaN), blocks with chosen extreme scales, and blocks gguf-py quantized from
real-valued data."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import gguf
from gguf import GGMLQuantizationType as T

from conftest import cpu_engine_built

pytestmark = pytest.mark.skipif(not cpu_engine_built(), reason="paramkit._core is not built")

NATIVE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS,
          T.MXFP4]
# where each type keeps its float16 scales (byte offsets in a block): d, and dmin / m where it has one
F16_FIELDS = {T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,), T.Q2_K: (80, 82),
              T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,), T.IQ4_NL: (0,), T.IQ4_XS: (0,)}
EXTREME_F16 = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0xBC00, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00,
               0x7C01, 0xFE00]


def _core():
    from paramkit import _core
    return _core


def _same_bits(got: np.ndarray, want: np.ndarray) -> bool:
    got, want = got.reshape(-1), want.reshape(-1).astype(np.float32)
    both_nan = np.isnan(got) & np.isnan(want)
    return got.shape == want.shape and bool(((got.view(np.uint32) == want.view(np.uint32)) | both_nan).all())


def _oracle(raw: np.ndarray, t) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # NaN/Inf scales in random blocks
        return gguf.quants.dequantize(raw, t)


@pytest.mark.parametrize("t", NATIVE, ids=lambda t: t.name)
def test_random_blocks_are_bit_identical(t):
    _, size = gguf.GGML_QUANT_SIZES[t]
    raw = np.random.default_rng(int(t)).integers(0, 256, (2000, size), dtype=np.uint8)
    assert _same_bits(_core().ggml_dequantize(raw.reshape(-1), int(t)), _oracle(raw, t))


@pytest.mark.parametrize("t", [t for t in NATIVE if t in F16_FIELDS], ids=lambda t: t.name)
def test_extreme_scales_are_bit_identical(t):
    _, size = gguf.GGML_QUANT_SIZES[t]
    rng = np.random.default_rng(7)
    rows = []
    for a in EXTREME_F16:
        for b in EXTREME_F16:
            blk = rng.integers(0, 256, size, dtype=np.uint8)
            fields = F16_FIELDS[t]
            blk[fields[0]:fields[0] + 2] = np.frombuffer(np.uint16(a).tobytes(), np.uint8)
            if len(fields) > 1:
                blk[fields[1]:fields[1] + 2] = np.frombuffer(np.uint16(b).tobytes(), np.uint8)
            rows.append(blk)
    raw = np.stack(rows)
    assert _same_bits(_core().ggml_dequantize(raw.reshape(-1), int(t)), _oracle(raw, t))


def test_mxfp4_every_exponent():
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, (256, 17), dtype=np.uint8)
    raw[:, 0] = np.arange(256, dtype=np.uint8)
    assert _same_bits(_core().ggml_dequantize(raw.reshape(-1), int(T.MXFP4)), _oracle(raw, T.MXFP4))


@pytest.mark.parametrize("t", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.MXFP4], ids=lambda t: t.name)
def test_blocks_quantized_from_real_values(t):
    """Blocks as a converter writes them (gguf-py's quantizer) from weights with outliers and zeros."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((64, 256)) * 0.02).astype(np.float32)
    x[0, :7] = [30.0, -25.0, 0.0, 1e-8, -1e-8, 65000.0, 0.0]
    x[1] = 0.0
    raw = gguf.quants.quantize(x, t)
    got = _core().ggml_dequantize(raw.reshape(-1), int(t))
    assert _same_bits(got, _oracle(raw, t))
    assert np.abs(got.reshape(x.shape)[2:] - x[2:]).max() < 0.02    # it is x, give or take the scheme's error


@settings(max_examples=200, deadline=None)
@given(t=st.sampled_from(NATIVE), data=st.data())
def test_any_blocks(t, data):
    _, size = gguf.GGML_QUANT_SIZES[t]
    n = data.draw(st.integers(1, 5))
    raw = np.frombuffer(data.draw(st.binary(min_size=n * size, max_size=n * size)), np.uint8).reshape(n, size)
    assert _same_bits(_core().ggml_dequantize(raw.reshape(-1), int(t)), _oracle(raw, t))


def test_bad_arguments_raise():
    core = _core()
    with pytest.raises(ValueError, match="not whole 34-byte blocks"):
        core.ggml_dequantize(np.zeros(35, np.uint8), int(T.Q8_0))
    with pytest.raises(ValueError, match="no native dequantizer"):
        core.ggml_dequantize(np.zeros(66, np.uint8), int(T.IQ2_XXS))
    assert core.ggml_dequantize(np.zeros(0, np.uint8), int(T.Q4_K)).size == 0


def test_real_blocks_of_a_llama_cpp_model(gemma_gguf_path):
    """Blocks of every quantized type in a real llama.cpp conversion (Gemma-3 270M Q4_K_M): up to 4,096 blocks of
    the first tensor of each type, read at the offsets the header reader found."""
    from paramkit.formats.gguf_file import parse_gguf
    from paramkit.sources import open_source
    with open_source(gemma_gguf_path) as src:
        h = parse_gguf(src)
        first = {}
        for t in h.tensors:
            first.setdefault(t.type_name, t)
        assert {"Q8_0", "Q5_0", "Q4_K", "Q6_K"} <= set(first)
        for name in ("Q8_0", "Q5_0", "Q4_K", "Q6_K"):
            t = first[name]
            qt = T[name]
            _, size = gguf.GGML_QUANT_SIZES[qt]
            n = min(t.nbytes // size, 4096)
            raw = np.frombuffer(src.read_at(t.offset, n * size), np.uint8).reshape(n, size)
            got = _core().ggml_dequantize(raw.reshape(-1), int(qt))
            assert _same_bits(got, _oracle(raw, qt)), name
            assert np.isfinite(got).all() and np.abs(got).max() > 0, name
