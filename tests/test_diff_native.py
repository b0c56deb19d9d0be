"""The native diff pass of the cpu engine (paramkit._core.run_diff) against the numpy backend's pass, the oracle:
random pairs of every dtype (hypothesis), odd sizes, NaN/Inf/zeros/subnormals, empty and scalar tensors, GGML
block types in GGUF files written by gguf.GGUFWriter, threads=1 vs 2 bit for bit, and a few values against
float64 NumPy computed here. Counts and max |A-B| equal exactly; float sums within the README's tolerance."""
from __future__ import annotations

import contextlib
import json
import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import paramkit
from paramkit.backends import native_diff, numpy_diff

from stats_reference import compare_stats
from test_diff import check

pytestmark = pytest.mark.skipif("cpu" not in [b.name for b in paramkit.backends() if b.available],
                                reason="paramkit._core is not built")

NP = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
      "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I8": np.int8, "U8": np.uint8,
      "I16": np.int16, "U16": np.uint16, "I32": np.int32, "U32": np.uint32, "I64": np.int64, "U64": np.uint64,
      "BOOL": np.bool_}
FLOATS = [k for k in NP if k.startswith(("F", "B")) and k != "BOOL"]
SHAPES = [(), (0,), (1,), (2,), (7,), (13, 5), (65,), (3, 0), (129, 3), (257,)]
EPS = 2.0 ** -53
INT_KEYS = ("n", "nonfinite", "changed", "nonfinite_changed", "clipped", "scale_clamped")
POSITIVE_SUMS = ("sse", "sum_w2", "sum_q2", "sum_abs")


def smallest_subnormal(dtype: str) -> float:
    return float(np.finfo(NP[dtype]).smallest_subnormal)


def values(rng, dtype: str, shape: tuple, special: bool) -> np.ndarray:
    """Random values of `dtype`; with `special`, NaN/+-Inf (where the dtype has them), +-0 and subnormals
    at random positions."""
    n = math.prod(shape)
    if dtype == "BOOL":
        return np.asarray(rng.random(shape) < 0.5)
    if dtype not in FLOATS:
        info = np.iinfo(NP[dtype])
        lo, hi = int(info.min), int(info.max)
        x = np.asarray(rng.integers(lo, hi, size=shape, dtype=NP[dtype], endpoint=True))
        if special and n:
            x.reshape(-1)[rng.integers(0, n, 2)] = 0
        return x
    x = rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 50.0])
    if special and n:
        flat = x.reshape(-1)
        picks = [np.nan, 0.0, -0.0, smallest_subnormal(dtype), -3 * smallest_subnormal(dtype)]
        if dtype != "F8_E4M3":
            picks += [np.inf, -np.inf]
        for v in picks:
            if rng.random() < 0.6:
                flat[rng.integers(0, n)] = v
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(x.astype(NP[dtype]))


def partner(rng, x: np.ndarray, dtype: str, how: str) -> np.ndarray:
    """B for A = x: a copy ('same'), a copy with a few elements changed ('few'), or new values ('new')."""
    if how == "new":
        return values(rng, dtype, x.shape, special=True)
    y = x.copy()
    if how == "few" and y.size:
        flat = y.reshape(-1)
        idx = rng.integers(0, y.size, max(1, y.size // 10))
        flat[idx] = values(rng, dtype, (idx.size,), special=True)
    return y


def tolerance_ok(k: str, got: float, want: float, sums: dict, numel: int) -> bool:
    """The README's numerics of the diff sums: two summation orders of n float64 terms differ by at most
    2n·2^-53 of the sum of the terms' magnitudes (sse, sum_w2, sum_q2, sum_abs: the sum itself; sum_wq:
    bounded by sqrt(sum_w2·sum_q2), Cauchy-Schwarz)."""
    if math.isnan(want) or math.isinf(want):
        return got == want or (math.isnan(got) and math.isnan(want))
    bound = 2 * max(numel, 1) * EPS
    scale = abs(want) if k in POSITIVE_SUMS else math.sqrt(sums["sum_w2"] * sums["sum_q2"])
    return abs(got - want) <= bound * scale


def assert_same_result(got, want, name: str) -> None:
    """A native TensorDiff against the numpy one: status, counts and max exactly, sums within tolerance_ok,
    the statistics of A - B by compare_stats (counts and extremes exact, moments 1e-9 relative)."""
    assert got.status == want.status, name
    assert (got.sums is None) == (want.sums is None), name
    if want.sums is None:
        return
    for k in INT_KEYS:
        assert got.sums[k] == want.sums[k], (name, k)
    for k in ("changed", "nonfinite_changed"):
        assert got.sums[k] == want.sums[k], (name, k)
    gm, wm = got.sums["max_abs_err"], want.sums["max_abs_err"]
    assert gm == wm or (math.isnan(gm) and math.isnan(wm)), (name, gm, wm)
    for k in POSITIVE_SUMS + ("sum_wq",):
        assert tolerance_ok(k, got.sums[k], want.sums[k], want.sums, want.numel), (name, k, got.sums[k], want.sums[k])
    assert compare_stats(dict(got.delta, quantiles=None), dict(want.delta, quantiles=None), rel=1e-9) == [], name


@contextlib.contextmanager
def pieces_of(n: int):
    """Both passes with pieces of n elements (many pieces per tensor, equal prefixes re-read)."""
    old = native_diff.CHUNK_ELEMENTS, numpy_diff.CHUNK_ELEMENTS
    native_diff.CHUNK_ELEMENTS = numpy_diff.CHUNK_ELEMENTS = n
    try:
        yield
    finally:
        native_diff.CHUNK_ELEMENTS, numpy_diff.CHUNK_ELEMENTS = old


def canonical(report) -> str:
    d = report.to_dict()
    for k in ("timing", "options", "engine"):
        d.pop(k)
    return json.dumps(d, sort_keys=True)


def diff_all_ways(pa: str, pb: str):
    """(numpy report, cpu report with threads=1), after checking the cpu one against itself with 2 threads."""
    want = paramkit.diff(pa, pb, backend="numpy")
    got = paramkit.diff(pa, pb, backend="cpu", threads=1)
    assert got.backend == "cpu" and want.backend == "numpy"
    assert canonical(paramkit.diff(pa, pb, backend="cpu", threads=2)) == canonical(got)
    for g, w in zip(got.tensors, want.tensors):
        assert_same_result(g, w, g.name)
    return want, got


pair_spec = st.tuples(st.sampled_from(list(NP)), st.sampled_from(list(NP)), st.sampled_from(SHAPES),
                      st.sampled_from(["same", "few", "new"]), st.booleans(), st.booleans())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2 ** 32 - 1), specs=st.lists(pair_spec, min_size=1, max_size=4),
       chunk=st.sampled_from([32, 64, 1 << 19]))
def test_random_pairs_match_the_numpy_pass(tmp_path_factory, seed, specs, chunk):
    rng = np.random.default_rng(seed)
    a, b = {}, {}
    for k, (da, db, shape, how, special, same_dtype) in enumerate(specs):
        db = da if same_dtype else db
        x = values(rng, da, shape, special)
        y = partner(rng, x, da, how)
        if db != da:
            with np.errstate(invalid="ignore", over="ignore"):
                y = y.astype(np.float64).astype(NP[db]) if db in FLOATS else values(rng, db, shape, special)
        a[f"t{k}"], b[f"t{k}"] = x, np.asarray(y)
    d = tmp_path_factory.mktemp("pair")
    pa, pb = str(d / "a.safetensors"), str(d / "b.safetensors")
    save_file(a, pa)
    save_file(b, pb)
    with pieces_of(chunk):
        diff_all_ways(pa, pb)


@pytest.mark.parametrize("dtype", FLOATS)
def test_values_against_float64_numpy(tmp_path, dtype):
    """The metrics of the cpu engine against the definitions computed here in float64 (test_diff.check)."""
    rng = np.random.default_rng(list(NP).index(dtype))
    a = {f"t{k}": values(rng, dtype, s, special=k % 2 == 0) for k, s in enumerate([(), (7,), (129, 3), (3000,)])}
    b = {k: partner(rng, v, dtype, "few") for k, v in a.items()}
    pa, pb = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    save_file(a, pa)
    save_file(b, pb)
    with pieces_of(100):
        d = paramkit.diff(pa, pb, backend="cpu", threads=2)
    assert d.backend == "cpu"
    for t in d.to_dict()["tensors"]:
        if t["status"] == "changed":
            check(t, a[t["name"]], b[t["name"]])


# kDiffBlock of cpp/src/diff_engine.cpp: pairs of float32 values (F32, BF16, F16, GGML blocks) go through the
# fused one-pass kernel a block of this many pairs at a time, a block with a NaN or Inf through diff_update
FUSED_BLOCK = 2048


@pytest.mark.parametrize("da,db", [("F32", "F32"), ("BF16", "BF16"), ("F16", "F16"), ("BF16", "F32"),
                                   ("F16", "BF16")])
def test_fused_float32_blocks_against_float64_numpy(tmp_path, da, db):
    """Tensors of many blocks where only some blocks hold NaN/Inf (fused and long-way blocks merged in one
    tensor), shifted differences (B = A + c: the delta's std is tiny next to its mean), a first pair far from
    the rest (the block's shift K an outlier), ±0 pairs, the largest finite values, against float64 NumPy."""
    rng = np.random.default_rng(7)
    n = 5 * FUSED_BLOCK + 333
    big = float(np.finfo(NP[da]).max) / 4 if da != "BF16" else 1e38
    x = rng.standard_normal(n) * 0.02
    a = {"mixed": x, "shifted": x + 3.0, "outlier": x.copy(), "zeros": np.zeros(n), "huge": x * big / 0.1}
    b = {"mixed": x + rng.standard_normal(n) * 1e-4, "shifted": x + 3.0 + 1e-2 + rng.standard_normal(n) * 1e-6,
         "outlier": x.copy(), "zeros": -np.zeros(n), "huge": -x * big / 0.1}
    a["outlier"][FUSED_BLOCK] = 100.0        # the first pair of the second block, its d = K far from the rest
    b["outlier"][FUSED_BLOCK] = 101.0
    b["outlier"][::7] += 1e-3
    a["mixed"][FUSED_BLOCK + 5], b["mixed"][3 * FUSED_BLOCK + 1] = np.nan, np.inf
    b["zeros"][[10, 4000]] = 1e-3
    with np.errstate(over="ignore"):
        a = {k: np.asarray(v.astype(NP[da])) for k, v in a.items()}
        b = {k: np.asarray(v.astype(NP[db])) for k, v in b.items()}
    pa, pb = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    save_file(a, pa)
    save_file(b, pb)
    d = paramkit.diff(pa, pb, backend="cpu", threads=2)
    got = {t["name"]: t for t in d.to_dict()["tensors"]}
    assert set(got) == set(a)
    for k in a:
        assert got[k]["status"] == ("changed" if da == db else "dtype_changed") or k == "zeros", k
        check(got[k], a[k], b[k])
    want = paramkit.diff(pa, pb, backend="numpy")
    for g, w in zip(d.tensors, want.tensors):
        assert_same_result(g, w, g.name)


def test_known_values(tmp_path):
    """A small pair worked out by hand: d = (0, -1, NaN (NaN - 1), NaN (Inf - Inf), 2e-310 (subnormal))."""
    a = np.array([1.0, 2.0, np.nan, np.inf, 3e-310])
    b = np.array([1.0, 3.0, 1.0, np.inf, 1e-310])
    pa, pb = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    save_file({"x": a}, pa)
    save_file({"x": b}, pb)
    t = paramkit.diff(pa, pb, backend="cpu").tensors[0]
    assert t.sums["n"] == 3 and t.sums["nonfinite"] == 2
    assert t.sums["changed"] == 3 and t.sums["nonfinite_changed"] == 1     # Inf == Inf is not a change
    assert t.sums["max_abs_err"] == 1.0 and t.sums["sse"] == 1.0 + 2e-310 ** 2
    assert t.sums["sum_w2"] == 1.0 + 4.0 + 3e-310 ** 2 and t.sums["sum_wq"] == 1.0 + 6.0 + 3e-310 * 1e-310
    assert t.delta["nan"] == 2 and t.delta["zeros"] == 1 and t.delta["subnormal"] == 1
    assert t.delta["min"] == -1.0 and t.delta["max"] == 3e-310 - 1e-310
    assert t.metrics["frac_changed"] == 3 / 5


def test_identical_bytes_are_not_decoded_and_a_late_change_rereads(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(5000).astype(np.float32)
    y = x.copy()
    y[-1] += 1
    pa, pb = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    save_file({"same": x, "late": x}, pa)
    save_file({"same": x, "late": y}, pb)
    with pieces_of(1024):
        want, got = diff_all_ways(pa, pb)
    by = {t.name: t for t in got.tensors}
    assert by["same"].status == "identical" and by["same"].sums is None
    assert by["late"].status == "changed" and by["late"].sums["changed"] == 1 and by["late"].sums["n"] == 5000
    assert got.engine_info["reread_pieces"] == 4          # the late tensor's four equal pieces, read again


def write_gguf(path: str, tensors: dict) -> None:
    """tensors: name -> float32 array (stored F32) or (GGMLQuantizationType, uint8 block bytes (rows, row bytes))."""
    import gguf
    w = gguf.GGUFWriter(path, "llama")
    for name, v in tensors.items():
        if isinstance(v, tuple):
            w.add_tensor(name, v[1], raw_dtype=v[0])
        else:
            w.add_tensor(name, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_block_types_match_the_numpy_pass(tmp_path):
    """Every GGML type the cpu engine dequantizes: gguf.quants.quantize where gguf-py can quantize it, random
    block bytes (random f16 scales: NaN and Inf values too) for the K and IQ types; the same tensors against
    other quantizations of them (dtype_changed), against an edited copy (changed), and against themselves."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    gq = gguf.quants
    rng = np.random.default_rng(17)
    src = rng.standard_normal((6, 512)).astype(np.float32)
    a, b = {"f32": src}, {"f32": src}
    for t in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.MXFP4):
        blocks = gq.quantize(src, t)
        a[t.name] = (t, blocks)
        b[t.name] = (Q.Q8_0, gq.quantize(src, Q.Q8_0)) if t != Q.Q8_0 else (Q.Q4_0, gq.quantize(src, Q.Q4_0))
        edited = blocks.copy()
        edited[1, 7] ^= 0x55
        a[t.name + "_edit"], b[t.name + "_edit"] = (t, blocks), (t, edited)
    for t in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL, Q.IQ4_XS):
        block, size = gguf.GGML_QUANT_SIZES[t]
        raw = rng.integers(0, 256, (4, 512 // block * size), dtype=np.uint8)
        other = raw.copy()
        other[:, ::3] = rng.integers(0, 256, other[:, ::3].shape, dtype=np.uint8)
        a[t.name], b[t.name] = (t, raw), (t, other)
        a[t.name + "_vs_f32"], b[t.name + "_vs_f32"] = (t, raw), rng.standard_normal((4, 512)).astype(np.float32)
        a[t.name + "_same"], b[t.name + "_same"] = (t, raw), (t, raw)
    pa, pb = str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")
    write_gguf(pa, a)
    write_gguf(pb, b)
    with pieces_of(512):
        want, got = diff_all_ways(pa, pb)
    status = {t.name: t.status for t in got.tensors}
    assert status["Q4_0"] == "dtype_changed" and status["Q4_0_edit"] == "changed" and status["Q6_K_same"] == "identical"
    assert "diff_fallback" not in got.engine_info       # every one of these native


def test_pairs_left_to_numpy_say_so(tmp_path):
    """A block type only gguf-py dequantizes (TQ2_0) goes to the numpy pass; the report's engine says so."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    src = np.random.default_rng(5).standard_normal((2, 256)).astype(np.float32)
    tq = gguf.quants.quantize(src, Q.TQ2_0)
    pa, pb = str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")
    write_gguf(pa, {"t": (Q.TQ2_0, tq), "f": src})
    write_gguf(pb, {"t": (Q.Q8_0, gguf.quants.quantize(src, Q.Q8_0)), "f": src * 2})
    want, got = diff_all_ways(pa, pb)
    assert list(got.engine_info["diff_fallback"].values()) == [1]
    assert got.engine_info["diff"] == "cpu"


def test_truncated_file_is_an_os_error(tmp_path):
    x = np.arange(100000, dtype=np.float32)
    pa, pb = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    save_file({"x": x}, pa)
    save_file({"x": x + 1}, pb)
    from paramkit.backends import get_engine
    from paramkit.diff_match import DiffPair
    from paramkit.formats import open_table
    ta, tb = open_table(pa), open_table(pb)
    with open(pb, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(OSError, match="beyond the end of the file"):
        get_engine("cpu").run_diff([DiffPair(ta.tensors[0], tb.tensors[0])])
