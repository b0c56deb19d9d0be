"""The compact per-tensor histogram of the statistics pass (paramkit.stats, TensorReport.histogram): every engine
(numpy, cpu, cuda-emu / cuda) gives the same one bit for bit, and it equals the definition computed here from the
values decoded and binned by tests/stats_reference.py (independent of the backends): every dtype, specials,
constant, empty and scalar tensors, many pieces, GGML block types; and how scan, to_dict and the CLI expose it."""
from __future__ import annotations

import json
import math
import tempfile

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stats_reference as R
import paramkit
from conftest import available_backends, cpu_engine_built, histogram_bits, tensor_infos
from paramkit import stats as S
from paramkit.backends import cpu_backend, get_engine, numpy_backend
from paramkit.cli import main
from test_gguf_stats import GGML_TYPES_BY_NAME, NATIVE_TYPES, NUMPY_ONLY, _random_blocks, _write
from test_stats_backends import HYP, UINT, pick, tensor_sets, write_safetensors

BACKENDS = available_backends()
BINS = 64            # the definition's bin count, written out (paramkit.stats.HISTOGRAM_BINS must agree)


def definition(values: np.ndarray, exact: bool) -> dict:
    """The compact histogram of `values` (the binned values as float64, NaN included: stats_reference.binned of
    the non-NaN ones), from the README's words: lo/hi the finite extremes, bin floor((v - lo) / (hi - lo) * 64)
    clamped, all in bin 0 when lo == hi; nonfinite the rest."""
    fin = values[np.isfinite(values)]
    counts = np.zeros(BINS, dtype=np.int64)
    if fin.size == 0:
        return {"lo": None, "hi": None, "counts": counts, "nonfinite": int(values.size), "exact": exact}
    lo, hi = float(fin.min()), float(fin.max())
    k = np.zeros(fin.size) if lo == hi else np.minimum(np.maximum(np.floor((fin - lo) / (hi - lo) * BINS), 0),
                                                         BINS - 1)
    counts += np.bincount(k.astype(np.int64), minlength=BINS)
    return {"lo": lo, "hi": hi, "counts": counts, "nonfinite": int(values.size - fin.size), "exact": exact}


def binned_values(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Every element's binned value as float64 (NaN for NaN elements), decoded by stats_reference."""
    x = R.raw_view(raw, dtype)
    if dtype in R.FLOAT_VIEW:
        with np.errstate(invalid="ignore"):
            v = x.astype(np.float64)
        out = np.full(v.size, np.nan)
        ok = ~np.isnan(v)
        out[ok] = np.asarray(R.binned(v[ok], dtype), dtype=np.float64)
        return out
    v = (x != 0).astype(np.int64) if dtype == "BOOL" else x
    return np.asarray(R.binned(v, dtype), dtype=np.float64)


def expected(raw: np.ndarray, dtype: str) -> dict:
    return definition(binned_values(raw, dtype), R.ITEMSIZE[dtype] <= 2)


def assert_definition(got: dict, want: dict, what="") -> None:
    """got (an engine's) equals the definition: lo/hi equal as numbers (the definition does not fix the sign of a
    zero extreme; the engines agree on it among themselves), the rest exactly."""
    assert (got["lo"], got["hi"], got["nonfinite"], got["exact"]) == \
        (want["lo"], want["hi"], want["nonfinite"], want["exact"]), (what, got, want)
    assert np.array_equal(got["counts"], want["counts"]), (what, got["counts"].tolist(), want["counts"].tolist())


def run_all(infos, **kw) -> dict[str, list]:
    """run_stats(histograms=True) of `infos` on every backend, each backend's histograms checked equal to the
    numpy oracle's bit for bit; {backend: stats list}."""
    got = {b: get_engine(b).run_stats(infos, quantiles=True, histograms=True, **kw) for b in BACKENDS}
    for b in BACKENDS:
        for t, s, ref in zip(infos, got[b], got["numpy"]):
            assert (s is None) == (ref is None)
            if s is not None:
                assert histogram_bits(s["histogram"]) == histogram_bits(ref["histogram"]), (b, t.name)
    return got


def test_bins_are_one_number_everywhere():
    assert S.HISTOGRAM_BINS == BINS
    assert S.HISTOGRAM_KEYS == ("lo", "hi", "counts", "nonfinite", "exact")
    if cpu_engine_built():
        from paramkit import _core
        assert _core.HIST_BINS == BINS


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed(backend, tmp_path):
    """Values worked out by hand: bins of an exact dtype, the bf16 truncation of wider ones, specials."""
    nan, inf = math.nan, math.inf
    arrays = {
        "f16": ("F16", np.array([0, 1, 2, 3], np.float16)),          # (v - 0) / 3 * 64 = 0, 21.3, 42.7, 64 -> 63
        "const": ("BF16", np.full(7, 0x3FC0, np.uint16)),             # 1.5 seven times: all in bin 0
        "special": ("F32", np.array([nan, inf, -inf], np.float32)),  # nothing finite
        "trunc": ("F32", np.array([1.00390625, 2.0], np.float32)),   # 1 + 2^-8 bins as 1.0 (bf16 truncation)
        "big": ("F64", np.array([1e300, 1.0, 2.0, nan])),           # 1e300 -> float32 inf: nonfinite
        "i32": ("I32", np.array([16777217, -1], np.int32)),          # 2^24 + 1 -> float32 2^24
        "bool": ("BOOL", np.array([0, 1, 1, 0, 1], np.uint8)),
        "scalar": ("I8", np.array([-5], np.int8)),
        "empty": ("F32", np.zeros(0, np.float32)),
    }
    path = str(tmp_path / "h.safetensors")
    write_safetensors(path, {k: (d, (a.size,) if k != "scalar" else (), a.view(UINT[a.itemsize]))
                             for k, (d, a) in arrays.items()})
    got = {t.name: s["histogram"] for t, s in
           zip(tensor_infos(path), get_engine(backend).run_stats(tensor_infos(path), histograms=True))}

    def h(lo, hi, bins: dict, nonfinite=0, exact=False):
        c = [0] * 64
        for k, v in bins.items():
            c[k] = v
        return {"lo": lo, "hi": hi, "counts": c, "nonfinite": nonfinite, "exact": exact}

    want = {"f16": h(0.0, 3.0, {0: 1, 21: 1, 42: 1, 63: 1}, exact=True),
            "const": h(1.5, 1.5, {0: 7}, exact=True),
            "special": h(None, None, {}, nonfinite=3),
            "trunc": h(1.0, 2.0, {0: 1, 63: 1}),
            "big": h(1.0, 2.0, {0: 1, 63: 1}, nonfinite=2),
            "i32": h(-1.0, 16777216.0, {0: 1, 63: 1}),
            "bool": h(0.0, 1.0, {0: 2, 63: 3}, exact=True),
            "scalar": h(-5.0, -5.0, {0: 1}, exact=True),
            "empty": h(None, None, {})}
    for name, w in want.items():
        g = got[name]
        assert {**g, "counts": g["counts"].tolist()} == w, name


@settings(max_examples=30, **HYP)
@given(files=st.lists(tensor_sets(), min_size=1, max_size=2), threads=st.sampled_from([None, 1, 2]))
def test_every_dtype_every_backend_equals_the_definition(files, threads):
    """Random bit patterns of every dtype with statistics (specials: NaN, ±Inf, ±0, subnormals; constant, empty
    and scalar tensors): all backends bit for bit, and the definition."""
    with tempfile.TemporaryDirectory() as tmp:
        infos, raws = [], {}
        for j, tensors in enumerate(files):
            path = f"{tmp}/s{j}.safetensors"
            write_safetensors(path, tensors)
            for t in tensor_infos(path):
                infos.append(t)
                raws[(path, t.name)] = tensors[t.name]
        got = run_all(infos, threads=threads)
        for t, s in zip(infos, got["numpy"]):
            dtype, _, raw = raws[(t.file, t.name)]
            h = s["histogram"]
            assert_definition(h, expected(raw, dtype), f"{dtype} {t.name}")
            assert int(h["counts"].sum()) + h["nonfinite"] == raw.size


def _wide_data(dtype: str, n: int, rng) -> np.ndarray:
    """n elements of `dtype` as raw bits: floats N(0, 3) (times 10^-3..10^3 for F32/F64) with NaN, ±Inf, ±0 and
    ±subnormals mixed in (not the format's extremes, which would squeeze the normal values into two bins);
    integers uniform over the whole range, with the special patterns of test_stats_backends."""
    if dtype in R.FLOAT_VIEW:
        x = rng.standard_normal(n) * 3
        if dtype in ("F32", "F64"):
            x *= 10.0 ** rng.integers(-3, 4, n)
        tiny = float(2.0 ** -133 if dtype == "BF16" else np.finfo(R.FLOAT_VIEW[dtype]).smallest_subnormal)
        x[rng.integers(0, n, 70)] = np.repeat([np.nan, np.inf, -np.inf, 0.0, -0.0, tiny, -tiny], 10)
        with np.errstate(invalid="ignore", over="ignore"):
            return x.astype(R.FLOAT_VIEW[dtype]).view(UINT[R.ITEMSIZE[dtype]]).copy()
    info = np.iinfo(R.INT_VIEW[dtype])
    raw = rng.integers(info.min, info.max, n, dtype=R.INT_VIEW[dtype], endpoint=True).view(
        UINT[R.ITEMSIZE[dtype]]).copy()
    raw[rng.integers(0, n, 40)] = pick(rng, dtype, 40)
    return raw


@pytest.mark.parametrize("dtype", ["F32", "F64", "BF16", "F16", "F8_E4M3", "I32", "U8", "I64"])
def test_many_pieces_equal_one_and_the_definition(dtype, tmp_path, monkeypatch):
    """A tensor of an odd size in many pieces (cpu: 64 KiB pieces; numpy: 65,537-element chunks; cuda: a 1 MiB
    ring), threads 1 and 2: the merged histograms equal the whole tensor's definition."""
    rng = np.random.default_rng(len(dtype))
    n = 400_009
    raw = _wide_data(dtype, n, rng)
    path = str(tmp_path / "big.safetensors")
    write_safetensors(path, {"big": (dtype, (n,), raw), "tail": (dtype, (3,), raw[:3])})
    monkeypatch.setattr(cpu_backend, "CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(numpy_backend, "CHUNK_ELEMENTS", 65_537)
    monkeypatch.setenv("PARAMKIT_CUDA_RING_MB", "1")
    infos = tensor_infos(path)
    one = run_all(infos, threads=1)
    two = run_all(infos, threads=2)
    for b in BACKENDS:
        assert [histogram_bits(s["histogram"]) for s in one[b]] == [histogram_bits(s["histogram"]) for s in two[b]]
    for t, s in zip(infos, one["numpy"]):
        assert_definition(s["histogram"], expected(raw if t.name == "big" else raw[:3], dtype), t.name)


def _block_values(raw: np.ndarray, qtype: str) -> np.ndarray:
    """gguf-py's dequantized float32 values of block tensor `raw`, binned as F32 (NaN kept as NaN)."""
    size = GGML_TYPES_BY_NAME[qtype].type_size
    v = gguf.quants.dequantize(raw.reshape(-1, size), gguf.GGMLQuantizationType[qtype]).astype(np.float32).ravel()
    return binned_values(v.view(np.uint32), "F32")


@settings(max_examples=12, **HYP)
@given(qtype=st.sampled_from(NATIVE_TYPES + NUMPY_ONLY), blocks=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_ggml_block_types(qtype, blocks, seed):
    """Random GGML blocks (native and gguf-py-only types): every backend bit for bit, and the definition over the
    dequantized float32 values (not exact: bf16 resolution)."""
    rng = np.random.default_rng(seed)
    raw = _random_blocks(qtype, 2, blocks, rng, None)
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(f"{tmp}/b.gguf", [("w", qtype, raw)])
        r = {b: paramkit.scan(path, backend=b).tensor("w").histogram for b in BACKENDS}
    for b in BACKENDS:
        assert histogram_bits(r[b]) == histogram_bits(r["numpy"]), b
    assert_definition(r["numpy"], definition(_block_values(raw, qtype), False), qtype)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
def test_ggml_block_tensor_in_many_pieces(qtype, tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_backend, "CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(numpy_backend, "CHUNK_ELEMENTS", 1 << 16)
    monkeypatch.setenv("PARAMKIT_CUDA_RING_MB", "1")
    rng = np.random.default_rng(3)
    raw = _random_blocks(qtype, 1, (1 << 19) // GGML_TYPES_BY_NAME[qtype].block + 1, rng, None)
    path = _write(tmp_path / "big.gguf", [("w", qtype, raw)])
    r = {b: paramkit.scan(path, backend=b, threads=2).tensor("w").histogram for b in BACKENDS}
    for b in BACKENDS:
        assert histogram_bits(r[b]) == histogram_bits(r["numpy"]), b
    assert_definition(r["numpy"], definition(_block_values(raw, qtype), False), qtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_with_quantiles_and_only_when_asked(backend, small_checkpoint):
    infos = tensor_infos(small_checkpoint)
    eng = get_engine(backend)
    assert all(s is None or "histogram" not in s for s in eng.run_stats(infos))     # the default: stats only
    off = eng.run_stats(infos, quantiles=False, histograms=True)
    assert all(s is None or s["histogram"] is None for s in off)
    stats, _ = eng.run(infos, histograms=True)
    assert all(s is None or tuple(s) == S.STATS_KEYS + ("histogram",) for s in stats)


def test_scan_report_json_and_cli(small_checkpoint, capsys):
    r = paramkit.scan(small_checkpoint)
    t = r.tensor("model.embed_tokens.weight")
    assert tuple(t.histogram) == S.HISTOGRAM_KEYS and t.histogram["exact"] is True
    assert int(t.histogram["counts"].sum()) == t.numel and "histogram" not in t.stats
    assert t == paramkit.scan(small_checkpoint).tensor(t.name)     # == of reports leaves the arrays out
    mask = r.tensor("mask").histogram                   # [True, False, True]: 0 in bin 0, 1 in the last
    assert (mask["lo"], mask["hi"], mask["counts"][0], mask["counts"][63]) == (0.0, 1.0, 1, 2)
    plain = r.to_dict()
    assert all("histogram" not in x for x in plain["tensors"])
    full = json.loads(r.to_json(histograms=True))
    by = {x["name"]: x for x in full["tensors"]}
    assert by["model.embed_tokens.weight"]["histogram"]["counts"] == t.histogram["counts"].tolist()
    assert by["model.empty"]["histogram"]["lo"] is None
    assert all(x["histogram"] is None for x in paramkit.scan(small_checkpoint, quantiles=False).to_dict(
        histograms=True)["tensors"])
    assert all(x.histogram is None for x in paramkit.scan(small_checkpoint, stats=False).tensors)

    assert main(["scan", small_checkpoint, "--json", "--histograms"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {x["name"]: x["histogram"] for x in out["tensors"]} == {k: v["histogram"] for k, v in by.items()}
    assert main(["scan", small_checkpoint, "--json"]) == 0
    assert all("histogram" not in x for x in json.loads(capsys.readouterr().out)["tensors"])
    assert main(["scan", small_checkpoint, "--histograms"]) == 1
    assert "--histograms adds the histograms to the JSON report" in capsys.readouterr().err
    assert main(["scan", small_checkpoint, "--json", "--histograms", "--no-quantiles"]) == 1
    assert "needs the statistics with quantiles" in capsys.readouterr().err
