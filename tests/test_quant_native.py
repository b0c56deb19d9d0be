"""Checks the native quantization math (cpp/include/paramkit/quant.hpp via paramkit._core) against the
NumPy oracle paramkit.quant: dequantized values bit for bit, counts exactly, float64 sums to 1e-9."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import paramkit.quant as Q

core = pytest.importorskip("paramkit._core")
if not hasattr(core, "fake_quantize"):
    pytest.skip("paramkit._core has no quantization entry points", allow_module_level=True)

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------------------------
# the adapter: scheme id -> (kind, group), tensor shape -> (rows, row_len)
# ---------------------------------------------------------------------------------------------
def native_kind(scheme) -> tuple[int, int]:
    """(QuantKind, group) of a paramkit.quant scheme for paramkit._core.fake_quantize."""
    s = Q.get_scheme(scheme)
    K = core.QUANT_KINDS
    fam = s.family
    if fam == "int_group":
        fam = "int8_group" if s.bits == 8 else "int4_group"
    elif fam == "int_group_asym":
        fam = "int4_group_asym"
    return K[fam], int(s.group_size or 0)


def native_rows(scheme, shape) -> tuple[int, int]:
    """The [rows, row_len] view the engines are given: Scheme.rows_view, as paramkit's callers use it."""
    return Q.get_scheme(scheme).rows_view(shape)


def native_fake_quantize(array, scheme, tensor_absmax=None):
    x = np.require(Q.to_float32(array), requirements="C")   # keeps 0-d (ascontiguousarray does not)
    kind, group = native_kind(scheme)
    rows, row_len = native_rows(scheme, x.shape)
    return core.fake_quantize(x, kind, group, rows, row_len, tensor_absmax)


def native_error_sums(array, scheme, tensor_absmax=None):
    x = np.require(Q.to_float32(array), requirements="C")   # keeps 0-d (ascontiguousarray does not)
    kind, group = native_kind(scheme)
    rows, row_len = native_rows(scheme, x.shape)
    return core.quant_error_sums(x, kind, group, rows, row_len, tensor_absmax)


# ---------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------
def assert_same_values(got, ref):
    got = np.asarray(got)
    ref = np.asarray(ref, dtype=np.float32)
    assert got.dtype == np.float32 and got.shape == ref.shape
    gn, rn = np.isnan(got), np.isnan(ref)
    assert np.array_equal(gn, rn), f"NaN positions differ: {np.flatnonzero(gn != rn)[:5]}"
    g, r = got[~gn].view(np.uint32), ref[~rn].view(np.uint32)
    bad = np.flatnonzero(g != r)
    assert bad.size == 0, (f"{bad.size} differing elements, first {got[~gn][bad[:5]]} "
                           f"(native) vs {ref[~rn][bad[:5]]} (reference)")


def assert_same_sums(got, ref):
    for k in ("n", "nonfinite", "clipped", "scale_clamped"):
        assert int(got[k]) == int(ref[k]), (k, got[k], ref[k])
        assert isinstance(got[k], int)
    for k in ("sse", "sum_w2", "sum_q2", "sum_wq", "max_abs_err"):
        a, b = float(got[k]), float(ref[k])
        if math.isinf(b) or math.isnan(b):
            assert a == b or (math.isnan(a) and math.isnan(b)), (k, a, b)
        elif k == "max_abs_err":
            assert a == b, (k, a, b)                       # a max is exact
        else:
            assert a == pytest.approx(b, rel=1e-9, abs=1e-300), (k, a, b)


def check(array, scheme, tensor_absmax=None):
    ref = Q.quantize_dequantize(array, scheme, tensor_absmax=tensor_absmax)
    ref_sums = Q.error_sums(array, scheme, tensor_absmax=tensor_absmax)
    assert (ref_sums["clipped"], ref_sums["scale_clamped"]) == (ref.clipped, ref.scale_clamped)
    out, sums = native_fake_quantize(array, scheme, tensor_absmax)
    assert_same_values(out, ref.values)
    assert_same_sums(sums, ref_sums)
    assert_same_sums(native_error_sums(array, scheme, tensor_absmax), sums)
    return out, sums


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------
SPECIAL = [0.0, -0.0, np.nan, np.inf, -np.inf, 0.5, -0.5, 1.5, -2.5, 127.0, -8.0, 448.0, 464.0,
           1e-45, -1e-45, 1e-40, 1.1754944e-38, 1e-30, 3.4028235e38, -3.4028235e38, 1e30, 65504.0,
           65520.0, 6e-8, 2.0 ** -25, 2.0 ** -24 * 1.5]
ELEMENTS = st.one_of(
    st.floats(-1.0, 1.0, width=32),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.floats(-2.0 ** -124, 2.0 ** -124, width=32),       # tiny and subnormal
    st.sampled_from(SPECIAL),
    st.integers(-300, 300).map(lambda i: i * 0.5),     # halves: ties once the scale is a power of 2
)
CASTS = [None, np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]


@st.composite
def tensors(draw, multiple=1):
    """float32 arrays of 0-3 dimensions (sometimes empty), the last dimension a multiple of
    `multiple`, optionally made representable in a narrower float dtype, and sometimes with an
    anchor element that makes the scale exact (127, 7, 8, 15, 448 times a power of two) so that
    the halves in the data land on exact ties."""
    ndim = draw(st.integers(0 if multiple == 1 else 1, 3))
    shape = [draw(st.integers(0 if draw(st.booleans()) and ndim else 1, 4)) for _ in range(ndim - 1)]
    if ndim:
        shape.append(multiple * draw(st.integers(0, 6 if multiple > 1 else 150)))
    x = draw(hnp.arrays(np.float32, tuple(shape), elements=ELEMENTS))
    cast = draw(st.sampled_from(CASTS))
    if cast is not None:
        with np.errstate(all="ignore"):
            x = x.astype(cast).astype(np.float32)
    if x.size and draw(st.booleans()):
        anchor = draw(st.sampled_from([127.0, 7.0, -8.0, 8.0, 15.0, 448.0, 63.5]))
        anchor *= draw(st.sampled_from([1.0, 1.0, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11]))  # fp16 ties
        scale = 2.0 ** draw(st.integers(-20, 20))
        flat = x.reshape(-1)
        k = draw(st.integers(0, flat.size - 1))
        with np.errstate(all="ignore"):
            lim = np.float32(abs(anchor))
            flat[:] = np.where(np.isfinite(flat), np.clip(flat, -lim, lim), flat) * np.float32(scale)
        flat[k] = np.float32(anchor * scale)
    return x


ALL_SCHEMES = list(Q.DEFAULT_SCHEMES) + list(Q.VARIANT_SCHEMES) + [
    "int4_g7", "int8_g5", "int4_g1", "int4_g5_asym", "int4_g1_asym", "int8_g300"]


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sid", ALL_SCHEMES)
@SETTINGS
@given(data=st.data())
def test_native_matches_reference(sid, data):
    multiple = 32 if Q.get_scheme(sid).strict_rows else 1
    x = data.draw(tensors(multiple))
    check(x, sid)


@pytest.mark.parametrize("sid", ["int8_tensor", "fp8_e4m3"])
@SETTINGS
@given(x=tensors(), shrink=st.sampled_from([0.0, 1e-30, 0.01, 0.5, 1.0, 2.0]))
def test_native_tensor_absmax_given(sid, x, shrink):
    fin = x[np.isfinite(x)]
    amax = min(float(np.max(np.abs(fin))) * shrink, 3.4028234663852886e38) if fin.size else shrink
    amax = float(np.float32(amax))
    check(x, sid, tensor_absmax=amax)


@pytest.mark.parametrize("sid", Q.DEFAULT_SCHEMES)
def test_native_gaussian_and_conv_shapes(sid):
    rng = np.random.default_rng(31)
    w = (rng.standard_normal((64, 1024)) * 0.02).astype(np.float32)
    w[5, 17] = np.nan
    w[9, 3] = np.inf
    _, sums = check(w, sid)
    assert sums["n"] == w.size - 2 and sums["nonfinite"] == 2
    conv = (rng.standard_normal((8, 4, 3, 32)) * 0.1).astype(np.float32)
    conv[3] *= 50                                    # one output channel with a larger range
    check(conv, sid)
    if not Q.get_scheme(sid).strict_rows:
        check(np.float32(0.3), sid)
        check(np.float32(-np.inf), sid)


def test_native_explicit_ties():
    x = np.zeros((1, 200), np.float32)
    x[0, :8] = [127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5]
    for sid in ("int8_tensor", "int8_channel", "int8_g128", "int8_g32", "int4_g128", "nf4"):
        check(x, sid)
    out, _ = native_fake_quantize(x, "int8_g128")
    assert out[0, :8].tolist() == [127, 0, 2, 2, 0, -2, -2, 126]
    row = np.zeros((1, 32), np.float32)
    row[0, :9] = [127, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 126.5, -0.25]
    out, _ = check(row, "q8_0")
    assert out[0, :9].tolist() == [127, 3, -3, 1, -1, 2, -2, 127, 0]
    assert not np.signbit(out[0, 8])
    check(row, "q4_0")
    y = np.zeros(64, np.float32)
    y[0] = 1.0
    y[1:16] = Q.NF4_THRESHOLDS                         # on a threshold: the lower code
    y[16:31] = np.nextafter(Q.NF4_THRESHOLDS, np.float32(np.inf))
    check(y, "nf4")
    z = np.array([448, 1.0625, 1.1875, 1.5 * 2 ** -9, 2 ** -10, 432, 400, -1e-9, 0.0], np.float32)
    out, _ = check(z, "fp8_e4m3")
    assert np.signbit(out[7])
    check(np.array([896.0, 464.0, 470.0, -10000.0, 1.0], np.float32), "fp8_e4m3", tensor_absmax=448.0)
    a = np.zeros((1, 128), np.float32)
    a[0, :6] = [-5.5, 9.5, 0.5, 1.5, -0.5, 2.5]
    _, s = check(a, "int4_g128_asym")
    assert s["clipped"] == 1


def test_native_q4_0_not_fused():
    """Blocks where trunc(x·id + 8.5) depends on rounding x·id before the add: a fused
    multiply-add (FMA) would give the code below."""
    for m, x, code_fused in ((1.7861064672470093, 1.674474835395813, 0),
                             (0.06780993938446045, 0.055095575749874115, 1),
                             (2.4575061798095703, -1.9967235326766968, 14)):
        blk = np.zeros((1, 32), np.float32)
        blk[0, 0], blk[0, 1] = m, x
        out, _ = check(blk, "q4_0")
        d = np.float32(m) / np.float32(-8)
        fused = np.trunc(np.float32(np.float64(x) * np.float64(np.float32(1) / d) + 8.5))
        assert fused == code_fused
        assert out[0, 1] != np.float32((code_fused - 8) * np.float32(np.float16(d)))


def test_native_fp16_scale_ties():
    """Scales exactly halfway between two fp16 values (normal and subnormal) round to even."""
    for qmax, sid in ((127, "int8_g128"), (7, "int4_g32"), (127, "q8_0")):
        for scale in (1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 2.5 * 2.0 ** -24, 3.5 * 2.0 ** -24,
                      65504 + 16.0):
            x = np.zeros((1, 32), np.float32)
            x[0, 0] = np.float32(qmax * scale)
            x[0, 1:6] = [0.5, -0.25, 0.3, -3.0, 1.0]
            x[0, 1:6] *= np.float32(scale)
            check(x, sid)
    x = np.zeros((1, 32), np.float32)
    x[0, 0], x[0, 1] = np.float32(-8 * (1 + 2.0 ** -11)), 1.0     # q4_0: d = 1 + 2^-11
    check(x, "q4_0")
    x[0, 0] = np.float32(15 * (1 + 2.0 ** -11)) - 0                 # asym: scale (1+2^-11)
    x[0, 1] = 0.0
    check(x, "int4_g32_asym")


def test_native_scale_clamp_and_extremes():
    _, s = check(np.full((1, 128), 1e-30, np.float32), "int8_g128")
    assert s["scale_clamped"] == 1
    huge = np.full((2, 32), 1e9, np.float32)
    for sid in ("q8_0", "q4_0", "int4_g128_asym", "int4_g32", "nf4"):
        check(huge, sid)
    _, s = check(huge, "q8_0")
    assert s["scale_clamped"] == 2
    big = np.array([[3.4028235e38, -3.4028235e38, 1.0, np.inf, -np.inf, np.nan, 0.0, -0.0] * 4],
                   np.float32)
    for sid in ALL_SCHEMES:
        if not Q.get_scheme(sid).strict_rows or big.shape[-1] % 32 == 0:
            check(big, sid)
    # a subnormal block scale whose reciprocal overflows: the oracle turns the zeros of the block
    # into 0·Inf = NaN for q8_0 / q4_0 (and max_abs_err becomes NaN, as np.max does); matched here
    tiny = np.zeros((1, 64), np.float32)
    tiny[0, 31] = tiny[0, 33] = np.float32(5.91904e-39)
    for sid in ("q8_0", "q4_0", "int8_g32", "int4_g32_asym", "nf4", "int8_tensor", "fp8_e4m3"):
        check(tiny, sid)
    allbad = np.array([[np.nan, np.inf, -np.inf] + [np.nan] * 29], np.float32)
    for sid in Q.DEFAULT_SCHEMES:
        _, s = check(allbad, sid)
        assert s["n"] == 0 and s["nonfinite"] == 32


def test_native_argument_errors():
    x = np.zeros((3, 48), np.float32)
    kind, group = native_kind("q4_0")
    with pytest.raises(ValueError, match="multiple"):
        core.fake_quantize(x, kind, group, 3, 48)
    with pytest.raises(ValueError):
        core.quant_error_sums(np.zeros((0, 33), np.float32), kind, group, 0, 33)
    with pytest.raises(ValueError):
        core.fake_quantize(np.zeros((2, 64), np.float32), kind, 64, 2, 64)   # ggml blocks are 32
    k8, g8 = native_kind("int8_g128")
    with pytest.raises(ValueError):
        core.fake_quantize(x, k8, g8, 3, 47)           # rows*row_len != size
    with pytest.raises(ValueError):
        core.fake_quantize(x, k8, 0, 3, 48)            # group < 1
    with pytest.raises(ValueError):
        core.fake_quantize(x, 99, 32, 3, 48)
    with pytest.raises(TypeError):
        core.fake_quantize(x.astype(np.float64), k8, g8, 3, 48)
    with pytest.raises(TypeError):
        core.fake_quantize(np.zeros((48, 3), np.float32).T, k8, g8, 3, 48)
    kt, _ = native_kind("int8_tensor")
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            core.fake_quantize(x, kt, 0, 3, 48, bad)
    for shape in ((0,), (0, 64), (3, 0), (2, 0, 32)):
        for sid in Q.DEFAULT_SCHEMES:
            out, s = native_fake_quantize(np.zeros(shape, np.float32), sid)
            assert out.shape == shape and s["n"] == 0 and s["sse"] == 0.0


def test_native_chunks_merge_like_the_engine():
    """Quantizing aligned chunks with the tensor's absmax gives the whole tensor's values; the
    chunk sums merge (paramkit.quant.merge_error) to the whole-tensor sums."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((24, 256)) * 0.05).astype(np.float32)
    absmax = float(np.max(np.abs(w)))
    for sid in Q.DEFAULT_SCHEMES:
        s = Q.get_scheme(sid)
        whole_out, whole = native_fake_quantize(w, s)
        total, pieces = Q.empty_error_sums(), []
        for a in range(0, 24, 5):
            out, part = native_fake_quantize(w[a:a + 5], s, absmax if s.needs_tensor_absmax else None)
            pieces.append(out)
            total = Q.merge_error(total, part)
        assert_same_values(np.concatenate(pieces), whole_out)
        assert_same_sums(total, whole)


MERGE_MAXES = [0.0, 1.0, 2.5, math.inf, math.nan]


def test_one_merge_rule_native_and_python():
    """The engines' one merge (quant.hpp merge_quant_sums, which the cpu engine's per-piece merge and
    the cuda engine use; engine.cpp had a second copy that dropped a NaN) and paramkit.quant.merge_error
    agree on every pair of max_abs_err, a NaN on either side winning; counts and sums add."""
    for a in MERGE_MAXES:
        for b in MERGE_MAXES:
            x = {**Q.empty_error_sums(), "max_abs_err": a, "n": 3, "sse": 0.5, "clipped": 1}
            y = {**Q.empty_error_sums(), "max_abs_err": b, "n": 4, "sse": 0.25, "scale_clamped": 2}
            want = math.nan if math.isnan(a) or math.isnan(b) else max(a, b)
            for got in (core.merge_quant_sums(x, y), Q.merge_error(x, y)):
                m = got["max_abs_err"]
                assert m == want or (math.isnan(m) and math.isnan(want)), (a, b, got)
                assert (got["n"], got["sse"], got["clipped"], got["scale_clamped"]) == (7, 0.75, 1, 2)
