"""Every statistics backend against the numpy oracle, and the oracle against the naive reference in
stats_reference.py: random bit patterns, special values, files, chunking and thread counts."""
from __future__ import annotations

import decimal
import json
import math
import os
import random
import sys
import tempfile

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import save_file as torch_save_file

import stats_reference as R
from conftest import available_backends, tensor_infos     # [b.name for b in backends() if b.available]
import paramkit
from paramkit import stats as S
from paramkit.backends import get_engine, numpy_backend
from paramkit.dtypes import DTYPES
from paramkit.table import TensorInfo

BACKENDS = available_backends()      # numpy always; PARAMKIT_BACKEND=name narrows to that one
ORACLE = numpy_backend.ENGINE
DTYPE_NAMES = list(R.STATS_DTYPES)
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
         "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I8": torch.int8,
         "U8": torch.uint8, "I16": torch.int16, "U16": torch.uint16, "I32": torch.int32,
         "U32": torch.uint32, "I64": torch.int64, "U64": torch.uint64, "BOOL": torch.bool}

HYP = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _bits(x: float, fmt: str) -> int:
    return int(np.array([x], dtype=fmt).view(UINT[np.dtype(fmt).itemsize])[0])


# bit patterns that must come up: ±0, NaNs (quiet, signalling, negative), ±Inf, smallest and
# largest subnormals, smallest normal, largest finite, ±1, rounding edges of the binning
SPECIALS: dict[str, list[int]] = {
    "F64": [0, 1 << 63, 0x7FF8 << 48, 0xFFF8 << 48, 0x7FF0_0000_0000_0001, 0xFFF0_0000_0000_0001,
            0x7FF0 << 48, 0xFFF0 << 48, 1, (1 << 52) - 1, (1 << 63) | 1, 1 << 52,
            0x7FEF_FFFF_FFFF_FFFF, 0xFFEF_FFFF_FFFF_FFFF, _bits(1.0, "<f8"), _bits(-1.0, "<f8"),
            _bits(3.4028234663852886e38, "<f8"),          # float32 max
            _bits(3.4028235677973366e38, "<f8"),          # float32 max + half ulp -> inf (RNE)
            _bits(3.4028235677973362e38, "<f8"),          # just below: -> float32 max
            _bits(1e-46, "<f8"), _bits(-7e-46, "<f8"), _bits(1e200, "<f8"), _bits(-1e-300, "<f8")],
    "F32": [0, 0x8000_0000, 0x7FC0_0000, 0xFFC0_0000, 0x7F80_0001, 0xFF80_0001, 0x7F80_FFFF,
            0x7F80_0000, 0xFF80_0000, 1, 0x007F_FFFF, 0x8000_0001, 0x0080_0000, 0x7F7F_FFFF,
            0xFF7F_FFFF, 0x3F80_0000, 0xBF80_0000, 0x3F80_FFFF, 0xBF80_FFFF, 0x0000_FFFF],
    "F16": [0, 0x8000, 0x7E00, 0xFE00, 0x7C01, 0x7C00, 0xFC00, 0x0001, 0x03FF, 0x8001, 0x0400,
            0x7BFF, 0xFBFF, 0x3C00, 0xBC00],
    "BF16": [0, 0x8000, 0x7FC0, 0xFFC0, 0x7F81, 0x7F80, 0xFF80, 0x0001, 0x007F, 0x8001, 0x0080,
             0x7F7F, 0xFF7F, 0x3F80, 0xBF80],
    "F8_E4M3": [0, 0x80, 0x7F, 0xFF, 0x01, 0x07, 0x81, 0x08, 0x7E, 0xFE, 0x38, 0xB8, 0x78, 0x77],
    "F8_E5M2": [0, 0x80, 0x7C, 0xFC, 0x7D, 0x7E, 0x7F, 0xFF, 0x01, 0x03, 0x81, 0x04, 0x7B, 0xFB,
                0x3C, 0xBC],
    "BOOL": [0, 1, 2, 0x80, 0xFF],
}
for _name, _bits_n in (("I8", 8), ("I16", 16), ("I32", 32), ("I64", 64)):
    _m = 1 << _bits_n
    SPECIALS[_name] = [0, 1, _m - 1, 1 << (_bits_n - 1), (1 << (_bits_n - 1)) - 1,
                       (1 << (_bits_n - 1)) + 1, _m - 2]
for _name, _bits_n in (("U8", 8), ("U16", 16), ("U32", 32), ("U64", 64)):
    _m = 1 << _bits_n
    SPECIALS[_name] = [0, 1, _m - 1, _m - 2, 1 << (_bits_n - 1), (1 << (_bits_n - 1)) - 1]
# float32 round-to-nearest-even edges for the binning of 32/64-bit integers
_TIES = [(1 << 24) + 1, (1 << 25) + 2, (1 << 25) + 6, (1 << 31) - 64, (1 << 31) - 65]
SPECIALS["I32"] += _TIES + [(1 << 32) - t for t in _TIES]
SPECIALS["U32"] += _TIES + [(1 << 32) - 129, (1 << 32) - 128]
_TIES64 = _TIES + [(1 << 60) + (1 << 36) + 1, (1 << 60) + (1 << 36), (1 << 62) + (1 << 38),
                   (1 << 63) - (1 << 39), (1 << 53) + 1]
SPECIALS["I64"] += _TIES64 + [(1 << 64) - t for t in _TIES64]
SPECIALS["U64"] += _TIES64 + [(1 << 64) - (1 << 39), (1 << 64) - (1 << 40) + 1]
assert set(SPECIALS) == set(DTYPE_NAMES)


def pick(rng: np.random.Generator, dtype: str, k: int) -> np.ndarray:
    """k special bit patterns of `dtype`, chosen at random."""
    return to_raw([SPECIALS[dtype][i] for i in rng.integers(0, len(SPECIALS[dtype]), k)], dtype)


def to_raw(values, dtype: str) -> np.ndarray:
    """Element bit patterns (Python ints) -> unsigned array of the dtype's width."""
    return np.array(values, dtype=UINT[R.ITEMSIZE[dtype]])


@st.composite
def raw_elements(draw, dtype: str, max_size: int = 200) -> np.ndarray:
    """An unsigned array of the dtype's element width holding bit patterns: random raw bytes,
    random patterns mixed with the special ones, or a constant tensor."""
    size = R.ITEMSIZE[dtype]
    bits = 8 * size
    kind = draw(st.sampled_from(["bytes", "mixed", "mixed", "constant"]))
    if kind == "bytes":
        n = draw(st.integers(0, max_size))
        raw = np.frombuffer(draw(st.binary(min_size=n * size, max_size=n * size)), UINT[size])
        return raw.copy()
    element = st.one_of(st.sampled_from(SPECIALS[dtype]), st.integers(0, (1 << bits) - 1))
    if kind == "constant":
        return to_raw([draw(element)] * draw(st.integers(1, 300)), dtype)
    return to_raw(draw(st.lists(element, max_size=max_size)), dtype)


def as_input(raw: np.ndarray, dtype: str, form: str) -> np.ndarray:
    """The same elements in one of the array forms array_stats accepts."""
    if form == "bits":
        return raw
    if form == "bytes":
        return raw.view(np.uint8)
    return raw.view(R.FLOAT_VIEW.get(dtype) or R.INT_VIEW[dtype])      # "typed" (ml_dtypes, ...)


def check_array(backend: str, data: np.ndarray, dtype: str, *, quantiles: bool = True) -> dict:
    """backend.array_stats(data) vs the oracle (numpy vs the naive reference); returns the result."""
    got = get_engine(backend).array_stats(data, dtype, quantiles=quantiles)
    R.assert_plain(got, dtype)
    if backend == "numpy":
        want = R.reference_stats(data, dtype, quantiles=quantiles)
        R.assert_stats_match(got, want, rel=1e-9, what=f"numpy vs reference {dtype}")
    else:
        want = ORACLE.array_stats(data, dtype, quantiles=quantiles)
        R.assert_stats_match(got, want, what=f"{backend} vs numpy {dtype}")
    return got


def same_bits(a, b) -> bool:
    """Result equality down to the last bit of every float (JSON repr round-trips floats)."""
    return json.dumps(a) == json.dumps(b)


# ------------------------------------------------------------------------------------------------
# safetensors files


def write_safetensors(path: str, tensors: dict[str, tuple[str, tuple, np.ndarray]]) -> None:
    """name -> (dtype, shape, raw element bits), written with the real safetensors package."""
    out = {}
    for name, (dtype, shape, raw) in tensors.items():
        if raw.size == 0:
            out[name] = torch.empty(shape, dtype=TORCH[dtype])
        else:   # frombuffer keeps BOOL bytes other than 0/1 (a clone would normalise them)
            out[name] = torch.frombuffer(bytearray(raw.tobytes()), dtype=TORCH[dtype]).reshape(shape)
    torch_save_file(out, path)


def file_bytes(t: TensorInfo) -> bytes:
    with open(t.file, "rb") as f:
        f.seek(t.offset)
        return f.read(t.nbytes)


class Progress:
    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, done: int) -> None:
        assert isinstance(done, int)
        self.calls.append(done)

    def check(self, total: int) -> None:
        assert self.calls == sorted(self.calls), self.calls
        assert all(0 <= c <= total for c in self.calls)
        if total:
            assert self.calls and self.calls[-1] == total, (self.calls[-5:], total)


# ------------------------------------------------------------------------------------------------
# decoding


def test_stats_dtypes_cover_the_table():
    assert set(DTYPE_NAMES) == {n for n, d in DTYPES.items() if d.has_stats and d.kind != "block"}
    for n in DTYPE_NAMES:
        assert R.ITEMSIZE[n] * 8 == DTYPES[n].bits


@pytest.mark.parametrize("dtype,lut", [("F8_E4M3", numpy_backend.F8_E4M3_LUT),
                                       ("F8_E5M2", numpy_backend.F8_E5M2_LUT)])
def test_f8_lut_matches_ml_dtypes(dtype, lut):
    codes = np.arange(256, dtype=np.uint8)
    want = codes.view(R.FLOAT_VIEW[dtype]).astype(np.float32)
    assert lut.dtype == np.float32 and lut.shape == (256,)
    assert np.array_equal(np.isnan(lut), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(lut[ok].view(np.uint32), want[ok].view(np.uint32))   # -0.0 included
    assert np.array_equal(numpy_backend.decode(codes, dtype).view(np.uint32)[ok],
                          want[ok].view(np.uint32))
    if dtype == "F8_E4M3":
        assert np.nanmax(lut) == 448 and np.isnan(lut).sum() == 2 and not np.isinf(lut).any()
    else:
        assert np.nanmax(lut) == np.inf and np.isnan(lut).sum() == 6


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_16bit_decode_matches_ml_dtypes(dtype):
    codes = np.arange(1 << 16, dtype=np.uint16)
    with np.errstate(invalid="ignore"):
        want = codes.view(R.FLOAT_VIEW[dtype]).astype(np.float32)
        got = numpy_backend.decode(codes, dtype).astype(np.float32)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))


def test_int_to_float32_binning_is_round_to_nearest_even():
    """numpy's casts (used by the oracle) agree with the reference's integer-only rounding."""
    rng = np.random.default_rng(7)
    u = np.concatenate([rng.integers(0, 2**64 - 1, 50_000, dtype=np.uint64, endpoint=True),
                        to_raw(SPECIALS["U64"], "U64")])
    assert np.array_equal(R.int_to_f32_rne(u), u.astype(np.float32))
    i = u.view(np.int64)
    assert np.array_equal(R.int_to_f32_rne(i), i.astype(np.float32))
    assert R.int_to_f32_rne(np.array([(1 << 60) + (1 << 36) + 1], np.uint64))[0] == \
        np.float32(2.0**60 + 2.0**37)                  # double rounding would give 2^60


# ------------------------------------------------------------------------------------------------
# array_stats: every backend, every dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [d for d in DTYPE_NAMES if R.ITEMSIZE[d] <= 2])
def test_every_bit_pattern(backend, dtype):
    """All 256 / 65,536 codes of the 8- and 16-bit dtypes, and a reversed copy."""
    codes = np.arange(1 << (8 * R.ITEMSIZE[dtype]), dtype=UINT[R.ITEMSIZE[dtype]])
    check_array(backend, codes, dtype)
    check_array(backend, np.concatenate([codes[::-1], codes[:1000]]), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@settings(max_examples=30, **HYP)
@given(data=st.data())
def test_array_stats_random(backend, dtype, data):
    raw = data.draw(raw_elements(dtype), label="raw")
    form = data.draw(st.sampled_from(["bits", "bytes", "typed"]), label="form")
    arr = as_input(raw, dtype, form)
    got = check_array(backend, arr, dtype)
    no_q = check_array(backend, arr, dtype, quantiles=False)
    assert no_q["quantiles"] is None
    if backend == "numpy":       # the oracle: identical; others: same within the tolerances
        assert same_bits({**no_q, "quantiles": None}, {**got, "quantiles": None})
    else:
        R.assert_stats_match(no_q, {**got, "quantiles": None}, what="quantiles=False vs True")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_empty_scalar_and_constant(backend, dtype):
    eng = get_engine(backend)
    empty = {"min": None, "max": None, "mean": None, "std": None, "absmax": None, "l2": 0.0,
             "zeros": 0, "nan": 0, "posinf": 0, "neginf": 0, "subnormal": 0,
             "quantiles": {k: None for k in S.QUANTILE_KEYS}}
    raw = to_raw([], dtype)
    for shape in [(0,), (3, 0), (0, 0, 2)]:
        got = eng.array_stats(as_input(raw, dtype, "typed").reshape(shape), dtype, quantiles=True)
        R.assert_plain(got, dtype)
        assert got == empty
        assert eng.array_stats(raw.reshape(shape), dtype, quantiles=False) == {**empty, "quantiles": None}
    rng = np.random.default_rng(DTYPE_NAMES.index(dtype))
    for n in (1, 2, 3, 7, 31):
        raw = rng.integers(0, 256, n * R.ITEMSIZE[dtype], dtype=np.uint8)
        check_array(backend, raw, dtype)
        check_array(backend, np.concatenate([pick(rng, dtype, n).view(np.uint8), raw]), dtype)
    for v in SPECIALS[dtype]:
        scalar = as_input(to_raw([v], dtype), dtype, "typed").reshape(())
        got = check_array(backend, scalar, dtype)
        check_array(backend, to_raw([v] * 1001, dtype), dtype)
        ql = set(got["quantiles"].values())
        assert len(ql) == 1                               # one value: every quantile is it
        if dtype in R.INT_VIEW:
            assert got["std"] == 0.0 and got["min"] == got["max"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_array_forms_agree(backend):
    """uint16 bits, raw bytes, an ml_dtypes bfloat16 array and a strided view give one result."""
    eng = get_engine(backend)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(10_001) * 3).astype(ml_dtypes.bfloat16)
    bits = x.view(np.uint16)
    want = check_array(backend, x, "BF16")
    for form in (bits, bits.view(np.uint8), x.reshape(73, 137), bits.reshape(137, 73)):
        assert same_bits(eng.array_stats(form, "BF16", quantiles=True), want)
    big = np.zeros(20_002, dtype=ml_dtypes.bfloat16)
    big[::2] = x
    assert same_bits(eng.array_stats(big[::2], "BF16", quantiles=True), want)
    y = rng.standard_normal((64, 33)).astype(np.float32)
    want = check_array(backend, y, "F32")
    assert same_bits(eng.array_stats(np.asfortranarray(y).T.T, "F32", quantiles=True), want)


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"])
def test_numpy_signed_zero_order(dtype, monkeypatch):
    """The oracle's min/max/quantiles follow the total order -0.0 < +0.0 (others need only ==)."""
    pz, nz = SPECIALS[dtype][0], SPECIALS[dtype][1]
    for chunk in (1, 1 << 21):
        monkeypatch.setattr(numpy_backend, "CHUNK_ELEMENTS", chunk)
        for pattern in ([pz, nz, pz], [nz, pz, nz], [pz, pz], [nz, nz]):
            st_ = ORACLE.array_stats(to_raw(pattern, dtype), dtype, quantiles=True)
            sign = [math.copysign(1, st_[k]) for k in ("min", "max")]
            assert sign == [-1 if nz in pattern else 1, 1 if pz in pattern else -1], (pattern, st_)
            q = [math.copysign(1, v) for v in st_["quantiles"].values()]
            assert q == sorted(q) and st_["zeros"] == len(pattern)


def test_numpy_big_endian_and_wrong_sizes():
    y = np.arange(-50, 51, dtype=np.float32) / 7
    assert same_bits(ORACLE.array_stats(y.astype(">f4"), "F32", quantiles=True),
                     ORACLE.array_stats(y, "F32", quantiles=True))
    with pytest.raises(ValueError):
        ORACLE.array_stats(np.zeros(3, np.uint8), "F32", quantiles=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_values(backend):
    eng = get_engine(backend)
    st_ = check_array(backend, np.arange(1, 101, dtype=np.float32).astype(ml_dtypes.bfloat16), "BF16")
    assert st_["quantiles"] == {"0.001": 1.0, "0.01": 1.0, "0.5": 50.0, "0.99": 99.0, "0.999": 100.0}
    assert st_["mean"] == 50.5 and st_["min"] == 1.0 and st_["max"] == 100.0 and st_["absmax"] == 100.0
    assert math.isclose(st_["l2"], math.sqrt(sum(i * i for i in range(1, 101))), rel_tol=1e-12)
    assert math.isclose(st_["std"], math.sqrt((100**2 - 1) / 12), rel_tol=1e-12)
    # F32 quantiles are truncated toward zero to bf16; NaN whose top 16 bits read as ±inf is NaN
    x = np.array([1.00001, -1.00001, 3.0, 3.0], np.float32).view(np.uint32)
    x = np.concatenate([x, np.array([0x7F80_0001, 0xFF80_0001, 0x7FC0_0000], np.uint32)])
    st_ = check_array(backend, x, "F32")
    assert (st_["nan"], st_["posinf"], st_["neginf"]) == (3, 0, 0)
    assert list(st_["quantiles"].values()) == [-1.0, -1.0, 1.0, 3.0, 3.0]
    assert st_["min"] == float(np.float32(-1.00001))
    # F64 quantiles: round to float32 first (overflow to inf), then truncate
    st_ = check_array(backend, np.array([3.4028235677973366e38, 3.4028235677973362e38] * 3), "F64")
    assert st_["quantiles"]["0.001"] == float(np.uint32(0x7F7F0000).view(np.float32))
    assert st_["quantiles"]["0.999"] == math.inf and st_["posinf"] == 0
    # exact 64-bit integers
    st_ = check_array(backend, np.array([-2**63, 2**63 - 1, 0, -1], np.int64), "I64")
    assert (st_["min"], st_["max"], st_["absmax"], st_["zeros"]) == (-2**63, 2**63 - 1, 2**63, 1)
    st_ = check_array(backend, np.array([2**64 - 1, 2**63, 5], np.uint64), "U64")
    assert (st_["min"], st_["max"], st_["absmax"]) == (5, 2**64 - 1, 2**64 - 1)
    assert st_["quantiles"]["0.999"] == 2.0**64
    # BOOL: any non-zero byte is 1; quantiles are ints
    st_ = check_array(backend, np.array([0, 1, 2, 255, 0], np.uint8), "BOOL")
    assert (st_["min"], st_["max"], st_["zeros"], st_["mean"]) == (0, 1, 2, 0.6)
    assert st_["quantiles"] == {"0.001": 0, "0.01": 0, "0.5": 1, "0.99": 1, "0.999": 1}
    # subnormals per the dtype's own encoding; ±0 both zeros
    st_ = check_array(backend, np.array([0x0001, 0x8001, 0x0080, 0x0000, 0x8000], np.uint16), "BF16")
    assert (st_["subnormal"], st_["zeros"]) == (2, 2)
    assert eng.array_stats(np.array([1e-40], np.float32), "F32", quantiles=True)["subnormal"] == 1
    assert eng.array_stats(np.array([1e-40], np.float64), "F64", quantiles=True)["subnormal"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_f64_moments_do_not_overflow_or_underflow(backend):
    """sum(x^2) of large (> 1e154) or subnormal float64 values is out of float64's range;
    the moments must still be right (only l2 > DBL_MAX itself is inf)."""
    st_ = check_array(backend, np.array([1e200, 1e200, -1e200, 1e200]), "F64")
    assert math.isclose(st_["l2"], 2e200, rel_tol=1e-12)
    assert math.isclose(st_["std"], math.sqrt(0.75) * 1e200, rel_tol=1e-12)
    assert math.isclose(st_["mean"], 0.5e200, rel_tol=1e-12)
    st_ = check_array(backend, np.array([1.5e308, 1.5e308, -1.6e308]), "F64")
    assert st_["l2"] == math.inf and math.isclose(st_["mean"], 1.4e308 / 3, rel_tol=1e-12)
    st_ = check_array(backend, np.full(4, 5e-324), "F64")
    assert st_["l2"] == 1e-323 and st_["mean"] == 5e-324 and st_["subnormal"] == 4
    # l2 exactly DBL_MAX (found by hypothesis): rounding in the scaled sums must not make it inf
    big = np.finfo(np.float64).max
    st_ = check_array(backend, np.array([0.0] * 8 + [big]), "F64")
    assert st_["l2"] == big and st_["absmax"] == big
    st_ = check_array(backend, np.array([-big, big]), "F64")
    assert st_["std"] == big and st_["l2"] == math.inf


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32", "U8", "I64", "F64"])
def test_large_odd_size(backend, dtype, monkeypatch):
    """1,000,003 elements: typical values plus a sprinkle of special patterns, several chunks."""
    monkeypatch.setattr(numpy_backend, "CHUNK_ELEMENTS", 1 << 18)
    rng = np.random.default_rng(DTYPE_NAMES.index(dtype))
    n = 1_000_003
    if dtype in ("BF16", "F16", "F32", "F64"):
        x = (rng.standard_normal(n) * 0.02 + 0.001).astype(R.FLOAT_VIEW[dtype])
        raw = x.view(UINT[R.ITEMSIZE[dtype]]).copy()
    else:
        raw = rng.integers(0, 1 << (8 * R.ITEMSIZE[dtype]), n, dtype=UINT[R.ITEMSIZE[dtype]],
                           endpoint=False)
    pos = rng.integers(0, n, 500)
    raw[pos] = pick(rng, dtype, 500)
    check_array(backend, raw, dtype)
    check_array(backend, raw, dtype, quantiles=False)


# ------------------------------------------------------------------------------------------------
# run_stats on safetensors files


@st.composite
def tensor_sets(draw):
    n = draw(st.integers(1, 6))
    out = {}
    for i in range(n):
        dtype = draw(st.sampled_from(DTYPE_NAMES))
        shape_kind = draw(st.sampled_from(["vector", "matrix", "scalar", "empty"]))
        if shape_kind == "scalar":
            raw = to_raw([draw(st.integers(0, (1 << (8 * R.ITEMSIZE[dtype])) - 1))], dtype)
            shape: tuple = ()
        elif shape_kind == "empty":
            raw, shape = to_raw([], dtype), draw(st.sampled_from([(0,), (2, 0), (0, 3, 1)]))
        else:
            raw = draw(raw_elements(dtype, max_size=120))
            shape = (raw.size,)
            if shape_kind == "matrix" and raw.size % 3 == 0 and raw.size:
                shape = (3, raw.size // 3)
        out[f"t{i}.{dtype.lower()}"] = (dtype, shape, raw)
    return out


def _run_and_check(backend: str, tmp: str, files: list[dict], threads, seed: int) -> None:
    infos, expect = [], {}
    for j, tensors in enumerate(files):
        path = os.path.join(tmp, f"shard{j}.safetensors")
        write_safetensors(path, tensors)
        for t in tensor_infos(path):
            dtype, shape, raw = tensors[t.name]
            assert (t.dtype, t.shape, t.numel) == (dtype, shape, raw.size)
            assert file_bytes(t) == raw.tobytes()        # our offsets point at the right bytes
            infos.append(t)
            expect[(j, t.name)] = ORACLE.array_stats(raw, dtype, quantiles=True)
    random.Random(seed).shuffle(infos)                   # interleave files, any order
    prog = Progress()
    got = get_engine(backend).run_stats(infos, quantiles=True, threads=threads, progress=prog)
    prog.check(sum(t.nbytes for t in infos))
    assert isinstance(got, list) and len(got) == len(infos)
    for t, g in zip(infos, got):
        want = expect[(int(os.path.basename(t.file)[5]), t.name)]
        R.assert_plain(g, t.dtype)
        if backend == "numpy":
            assert same_bits(g, want), (t, g, want)      # run_stats == array_stats, bit for bit
        else:
            R.assert_stats_match(g, want, what=f"{backend} run_stats {t.name}")


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, **HYP)
@given(files=st.lists(tensor_sets(), min_size=1, max_size=2),
       threads=st.sampled_from([None, 1, 2, 4]), seed=st.integers(0, 99))
def test_run_stats_matches_array_stats(backend, files, threads, seed):
    with tempfile.TemporaryDirectory() as tmp:
        _run_and_check(backend, tmp, files, threads, seed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_stats_numpy_writer_and_no_stats_dtypes(backend, tmp_path):
    """A file written by safetensors.numpy, plus tensors of dtypes without statistics (None)."""
    rng = np.random.default_rng(3)
    arrays = {"w": rng.standard_normal((40, 25)).astype(np.float32),
              "b": rng.integers(-9, 9, 7).astype(np.int16), "m": rng.random(13) < 0.5,
              "h": np.array(2.5, dtype=np.float16), "e": np.zeros((0, 4), np.float64)}
    path = str(tmp_path / "np.safetensors")
    np_save_file(arrays, path)
    infos = tensor_infos(path)
    dt = {"float32": "F32", "int16": "I16", "bool": "BOOL", "float16": "F16", "float64": "F64"}
    # a second "file" whose bytes are read as dtypes without statistics
    raw_path = str(tmp_path / "raw.bin")
    with open(raw_path, "wb") as f:
        f.write(bytes(range(256)) * 4)
    infos += [TensorInfo("c64", "C64", (16,), raw_path, 0, 128, 16),
              TensorInfo("f4", "F4", (64,), raw_path, 128, 32, 64),
              TensorInfo("e8m0", "F8_E8M0", (100,), raw_path, 200, 100, 100)]
    infos.reverse()
    prog = Progress()
    got = get_engine(backend).run_stats(infos, quantiles=True, threads=2, progress=prog)
    prog.check(sum(t.nbytes for t in infos))
    for t, g in zip(infos, got):
        if t.file == raw_path:
            assert g is None
            continue
        assert t.dtype == dt[arrays[t.name].dtype.name]
        want = ORACLE.array_stats(arrays[t.name], t.dtype, quantiles=True)
        R.assert_stats_match(g, want, what=t.name)
        R.assert_stats_match(g, R.reference_stats(arrays[t.name], t.dtype), what=t.name)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """~36 MB: tensors spanning several native (4 MiB) and numpy chunks, plus small ones."""
    rng = np.random.default_rng(11)
    tensors = {
        "emb": ("BF16", (5_000_003,), (rng.standard_normal(5_000_003) * 0.05).astype(
            ml_dtypes.bfloat16).view(np.uint16)),
        "w32": ("F32", (1001, 2003), (rng.standard_normal(1001 * 2003) * 1e3).astype(
            np.float32).view(np.uint32)),
        "w64": ("F64", (700_001,), (rng.standard_normal(700_001) * 1e150).view(np.uint64)),
        "q8": ("U8", (3_000_017,), rng.integers(0, 256, 3_000_017, dtype=np.uint8)),
        "ids": ("I64", (100_003,), rng.integers(-2**63, 2**63 - 1, 100_003, dtype=np.int64,
                                                endpoint=True).view(np.uint64)),
        "norm": ("F16", (4096,), rng.standard_normal(4096).astype(np.float16).view(np.uint16)),
        "h16": ("F16", (3_000_017,), (rng.standard_normal(3_000_017) * 0.02 + 0.001).astype(
            np.float16).view(np.uint16)),
        "scalar": ("F32", (), np.array([np.float32(0.5)]).view(np.uint32)),
    }
    tensors["emb"][2][::99_991] = 0x7FC0                    # some NaNs
    h = tensors["h16"][2]                                   # NaN, +-Inf, +-0, subnormals, +-max
    h[::99_989] = 0x7E00; h[7] = 0x7C00; h[8] = 0xFC00; h[9] = 0x8000; h[10:20] = 0
    h[21] = 0x0001; h[22] = 0x81F7; h[23] = 0x7BFF; h[2_500_000] = 0xFBFF
    h[1_000_448:1_001_472] = 0x7C01                         # a 1024-block with no finite value
    path = str(tmp_path_factory.mktemp("big") / "big.safetensors")
    write_safetensors(path, {k: (d, s, r.reshape(-1)) for k, (d, s, r) in tensors.items()})
    return path, {k: (d, r) for k, (d, s, r) in tensors.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_do_not_change_results(backend, big_file):
    path, tensors = big_file
    infos = tensor_infos(path)
    eng = get_engine(backend)
    one = eng.run_stats(infos, quantiles=True, threads=1, progress=None)
    four = eng.run_stats(infos, quantiles=True, threads=4, progress=None)
    assert same_bits(one, four)
    assert same_bits(eng.run_stats(infos, quantiles=True, threads=4, progress=None), four)
    for t, g in zip(infos, one):
        dtype, raw = tensors[t.name]
        want = ORACLE.array_stats(raw, dtype, quantiles=True)
        if backend == "numpy":
            assert same_bits(g, want)
        else:
            R.assert_stats_match(g, want, what=f"{backend} {t.name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_big_file_without_quantiles(backend, big_file):
    """quantiles=False takes other native paths (bf16, f16: the blocked one-pass kernel instead of
    the histogram) over multi-piece tensors: same counts/extremes, moments within the tolerances,
    and bit-identical for any thread count."""
    path, tensors = big_file
    infos = tensor_infos(path)
    eng = get_engine(backend)
    one = eng.run_stats(infos, quantiles=False, threads=1, progress=None)
    assert same_bits(eng.run_stats(infos, quantiles=False, threads=4, progress=None), one)
    for t, g in zip(infos, one):
        dtype, raw = tensors[t.name]
        R.assert_plain(g, dtype)
        assert g["quantiles"] is None
        R.assert_stats_match(g, ORACLE.array_stats(raw, dtype, quantiles=False), what=f"{backend} {t.name}")


# ------------------------------------------------------------------------------------------------
# chunking of the numpy oracle


@pytest.mark.parametrize("dtype", ["F64", "F32", "BF16", "F8_E5M2", "I64", "U16", "BOOL"])
@pytest.mark.parametrize("chunk", [1, 997, 4096])
def test_chunk_boundaries(dtype, chunk, monkeypatch, tmp_path):
    rng = np.random.default_rng(chunk)
    n = 20_011 if chunk > 1 else 601
    raw = rng.integers(0, 1 << 62, n, dtype=np.uint64).astype(UINT[R.ITEMSIZE[dtype]])
    if dtype in ("F64", "F32", "BF16"):   # wide magnitude range so chunks scale differently
        x = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)
        if dtype == "F64":
            x[: n // 3] *= 1e250
        raw = x.astype(R.FLOAT_VIEW[dtype]).view(UINT[R.ITEMSIZE[dtype]]).copy()
    raw[rng.integers(0, n, 50)] = pick(rng, dtype, 50)
    whole = ORACLE.array_stats(raw, dtype, quantiles=True)
    monkeypatch.setattr(numpy_backend, "CHUNK_ELEMENTS", chunk)
    chunked = ORACLE.array_stats(raw, dtype, quantiles=True)
    bad = R.compare_stats(chunked, whole, rel=1e-12, slack=1e-12)
    assert not bad, bad
    R.assert_stats_match(chunked, R.reference_stats(raw, dtype), rel=1e-9)
    path = str(tmp_path / "c.safetensors")
    write_safetensors(path, {"a": (dtype, (n,), raw), "s": ("F32", (), to_raw([0x3F80_0000], "F32"))})
    prog = Progress()
    infos = tensor_infos(path)
    got = ORACLE.run_stats(infos, quantiles=True, threads=None, progress=prog)
    assert same_bits(got[[t.name for t in infos].index("a")], chunked)
    prog.check(n * R.ITEMSIZE[dtype] + 4)
    assert len(prog.calls) == -(-n // chunk) + 1          # one call per chunk


# ------------------------------------------------------------------------------------------------
# dtypes without statistics: one clear error everywhere

NO_STATS = [n for n, d in DTYPES.items() if not d.has_stats and d.kind != "block"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NO_STATS)
def test_no_stats_dtype_is_the_same_error_on_every_backend(backend, name):
    """tensor_stats(raw bytes, dtype=F4, ...) raises TypeError naming the dtype on every backend,
    and every engine's array_stats does (the numpy engine returned None, the others said so)."""
    raw = np.zeros(8, np.uint8)     # 8 bytes: a whole number of elements of each of these dtypes
    with pytest.raises(TypeError, match=f"no statistics for dtype {name} "):
        paramkit.tensor_stats(raw, dtype=name, backend=backend)
    with pytest.raises(TypeError, match=f"no statistics for dtype {name} "):
        get_engine(backend).array_stats(raw, name, quantiles=True)
    with pytest.raises(ValueError, match="unknown dtype"):
        get_engine(backend).array_stats(raw, "F12", quantiles=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["Q4_K", "Q8_0", "IQ2_XXS", "Q8_K"])
def test_block_dtype_array_stats_point_to_the_gguf_scan(backend, name):
    """GGML block types have statistics only inside a GGUF scan (tests/test_gguf_stats.py): tensor_stats on
    their raw bytes is a TypeError saying so, on every backend."""
    raw = np.zeros(292, np.uint8)
    with pytest.raises(TypeError, match=f"{name} is a GGML block type"):
        paramkit.tensor_stats(raw, dtype=name, backend=backend)
    with pytest.raises(TypeError, match=f"{name} is a GGML block type"):
        get_engine(backend).array_stats(raw, name, quantiles=True)


# ------------------------------------------------------------------------------------------------
# model-level aggregates near the float64 limits

DBL_MAX = sys.float_info.max


def _exact_moments(values) -> tuple[float, float, float]:
    """(mean, std, l2) of float64 values, in 80-digit decimal arithmetic (no overflow, no float64
    rounding until the final conversion; a value beyond DBL_MAX converts to inf)."""
    with decimal.localcontext() as c:
        c.prec, c.Emax, c.Emin = 80, 10 ** 6, -10 ** 6
        xs = [decimal.Decimal(float(v)) for v in values]
        mean = sum(xs) / len(xs)
        var = sum((x - mean) ** 2 for x in xs) / len(xs)
        return float(mean), float(var.sqrt()), float(sum(x * x for x in xs).sqrt())


AGGREGATE_CASES = {
    "1e200": {"a": [[1e200, -1e200]], "b": [[3e199, 5e200, -7e154]], "c": [[1.0, 2.0]]},
    "dbl_max_l2_inf": {"a": [[DBL_MAX, 0.0]], "b": [[0.0, -DBL_MAX]]},       # l2 = sqrt(2)·DBL_MAX
    "dbl_max_l2_exact": {"a": [[DBL_MAX]], "b": [[0.0, 0.0]]},             # l2 = DBL_MAX exactly
    "mixed_magnitudes": {"a": [[DBL_MAX * 0.75, 1e-300]], "b": [[-DBL_MAX * 0.5, 2.0]],
                         "c": [[1e-310, -3e-320]]},
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(AGGREGATE_CASES))
def test_aggregates_near_dbl_max(backend, case, tmp_path):
    """scan()'s model-level mean/std/l2 follow the per-tensor numerics (scaled sums, saturation):
    F64 tensors with std or l2 above 1.3e154 used to raise OverflowError from report.aggregate."""
    tensors = {k: np.array(v, np.float64) for k, v in AGGREGATE_CASES[case].items()}
    path = str(tmp_path / "big.safetensors")
    np_save_file(tensors, path)
    agg = paramkit.scan(path, backend=backend).aggregates
    values = np.concatenate([t.ravel() for t in tensors.values()])
    want = dict(zip(("mean", "std", "l2"), _exact_moments(values)))
    scale = float(np.max(np.abs(values)))
    for k, w in want.items():
        got = agg[k]
        if math.isinf(w):
            assert got == w, (k, got, w)
        else:
            assert math.isfinite(got) and abs(got - w) <= 1e-12 * max(abs(w), scale * 1e-3), (k, got, w)
    if case == "dbl_max_l2_exact":
        assert agg["l2"] == DBL_MAX                   # saturated, not inf (the true value is DBL_MAX)
    assert agg["numel"] == values.size and agg["absmax"] == scale
    [(_, report, error)] = list(paramkit.scan_many([path], backend=backend))
    assert error is None and report.aggregates == agg
