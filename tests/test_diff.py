"""paramkit.diff on safetensors pairs written by the safetensors library: statuses, and every metric and the
statistics of A - B against a float64 NumPy computation written here from the definitions (README "diff")."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import paramkit
from paramkit.backends import numpy_diff

from conftest import available_backends
from stats_reference import compare_stats, reference_stats

FLOATS = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
INTS = {"I8": np.int8, "U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64}
SHAPES = [(), (0,), (1,), (7,), (3, 5, 11), (257, 3), (0, 4)]


@pytest.fixture(params=["small", "default"])
def chunk(request, monkeypatch):
    """The diff pass with tiny chunks (every odd size spans many, equal prefixes are re-read) and as shipped."""
    if request.param == "small":
        monkeypatch.setattr(numpy_diff, "CHUNK_ELEMENTS", 64)
    return request.param


def save(path, tensors: dict) -> str:
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return str(path)


def f64(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(x).astype(np.float64).reshape(-1)


def expected(a: np.ndarray, b: np.ndarray) -> dict:
    """The README's definitions, in float64 over the flattened values."""
    x, y = f64(a), f64(b)
    with np.errstate(invalid="ignore", over="ignore"):
        d = x - y
    both = np.isfinite(x) & np.isfinite(y)
    xs, ys, ds = x[both], y[both], d[both]
    same = (x == y) | (np.isnan(x) & np.isnan(y))
    sse, sa, sb, sab = float((ds * ds).sum()), float((xs * xs).sum()), float((ys * ys).sum()), float((xs * ys).sum())
    n = int(both.sum())
    if n == 0:
        rel = sqnr = cos = None
    elif sse == 0:
        rel, sqnr = 0.0, math.inf
    elif sa == 0:
        rel, sqnr = math.inf, -math.inf
    else:
        rel, sqnr = math.sqrt(sse / sa), 10 * math.log10(sa / sse)
    if n:
        cos = 1.0 if sa == 0 and sb == 0 else (None if sa == 0 or sb == 0 else sab / math.sqrt(sa * sb))
    return {"max_abs_diff": float(np.abs(ds).max()) if n else None,
            "mean_abs_diff": float(np.abs(ds).mean()) if n else None,
            "rel_l2": rel, "sqnr_db": sqnr, "cosine": cos,
            "frac_changed": float((~same).sum() / x.size) if x.size else None,
            "elements_changed": int((~same).sum()), "elements_compared": n,
            "nonfinite_changed": int((~same & ~both).sum()),
            "delta": {k: v for k, v in reference_stats(d, "F64", quantiles=False).items() if k != "quantiles"}}


def close(got, want, rel=1e-9) -> bool:
    if got is None or want is None:
        return got is None and want is None
    if math.isinf(want) or math.isnan(want):
        return got == want or (math.isnan(got) and math.isnan(want))
    return abs(got - want) <= rel * abs(want) + 1e-300


def check(td: dict, a: np.ndarray, b: np.ndarray) -> None:
    want = expected(a, b)
    for k in ("max_abs_diff", "elements_changed", "elements_compared", "nonfinite_changed", "frac_changed"):
        assert td[k] == want[k], (td["name"], k, td[k], want[k])
    for k in ("mean_abs_diff", "rel_l2", "sqnr_db", "cosine"):
        assert close(td[k], want[k]), (td["name"], k, td[k], want[k])
    got_delta = dict(td["delta"], quantiles=None)
    assert compare_stats(got_delta, dict(want["delta"], quantiles=None), rel=1e-9) == [], td["name"]


def random_values(rng, dtype, shape, special: bool) -> np.ndarray:
    x = rng.standard_normal(shape) * (4.0 if dtype.startswith("F8") else 1.0)
    if special and x.size >= 4:
        flat = x.reshape(-1)
        flat[rng.integers(0, x.size, 3)] = 0.0
        if dtype != "F8_E4M3":   # E4M3FN has no Inf
            flat[rng.integers(0, x.size)] = np.inf
        flat[rng.integers(0, x.size)] = np.nan
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(FLOATS[dtype])


def perturbed(rng, x: np.ndarray, dtype: str) -> np.ndarray:
    y = f64(x).reshape(x.shape).copy()
    flat = y.reshape(-1)
    if flat.size:
        pick = rng.random(flat.size) < 0.6
        flat[pick] += rng.standard_normal(int(pick.sum())) * 0.1
        if flat.size >= 5:
            flat[0] = np.nan                       # NaN against a number (or NaN)
            flat[1] = -flat[1] if np.isfinite(flat[1]) else 1.0
    with np.errstate(invalid="ignore", over="ignore"):
        return y.astype(FLOATS[dtype])


@pytest.mark.parametrize("dtype", list(FLOATS))
def test_changed_metrics_every_float_dtype(tmp_path, dtype, chunk):
    rng = np.random.default_rng(abs(hash(dtype)) % 2**32)
    a, b = {}, {}
    for k, shape in enumerate(SHAPES + [(70, 33)]):
        x = random_values(rng, dtype, shape, special=k % 2 == 1)
        a[f"t{k}"], b[f"t{k}"] = x, perturbed(rng, x, dtype)
    d = paramkit.diff(save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b)).to_dict()
    rows = {t["name"]: t for t in d["tensors"]}
    assert set(rows) == set(a)
    for name, t in rows.items():
        same_bytes = a[name].tobytes() == b[name].tobytes()
        assert t["status"] == ("identical" if same_bytes else "changed"), name
        if same_bytes:
            assert t["delta"] is None and all(t[k] is None for k in paramkit.model_diff.METRIC_KEYS)
        else:
            check(t, a[name], b[name])


def test_equal_prefix_then_a_difference(tmp_path, chunk):
    """The first chunks equal byte for byte, a change only in the last: the sums cover the whole tensor."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(5000).astype(np.float32)
    y = x.copy()
    y[-1] += 1.0
    z = x.copy()
    z[-3:] *= 2
    d = paramkit.diff(save(tmp_path / "a.safetensors", {"x": x, "z": x}),
                      save(tmp_path / "b.safetensors", {"x": y, "z": z}))
    for t in d.to_dict()["tensors"]:
        assert t["status"] == "changed"
        check(t, x, y if t["name"] == "x" else z)
        assert t["elements_compared"] == 5000


def test_chunked_and_whole_agree_beyond_one_chunk(tmp_path):
    """A tensor of more than CHUNK_ELEMENTS elements (several chunks as shipped)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(numpy_diff.CHUNK_ELEMENTS * 2 + 17).astype(np.float32)
    y = (x + rng.standard_normal(x.size).astype(np.float32) * 1e-3).astype(np.float32)
    d = paramkit.diff(save(tmp_path / "a.safetensors", {"x": x}), save(tmp_path / "b.safetensors", {"x": y}))
    check(d.to_dict()["tensors"][0], x, y)


@pytest.mark.parametrize("dtype", list(INTS))
def test_integer_tensors(tmp_path, dtype):
    rng = np.random.default_rng(5)
    info = np.iinfo(INTS[dtype])
    x = rng.integers(max(info.min, -1000), min(info.max, 1000), size=(31, 3)).astype(INTS[dtype])
    y = x.copy()
    y[0, 0] = y[0, 0] + 1 if y[0, 0] < 1000 else y[0, 0] - 1
    d = paramkit.diff(save(tmp_path / "a.safetensors", {"x": x}), save(tmp_path / "b.safetensors", {"x": y}))
    t = d.to_dict()["tensors"][0]
    assert t["status"] == "changed" and t["elements_changed"] == 1
    check(t, x, y)


def test_nan_rules(tmp_path):
    """NaN = NaN and the same infinity count as equal (not changed), are left out of the sums and give a NaN in
    delta; NaN or Inf against anything else is changed, counted in nonfinite_changed, left out of the sums."""
    nan, inf = np.nan, np.inf
    x = np.array([nan, nan, inf, inf, -inf, 1.0, 2.0, 0.0, 3.0], np.float32)
    y = np.array([nan, 1.0, inf, -inf, 5.0, nan, 2.5, -0.0, 3.0], np.float32)
    d = paramkit.diff(save(tmp_path / "a.safetensors", {"x": x}), save(tmp_path / "b.safetensors", {"x": y}))
    t = d.to_dict()["tensors"][0]
    assert t["status"] == "changed"
    assert t["elements_compared"] == 3                      # 2.0/2.5, 0.0/-0.0, 3.0/3.0
    assert t["elements_changed"] == 5                       # nan/1, inf/-inf, -inf/5, 1/nan, 2/2.5
    assert t["nonfinite_changed"] == 4
    assert t["max_abs_diff"] == 0.5 and t["frac_changed"] == 5 / 9
    assert t["delta"]["nan"] == 4 and t["delta"]["posinf"] == 1 and t["delta"]["neginf"] == 1
    check(t, x, y)


def test_identical_dtype_changed_reshaped_added_removed(tmp_path):
    rng = np.random.default_rng(6)
    w = rng.standard_normal((6, 8)).astype(np.float32)
    a = {"same": w, "cast": w, "cast_lossy": w, "flat": w, "grown": w, "gone": w[0]}
    b = {"same": w.copy(), "cast": w.astype(np.float64), "cast_lossy": w.astype(np.float16), "flat": w.reshape(48),
         "grown": np.zeros((7, 8), np.float32), "new": np.ones(3, np.int64)}
    d = paramkit.diff(save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b))
    rows = {t["name"]: t for t in d.to_dict()["tensors"]}
    status = {n: t["status"] for n, t in rows.items()}
    assert status == {"same": "identical", "cast": "dtype_changed", "cast_lossy": "dtype_changed",
                      "flat": "reshaped", "grown": "reshaped", "gone": "removed", "new": "added"}
    assert rows["cast"]["dtype_b"] == "F64" and rows["cast"]["max_abs_diff"] == 0.0
    assert rows["cast"]["sqnr_db"] == math.inf and rows["cast"]["frac_changed"] == 0.0
    check(rows["cast_lossy"], w, w.astype(np.float16))
    assert rows["flat"]["shape_b"] == [48] and rows["flat"]["rel_l2"] == 0.0    # compared in row-major order
    assert rows["grown"]["rel_l2"] is None and "7 elements" not in rows["grown"]["note"]
    assert "48 elements against 56" in rows["grown"]["note"]
    agg = d.aggregates
    assert agg["counts"] == {"identical": 1, "changed": 0, "dtype_changed": 2, "reshaped": 2, "added": 1,
                             "removed": 1}
    assert not d.identical and agg["tensors_a"] == 6 and agg["tensors_b"] == 6
    assert agg["params_a"] == 48 * 5 + 8 and agg["params_b"] == 48 * 4 + 56 + 3
    assert agg["params_in_changed_tensors"] == 48 * 4
    assert [t["name"] for t in d.to_dict()["most_changed"]] == ["cast_lossy"]


def test_model_aggregates_merge_the_sums(tmp_path):
    rng = np.random.default_rng(7)
    a = {f"t{i}": rng.standard_normal(100 * (i + 1)).astype(np.float32) for i in range(12)}
    b = {k: (v + rng.standard_normal(v.size).astype(np.float32) * 0.01 * (i + 1)).astype(np.float32)
         for i, (k, v) in enumerate(a.items())}
    b["t0"] = a["t0"].copy()
    d = paramkit.diff(save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b))
    x = np.concatenate([f64(a[k]) for k in a if k != "t0"])
    y = np.concatenate([f64(b[k]) for k in a if k != "t0"])
    want = expected(x, y)
    agg = d.aggregates
    for k in ("rel_l2", "sqnr_db", "cosine", "mean_abs_diff"):
        assert close(agg[k], want[k]), k
    assert agg["max_abs_diff"] == want["max_abs_diff"] and agg["params_changed"] == want["elements_changed"]
    assert agg["tensors_compared"] == 11 and agg["counts"]["identical"] == 1
    top = d.to_dict()["most_changed"]
    assert len(top) == 10
    rels = {k: expected(a[k], b[k])["rel_l2"] for k in a if k != "t0"}
    assert [t["name"] for t in top] == sorted(rels, key=lambda k: -rels[k])[:10]


@pytest.mark.parametrize("backend", available_backends())
def test_diff_of_a_model_with_itself_is_identical(small_checkpoint, backend):
    d = paramkit.diff(small_checkpoint, small_checkpoint, backend=backend)
    assert d.identical and {t.status for t in d.tensors} == {"identical"}
    assert d.aggregates["counts"]["identical"] == len(d.tensors) == 8
    # the numpy backend's own pass; the native one of paramkit._core under cpu, cuda and cuda-emu (which delegate it)
    assert d.backend == ("numpy" if backend == "numpy" else "cpu")
    assert d.to_dict()["identical"] is True


def test_thread_count_does_not_change_the_results(tmp_path):
    rng = np.random.default_rng(8)
    a = {f"t{i}": rng.standard_normal(3000 + i).astype(np.float32) for i in range(9)}
    b = {k: (v * 1.01).astype(np.float32) for k, v in a.items()}
    pa, pb = save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b)
    runs = [paramkit.diff(pa, pb, threads=n).to_dict() for n in (1, 2, 5)]
    for r, n in zip(runs, (1, 2, 5)):
        r.pop("timing"), r.pop("options")
        engine = r.pop("engine")
        assert engine.get("threads", n) in (n, min(n, engine.get("pieces", n)))   # what the native pass used
    assert runs[0] == runs[1] == runs[2]


def test_minilm_against_itself(minilm_path):
    d = paramkit.diff(minilm_path, minilm_path)
    assert d.identical and len(d.tensors) == len(paramkit.scan(minilm_path, stats=False).tensors)


def test_tensors_selects(tmp_path):
    x = np.ones(4, np.float32)
    pa = save(tmp_path / "a.safetensors", {"k.a": x, "k.b": x, "other": x})
    pb = save(tmp_path / "b.safetensors", {"k.a": x * 2, "k.b": x, "other": x * 3})
    d = paramkit.diff(pa, pb, tensors=r"^k\.")
    assert [t.name for t in d.tensors] == ["k.a", "k.b"]
    d = paramkit.diff(pa, pb, tensors=lambda n: n == "other")
    assert [(t.name, t.status) for t in d.tensors] == [("other", "changed")]
    with pytest.raises(ValueError, match="matches none"):
        paramkit.diff(pa, pb, tensors="nothing")
    with pytest.raises(ValueError, match="regular expression"):
        paramkit.diff(pa, pb, tensors="(")


def test_progress_counts_both_sides(tmp_path):
    x = np.arange(1000, dtype=np.float32)
    pa = save(tmp_path / "a.safetensors", {"x": x})
    pb = save(tmp_path / "b.safetensors", {"x": x + 1})
    seen = []
    paramkit.diff(pa, pb, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (8000, 8000)


def test_json_is_strict(tmp_path):
    import json
    x = np.array([1.0, np.nan], np.float32)
    pa = save(tmp_path / "a.safetensors", {"x": x})
    pb = save(tmp_path / "b.safetensors", {"x": np.array([1.0, 2.0], np.float32)})
    d = paramkit.diff(pa, pb)
    back = json.loads(d.to_json())
    assert back["tensors"][0]["sqnr_db"] == "Infinity" and back["tensors"][0]["elements_changed"] == 1


def test_errors(tmp_path):
    good = save(tmp_path / "a.safetensors", {"x": np.ones(2, np.float32)})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(paramkit.FormatError):
        paramkit.diff(good, str(bad))
    with pytest.raises(OSError):
        paramkit.diff(good, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError):
        paramkit.diff(good, good, threads=0)


def _raw_safetensors(path, tensors: dict[str, tuple[str, list, bytes]]) -> str:
    """A safetensors file written byte by byte (for dtypes numpy cannot hold, such as F4)."""
    import json
    import struct
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)
    return str(path)


def test_dtype_without_values_compared_byte_for_byte(tmp_path):
    """F4 (two elements a byte, no decoder): identical when the bytes are, else changed with a note."""
    pa = _raw_safetensors(tmp_path / "a.safetensors", {"w": ("F4", [2, 8], bytes(range(8))),
                                                       "v": ("F4", [8], bytes(4))})
    pb = _raw_safetensors(tmp_path / "b.safetensors", {"w": ("F4", [2, 8], bytes(range(8))),
                                                       "v": ("F4", [8], b"\x00\x00\x00\x01")})
    d = paramkit.diff(pa, pb)
    rows = {t.name: t for t in d.tensors}
    assert rows["w"].status == "identical" and rows["v"].status == "changed"
    assert rows["v"].metrics is None and "no decoding for dtype F4" in rows["v"].note
    assert not d.identical and paramkit.diff(pa, pa).identical
