"""Statistics of GGML block-quantized GGUF tensors: the numpy backend (gguf.quants.dequantize) against float64
numpy reductions computed here, every native backend against the numpy backend, on random blocks written by
gguf.GGUFWriter and on the real Gemma-3 270M file."""
from __future__ import annotations

import math

import gguf
import gguf.quants
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import paramkit
from paramkit.dtypes import DTYPES, GGML_DTYPE_BASE, GGML_NATIVE
from paramkit.ggml_types import GGML_TYPES

from conftest import NATIVE_BACKENDS, compare_stats, cpu_engine_built

NATIVE_TYPES = [t for t in GGML_NATIVE]
# block types only gguf-py dequantizes: statistics from the numpy backend alone
NUMPY_ONLY = ["IQ2_XXS", "IQ3_S", "TQ1_0"]
# the byte offset of each type's (first) f16 scale inside a block, for blocks with a special scale
SCALE_AT = {"Q6_K": 208, "MXFP4": None}
SPECIAL_F16 = {"nan": 0x7E00, "inf": 0x7C00, "neginf": 0xFC00, "subnormal": 0x0001, "max": 0x7BFF, "zero": 0}


def _write(path, tensors) -> str:
    """A GGUF file of raw block tensors: (name, qtype name, uint8 array of shape (rows, blocks * bytes))."""
    w = gguf.GGUFWriter(str(path), "llama")
    for name, qtype, raw in tensors:
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def _random_blocks(qtype: str, rows: int, blocks: int, rng, special: str | None) -> np.ndarray:
    size = GGML_TYPES_BY_NAME[qtype].type_size
    raw = rng.integers(0, 256, size=(rows, blocks, size), dtype=np.uint8)
    at = SCALE_AT.get(qtype, 0)
    if special is not None and at is not None:
        raw[..., at:at + 2] = np.frombuffer(np.uint16(SPECIAL_F16[special]).tobytes(), np.uint8)
    return raw.reshape(rows, blocks * size)


GGML_TYPES_BY_NAME = {g.name: g for g in GGML_TYPES.values()}


def _numel(raw: np.ndarray, qtype: str) -> int:
    g = GGML_TYPES_BY_NAME[qtype]
    return raw.size // g.type_size * g.block


def _reference(raw: np.ndarray, qtype: str) -> dict:
    """float64 numpy statistics of gguf-py's dequantized values."""
    size = GGML_TYPES_BY_NAME[qtype].type_size
    v = gguf.quants.dequantize(raw.reshape(-1, size), gguf.GGMLQuantizationType[qtype]).astype(np.float64).ravel()
    notnan = v[~np.isnan(v)]
    fin = v[np.isfinite(v)]
    return {
        "min": float(notnan.min()) if notnan.size else None,
        "max": float(notnan.max()) if notnan.size else None,
        "absmax": float(np.abs(notnan).max()) if notnan.size else None,
        "mean": float(fin.mean()) if fin.size else None,
        "std": float(fin.std()) if fin.size else None,
        "l2": float(np.sqrt(np.square(fin).sum())),
        "zeros": int(np.count_nonzero(v == 0)), "nan": int(np.isnan(v).sum()),
        "posinf": int(np.count_nonzero(v == np.inf)), "neginf": int(np.count_nonzero(v == -np.inf)),
    }


def _check_reference(got: dict, ref: dict) -> None:
    for k in ("min", "max", "absmax", "zeros", "nan", "posinf", "neginf"):
        assert got[k] == ref[k], (k, got[k], ref[k])
    for k in ("mean", "std", "l2"):
        if ref[k] is None or math.isinf(ref[k]):
            assert got[k] == ref[k], (k, got[k], ref[k])
        else:
            assert math.isclose(got[k], ref[k], rel_tol=1e-9, abs_tol=1e-300), (k, got[k], ref[k])


def _compare_cancelling(got: dict, ref: dict, numel: int) -> None:
    """compare_stats, except that a mean which cancels to far below the values' size (MXFP4's random E8M0
    scales span 2^-127..2^127) is checked to 1e-9 of the root mean square: the summation order decides it."""
    finite = numel - ref["nan"] - ref["posinf"] - ref["neginf"]
    if ref["mean"] is not None and got["mean"] is not None and ref["l2"] > 0:
        rms = ref["l2"] / math.sqrt(finite)
        if abs(ref["mean"]) < 1e-6 * rms:
            assert abs(got["mean"] - ref["mean"]) <= 1e-9 * rms, (got["mean"], ref["mean"], rms)
            got = dict(got, mean=ref["mean"])
    compare_stats(got, got, ref)


def _stats(path, backend, threads=None, quant=None):
    rep = paramkit.scan(path, backend=backend, threads=threads, **({"quant": quant} if quant else {}))
    return {t.name: t.stats for t in rep.tensors}, rep


def test_native_block_types_are_the_engines():
    """dtypes.py gives an engine id exactly to the GGML types ggml_blocks.hpp dequantizes."""
    if not cpu_engine_built():
        pytest.skip("paramkit._core is not built")
    from paramkit import _core
    native = set()
    for g in GGML_TYPES.values():
        try:
            _core.ggml_dequantize(np.zeros(g.type_size, np.uint8), g.id)
            native.add(g.name)
        except ValueError:
            pass
    assert native == set(GGML_NATIVE)
    for g in GGML_TYPES.values():
        if g.block > 1:
            assert DTYPES[g.name].engine_id == (GGML_DTYPE_BASE + g.id if g.name in native else -1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(qtype=st.sampled_from(NATIVE_TYPES + NUMPY_ONLY), rows=st.integers(1, 3), blocks=st.integers(1, 9),
       seed=st.integers(0, 2**32 - 1), special=st.sampled_from([None, *SPECIAL_F16]))
def test_random_blocks_every_backend_agrees(tmp_path_factory, qtype, rows, blocks, seed, special):
    rng = np.random.default_rng(seed)
    raw = _random_blocks(qtype, rows, blocks, rng, special)
    one = _random_blocks(qtype, 1, 1, rng, None)
    path = _write(tmp_path_factory.mktemp("g") / "r.gguf", [("w", qtype, raw), ("one", qtype, one)])
    ref, _ = _stats(path, "numpy")
    _check_reference(ref["w"], _reference(raw, qtype))
    _check_reference(ref["one"], _reference(one, qtype))
    for b in NATIVE_BACKENDS:
        got, rep = _stats(path, b)
        for name in ("w", "one"):
            if qtype in NUMPY_ONLY:   # the native engine hands these to the numpy backend: its very values
                assert got[name] == ref[name]
            else:
                _compare_cancelling(got[name], ref[name], _numel(raw if name == "w" else one, qtype))
        assert rep.engine_info["block_types"][qtype]["values"] == ("numpy" if qtype in NUMPY_ONLY else b)


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
@pytest.mark.parametrize("qtype", NATIVE_TYPES)
def test_many_pieces_thread_count_independent(tmp_path, backend, qtype):
    """A tensor of several pieces (over 4 MiB of dequantized values): threads=1 and 2 bit-identical, = numpy."""
    rng = np.random.default_rng(7)
    g = GGML_TYPES_BY_NAME[qtype]
    blocks = (3 << 20) // g.block + 3          # about 3M elements: several engine pieces, an odd block count
    raw = _random_blocks(qtype, 1, blocks, rng, None)
    path = _write(tmp_path / "big.gguf", [("big", qtype, raw)])
    one, _ = _stats(path, backend, threads=1)
    two, _ = _stats(path, backend, threads=2)
    assert one == two
    ref, _ = _stats(path, "numpy")
    compare_stats(one["big"], one["big"], ref["big"])


@pytest.mark.skipif(not cpu_engine_built(), reason="paramkit._core is not built")
@pytest.mark.parametrize("qtype", NATIVE_TYPES)
def test_block_statistics_paths_give_the_f32_bits(tmp_path, qtype):
    """The cpu engine's two block paths, dequantized 1,024 values at a time inside the statistics pass (no
    quantization schemes) and as a whole piece (with them), give bit for bit the statistics of an F32 tensor of
    gguf-py's dequantized values (under the same scheme, if any): several pieces, a short last one, special
    scales in some blocks."""
    rng = np.random.default_rng(11)
    g = GGML_TYPES_BY_NAME[qtype]
    blocks = (2 << 20) // g.block + 5
    raw = _random_blocks(qtype, 1, blocks, rng, None)
    at = SCALE_AT.get(qtype, 0)
    if at is not None:
        rows = raw.reshape(blocks, g.type_size)
        for k, special in enumerate(("nan", "inf", "subnormal", "max")):
            rows[1000 * k + 7, at:at + 2] = np.frombuffer(np.uint16(SPECIAL_F16[special]).tobytes(), np.uint8)
    blk = _write(tmp_path / "b.gguf", [("w", qtype, raw)])
    f32 = _write_f32(tmp_path / "f.gguf", [("w", _dequantized(raw, qtype))])
    for quant in (None, "int8_channel"):    # (a scheme's rows can move the piece boundaries: both files alike)
        want = paramkit.scan(f32, backend="cpu", quant=quant).tensors[0].stats
        assert paramkit.scan(blk, backend="cpu", quant=quant).tensors[0].stats == want, quant


def test_gemma_block_tensors_against_gguf_py(gemma_gguf_path):
    """A few tensors of each block type of the real file: the numpy backend = float64 reductions here, and
    every native backend's full scan = the numpy backend's."""
    reader = gguf.GGUFReader(gemma_gguf_path)
    by_type: dict[str, list] = {}
    for t in reader.tensors:
        by_type.setdefault(t.tensor_type.name, []).append(t)
    assert {"Q8_0", "Q5_0", "Q4_K", "Q6_K"} <= set(by_type)
    ref, _ = _stats(gemma_gguf_path, "numpy")
    for qtype, ts in by_type.items():
        if qtype in ("F32", "F16"):
            continue
        for t in ts[:2]:
            _check_reference(ref[t.name], _reference(np.asarray(t.data).view(np.uint8), qtype))
    for b in NATIVE_BACKENDS:
        got, _ = _stats(gemma_gguf_path, b)
        assert got.keys() == ref.keys()
        for name in ref:
            compare_stats(got[name], got[name], ref[name])


def test_numpy_backend_without_gguf_counts_block_tensors(tmp_path, monkeypatch):
    """Without the gguf package the numpy backend still scans: block tensors counted, no statistics."""
    from paramkit.backends import numpy_backend
    raw = _random_blocks("Q8_0", 2, 3, np.random.default_rng(1), None)
    path = _write(tmp_path / "q.gguf", [("w", "Q8_0", raw)])
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)
    monkeypatch.setitem(__import__("sys").modules, "gguf.quants", None)
    numpy_backend.ggml_dequantizer.cache_clear()
    try:
        got, rep = _stats(path, "numpy")
    finally:
        numpy_backend.ggml_dequantizer.cache_clear()
    assert got == {"w": None}
    assert "gguf package is not installed" in rep.engine_info["block_types"]["Q8_0"]["why"]
    assert rep.tensors[0].numel == 2 * 3 * 32


def _write_f32(path, tensors) -> str:
    """A GGUF file of float32 tensors: (name, array)."""
    w = gguf.GGUFWriter(str(path), "llama")
    for name, x in tensors:
        w.add_tensor(name, np.ascontiguousarray(x, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def _dequantized(raw: np.ndarray, qtype: str) -> np.ndarray:
    """gguf-py's float32 values of the block rows `raw`, shape (rows, elements per row)."""
    size = GGML_TYPES_BY_NAME[qtype].type_size
    v = gguf.quants.dequantize(raw.reshape(-1, size), gguf.GGMLQuantizationType[qtype])
    return np.asarray(v, dtype=np.float32).reshape(raw.shape[0], -1)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(qtype=st.sampled_from(NATIVE_TYPES + NUMPY_ONLY), rows=st.integers(1, 3), blocks=st.integers(1, 5),
       seed=st.integers(0, 2**32 - 1))
def test_simulated_quant_of_block_tensors_is_that_of_their_dequantized_values(tmp_path_factory, qtype, rows,
                                                                               blocks, seed):
    """scan(quant="default") of a block tensor on each backend gives, bit for bit, the records of that backend
    (of the numpy backend for NUMPY_ONLY types) for an F32 tensor of the same shape holding gguf-py's dequantized values (the nine default schemes: group,
    channel and per-tensor-scale ones, the last in the second pass); the report says what was quantized."""
    rng = np.random.default_rng(seed)
    raw = _random_blocks(qtype, rows, blocks, rng, None)
    d = tmp_path_factory.mktemp("q")
    blk = _write(d / "b.gguf", [("w", qtype, raw)])
    f32 = _write_f32(d / "f.gguf", [("w", _dequantized(raw, qtype))])
    for b in ["numpy", *NATIVE_BACKENDS]:
        # the numpy backend computes the types with no native dequantizer, under every backend
        want = paramkit.scan(f32, backend="numpy" if qtype in NUMPY_ONLY else b, quant="default").tensors[0]
        rep = paramkit.scan(blk, backend=b, quant="default")
        got = rep.tensors[0]
        assert got.shape == want.shape
        assert got.quant is not None and got.quant.keys() == want.quant.keys()
        assert got.quant == want.quant, b
        assert got.stats == want.stats, b
        q = rep.to_dict()["quant"]
        g = GGML_TYPES_BY_NAME[qtype]
        assert q["block_tensors"]["stored"] == {qtype: {"tensors": 1, "elements": raw.size // g.type_size * g.block,
                                                         "bits_per_weight": g.type_size * 8 / g.block}}
        assert "dequantized" in q["block_tensors"]["note"]


@pytest.mark.parametrize("backend", ["numpy", *NATIVE_BACKENDS])
def test_block_tensors_with_no_dequantizer_are_counted_with_the_reason(tmp_path, backend):
    """Q8_K (llama.cpp's activation type: no dequantizer in paramkit or gguf-py) beside a Q8_0 tensor: counted,
    no statistics, not quantized, and engine.block_types says why; the scan does not fail."""
    k = np.random.default_rng(3).integers(0, 256, size=(2, 292), dtype=np.uint8)
    q = _random_blocks("Q8_0", 2, 8, np.random.default_rng(4), None)
    path = _write(tmp_path / "k.gguf", [("k", "Q8_K", k), ("q", "Q8_0", q)])
    rep = paramkit.scan(path, backend=backend, quant="int8_channel")
    by = {t.name: t for t in rep.tensors}
    assert by["k"].numel == 2 * 256 and by["k"].stats is None and by["k"].quant is None
    assert by["q"].stats is not None and by["q"].quant is not None
    kinds = rep.to_dict()["engine"]["block_types"]
    assert kinds["Q8_K"]["values"] is None and "neither paramkit nor gguf-py" in kinds["Q8_K"]["why"]
    assert kinds["Q8_0"]["values"] == backend


@pytest.mark.parametrize("backend", ["numpy", *NATIVE_BACKENDS])
def test_empty_block_tensor(tmp_path, backend):
    """A block tensor with no elements has the statistics of an empty F32 tensor and does not disturb the
    tensors around it."""
    q = _random_blocks("Q4_K", 1, 2, np.random.default_rng(5), None)
    path = _write(tmp_path / "e.gguf", [("a", "Q4_K", q), ("e", "Q4_K", np.zeros((0, 144), np.uint8)),
                                        ("b", "Q4_K", q)])
    empty = _write_f32(tmp_path / "f.gguf", [("e", np.zeros((0, 256), np.float32))])
    rep = paramkit.scan(path, backend=backend)
    by = {t.name: t for t in rep.tensors}
    assert by["e"].numel == 0 and by["e"].shape == (0, 256)
    assert by["e"].stats == paramkit.scan(empty, backend=backend).tensors[0].stats
    assert by["e"].stats["nan"] == 0 and by["e"].stats["min"] is None
    assert by["a"].stats == by["b"].stats and by["a"].stats["min"] is not None


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
def test_simulated_quant_of_big_block_tensors_across_batches(tmp_path, monkeypatch, backend, qtype):
    """A block tensor of about 1.5M values under the default schemes, with a 1 MiB GPU ring (many batches,
    every piece cut on whole blocks and whole groups, the per-tensor-scale schemes in the hold arena or the
    re-read): records and statistics bit-identical to the same backend's of the dequantized F32 tensor."""
    monkeypatch.setenv("PARAMKIT_CUDA_RING_MB", "1")
    g = GGML_TYPES_BY_NAME[qtype]
    raw = _random_blocks(qtype, 97, 16384 // g.block, np.random.default_rng(11), None)   # rows of 64 KiB as F32
    blk = _write(tmp_path / "b.gguf", [("w", qtype, raw)])
    f32 = _write_f32(tmp_path / "f.gguf", [("w", _dequantized(raw, qtype))])
    want = paramkit.scan(f32, backend=backend, quant="default").tensors[0]
    got = paramkit.scan(blk, backend=backend, quant="default").tensors[0]
    assert got.numel == want.numel > 1_500_000
    assert got.quant == want.quant and got.stats == want.stats


@pytest.mark.skipif("cuda-emu" not in NATIVE_BACKENDS, reason="needs paramkit._cuda_emu (PARAMKIT_CUDA_EMU=ON)")
def test_block_rows_longer_than_the_gpu_ring_go_to_the_cpu_engine(tmp_path, monkeypatch):
    """A Q8_0 row of 2^18 + 32 values is over 1 MiB as float32: under int8_channel it does not fit a 1 MiB ring slot, so
    the cuda engine hands the pass to the cpu engine and says so (as for an F32 row), never a ValueError."""
    monkeypatch.setenv("PARAMKIT_CUDA_RING_MB", "1")
    raw = _random_blocks("Q8_0", 2, (1 << 18) // 32 + 1, np.random.default_rng(12), None)
    path = _write(tmp_path / "r.gguf", [("w", "Q8_0", raw)])
    rep = paramkit.scan(path, backend="cuda-emu", quant="int8_channel")
    assert "ring slot" in rep.engine_info["fallback"]
    assert rep.tensors[0].quant == paramkit.scan(path, backend="cpu", quant="int8_channel").tensors[0].quant


def test_export_refuses_block_tensors_and_writes_nothing(tmp_path):
    """fake_quantize_file writes safetensors, which has no dtype for GGML blocks: a ValueError naming the
    types, before anything is written (not a .safetensors file with Q8_0 "dtypes" in its header)."""
    q = _random_blocks("Q8_0", 2, 4, np.random.default_rng(6), None)
    path = _write(tmp_path / "q.gguf", [("w", "Q8_0", q)])
    out = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match=r"GGML block-quantized tensors \(Q8_0\)"):
        paramkit.fake_quantize_file(path, "int8_channel", out)
    assert not out.exists()
