"""Quantization simulation inside scan(): the fused native pass (and its second pass for
per-tensor-scale schemes) against the NumPy reference, the policy, the summary and the schema."""
from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

import paramkit
from paramkit.quant import DEFAULT_SCHEMES

from conftest import NATIVE_BACKENDS, available_backends, cpu_engine_built

COUNTS = ("n", "nonfinite", "clipped", "scale_clamped")


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
def test_native_quant_pass_matches_numpy_reference(quant_checkpoint, backend, monkeypatch):
    from paramkit.backends import cpu_backend
    monkeypatch.setattr(cpu_backend, "CHUNK_BYTES", 1 << 16)   # force many pieces per tensor
    ref = paramkit.scan(quant_checkpoint, backend="numpy", quant="default")
    for threads in (1, 3):
        got = paramkit.scan(quant_checkpoint, backend=backend, quant="default", threads=threads)
        for a, b in zip(got.tensors, ref.tensors):
            assert (a.quant is None) == (b.quant is None), a.name
            if a.quant is None:
                continue
            assert a.quant.keys() == b.quant.keys()
            for sid, ra in a.quant.items():
                rb = b.quant[sid]
                if "not_applicable" in rb:
                    assert ra == rb
                    continue
                for k in COUNTS + ("quantized_nbytes",):
                    assert ra[k] == rb[k], (a.name, sid, k)
                assert ra["max_abs_err"] == rb["max_abs_err"] or (math.isnan(ra["max_abs_err"]) and math.isnan(rb["max_abs_err"])), (a.name, sid)
                for k in ("sse", "sum_w2", "sum_q2", "sum_wq"):
                    both_nan = math.isnan(ra[k]) and math.isnan(rb[k])
                    assert both_nan or math.isclose(ra[k], rb[k], rel_tol=1e-9, abs_tol=1e-300), (a.name, sid, k)


def test_policy_summary_and_schema(quant_checkpoint):
    r = paramkit.scan(quant_checkpoint, quant="default")
    quantized = {t.name for t in r.tensors if t.quant}
    assert quantized == {"emb.weight", "odd.weight", "conv.weight", "big.weight", "special.weight"}
    odd = r.tensor("odd.weight").quant
    assert "not_applicable" in odd["q8_0"] and "not_applicable" in odd["q4_0"]
    assert odd["int4_g128"]["n"] == 1700
    rows = {row["scheme"]: row for row in r.quant_summary()}
    assert list(rows) == list(DEFAULT_SCHEMES)
    for row in rows.values():
        assert row["worst"] and len(row["worst"]) <= 10
        assert row["quantized_bytes"] < row["original_bytes"] or row["scheme"] in ("int8_tensor", "fp8_e4m3", "int8_channel")
    sp = r.tensor("special.weight").quant["int8_g128"]
    assert sp["nonfinite"] == 128 and sp["n"] == 128
    d = r.to_dict()
    assert d["quant"]["schemes"] == list(DEFAULT_SCHEMES) and "policy" in d["quant"]
    json.loads(r.to_json())
    # policy override: a regex, and a callable
    r2 = paramkit.scan(quant_checkpoint, quant="q8_0", quant_tensors=r"^emb\.")
    assert {t.name for t in r2.tensors if t.quant} == {"emb.weight"}
    r3 = paramkit.scan(quant_checkpoint, quant=["nf4"], quant_tensors=lambda n, dt, shape, role: n == "norm.weight")
    assert {t.name for t in r3.tensors if t.quant} == {"norm.weight"}


def test_bad_quant_tensors_regex_is_a_value_error(quant_checkpoint, tmp_path):
    """Issue 12: a malformed quant_tensors regex raised re.error from deep inside make_plan."""
    with pytest.raises(ValueError, match=r"quant_tensors: '\(' is not a valid regular expression"):
        paramkit.scan(quant_checkpoint, quant="q8_0", quant_tensors="(")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        paramkit.fake_quantize_file(quant_checkpoint, "q8_0", tmp_path / "x.safetensors", quant_tensors="[")
    assert not (tmp_path / "x.safetensors").exists()


def test_scan_quant_matches_whole_tensor_reference(quant_checkpoint):
    """The streamed per-tensor sums equal quant_error of the whole decoded tensor."""
    from safetensors.torch import load_file
    import torch
    ref = load_file(quant_checkpoint)
    r = paramkit.scan(quant_checkpoint, quant="int8_channel,nf4,fp8_e4m3")
    for name in ("emb.weight", "conv.weight", "big.weight"):
        x = ref[name].to(torch.float32).numpy()
        for sid in ("int8_channel", "nf4", "fp8_e4m3"):
            want = paramkit.quant_error(x, sid, backend="numpy")
            got = r.tensor(name).quant[sid]
            assert got["clipped"] == want["clipped"] and got["n"] == want["n"]
            assert math.isclose(got["sse"], want["sse"], rel_tol=1e-9), (name, sid)


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
def test_array_api_native_equals_numpy(backend):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((33, 256)) * 0.02).astype(np.float32)
    x[3, 5] = np.nan
    for sid in DEFAULT_SCHEMES:
        a = paramkit.fake_quantize(x, sid, backend=backend)
        b = paramkit.fake_quantize(x, sid, backend="numpy")
        assert np.array_equal(a.view(np.uint32)[~np.isnan(a)], b.view(np.uint32)[~np.isnan(b)]), sid
        ea, eb = paramkit.quant_error(x, sid, backend=backend), paramkit.quant_error(x, sid, backend="numpy")
        assert ea["clipped"] == eb["clipped"] and math.isclose(ea["sse"], eb["sse"], rel_tol=1e-9)


@pytest.mark.parametrize("backend", ["numpy"] + NATIVE_BACKENDS)
def test_array_api_keeps_a_scalar_shape(backend):
    """fake_quantize returns the input's shape, a 0-d array included (ggml blocks need rows of 32)."""
    for sid in DEFAULT_SCHEMES:
        if sid in ("q8_0", "q4_0"):
            continue
        v = paramkit.fake_quantize(np.array(0.37, dtype=np.float32), sid, backend=backend)
        assert v.shape == () and v.dtype == np.float32, sid
        assert paramkit.quant_error(np.float32(0.37), sid, backend=backend)["n"] == 1


def test_sqnr_sanity_bands():
    x = (np.random.default_rng(1).standard_normal((1024, 4096)) * 0.02).astype(np.float32)
    bands = {"q8_0": 45, "int8_channel": 41, "q4_0": 21, "nf4": 21, "int4_g128_asym": 20}
    for sid, db in bands.items():
        assert abs(paramkit.quant_error(x, sid)["sqnr_db"] - db) < 1.5, sid


@pytest.mark.parametrize("backend", ["numpy"] + NATIVE_BACKENDS)
def test_ggml_tiny_block_zeros_stay_zero(backend):
    """A q8_0/q4_0 block whose absmax is so small that 1/d overflows must not turn 0 into NaN (0·Inf)."""
    x = np.zeros(32, np.float32)
    x[1] = 1e-38
    for sid in ("q8_0", "q4_0"):
        q = paramkit.fake_quantize(x, sid, backend=backend)
        assert np.isfinite(q).all() and q[0] == 0 and q[5] == 0, sid
        assert math.isfinite(paramkit.quant_error(x, sid, backend=backend)["max_abs_err"])


def test_batched_second_pass_changes_nothing(quant_checkpoint, monkeypatch):
    """The cpu engine's per-tensor-scale schemes re-read each batch of tensors right after reading it (page
    cache, not disk): any batch size gives the same report, and progress still climbs to its total. (The
    cuda engine keeps such tensors on the device instead: tests/test_cuda_stats.py.) Runs under every
    PARAMKIT_BACKEND: it tests the cpu engine itself."""
    assert cpu_engine_built(), "the C++ extension must be built for this test"
    backend = "cpu"
    from paramkit.backends import cpu_backend
    whole = paramkit.scan(quant_checkpoint, backend=backend, quant="default").to_dict()
    seen, batches = [], []
    monkeypatch.setattr(cpu_backend, "SECOND_PASS_BATCH_BYTES", 1)   # one tensor per batch
    real = cpu_backend.CpuEngine._run_batch
    monkeypatch.setattr(cpu_backend.CpuEngine, "_run_batch",
                        lambda self, tensors, batch, *a: batches.append(list(batch)) or real(self, tensors, batch, *a))
    batched = paramkit.scan(quant_checkpoint, backend=backend, quant="default",
                            progress=lambda done, total: seen.append((done, total))).to_dict()
    for d in (whole, batched):   # how the run went (threads, work units, seconds) may differ
        d.pop("engine", None), d.pop("timing", None)
    assert json.dumps(whole, sort_keys=True, default=str) == json.dumps(batched, sort_keys=True, default=str)
    assert seen and seen[-1][0] == seen[-1][1]
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    assert len(batches) > 3 and all(len(b) == 1 for b in batches)


HUGE_EMPTY = {"huge_cols": [0, 2 ** 63], "huge_rows": [2 ** 64 - 1, 0], "odd_cols": [0, 2 ** 63 + 1]}


@pytest.mark.parametrize("backend", available_backends())
def test_empty_tensor_with_a_huge_dimension(backend, tmp_path):
    """Zero-element tensors whose other dimension is >= 2^63 (the safetensors library accepts
    them) scan on every backend, with and without quantization; they used to overflow the engines'
    int64 task spec (OverflowError: Python int too large to convert to C long)."""
    header = {"w": {"dtype": "F32", "shape": [2, 32], "data_offsets": [0, 256]}}
    header.update({k: {"dtype": "F32", "shape": v, "data_offsets": [256, 256]} for k, v in HUGE_EMPTY.items()})
    head = json.dumps(header).encode()
    path = str(tmp_path / "huge.safetensors")
    w = np.linspace(-1, 1, 64, dtype=np.float32)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + w.tobytes())
    from safetensors import safe_open
    with safe_open(path, "numpy") as f:                  # the reference library takes the file
        assert f.get_slice("huge_cols").get_shape() == HUGE_EMPTY["huge_cols"]
    for quant in (None, "default"):
        r = paramkit.scan(path, backend=backend, quant=quant)
        for name in HUGE_EMPTY:
            t = r.tensor(name)
            assert t.numel == 0 and t.stats["nan"] == 0 and t.stats["mean"] is None and t.stats["l2"] == 0.0
        want_w = paramkit.quant_error(w.reshape(2, 32), "q8_0", backend="numpy")
        if quant:
            for name in HUGE_EMPTY:
                for sid, rec in r.tensor(name).quant.items():
                    if sid in ("q8_0", "q4_0") and name == "odd_cols":   # rows of 2^63 + 1: not whole blocks
                        assert "not_applicable" in rec
                    else:
                        assert rec["n"] == 0 and rec["quantized_nbytes"] == 0, (name, sid)
            got_w = r.tensor("w").quant["q8_0"]
            assert got_w["n"] == 64 and math.isclose(got_w["sse"], want_w["sse"], rel_tol=1e-9)


@pytest.mark.parametrize("backend", available_backends())
def test_groups_whose_chunks_are_not_whole_rows(backend, tmp_path, monkeypatch):
    """A row-group scheme alone may stream in chunks of whole groups that are not whole rows (row
    384 = 3 groups of 128): the numpy reference reshaped such a chunk into rows and failed."""
    from paramkit.quant import stream
    from safetensors.numpy import save_file
    monkeypatch.setattr(stream, "CHUNK_ELEMENTS", 1000)      # chunks of 896 elements (7 groups)
    x = (np.random.default_rng(4).standard_normal((40, 384)) * 0.1).astype(np.float32)
    path = str(tmp_path / "rows.safetensors")
    save_file({"w": x}, path)
    r = paramkit.scan(path, backend=backend, quant="int8_g128")
    want = paramkit.quant_error(x, "int8_g128", backend="numpy")
    got = r.tensor("w").quant["int8_g128"]
    assert got["n"] == x.size and got["clipped"] == want["clipped"]
    assert math.isclose(got["sse"], want["sse"], rel_tol=1e-9)
