"""paramkit.quant.export.fake_quantize_file against files the real safetensors package writes and reads:
values bit-identical to fake_quantize + the cast back, everything else byte-identical, atomic writes."""
from __future__ import annotations

import json
import math
import os

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import paramkit
import paramkit.quant as Q
from paramkit.quant import export as X
from paramkit.quant.export import fake_quantize_file

BACKENDS = ["numpy", "auto"]


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "model.embed_tokens.weight": (torch.randn(96, 128, generator=g) * 0.02).to(torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": (torch.randn(64, 96, generator=g) * 0.05).to(torch.float16),
        "model.layers.0.mlp.up_proj.bias": torch.randn(64, generator=g),               # 1-D: kept
        "model.layers.0.input_layernorm.weight": 1 + 0.1 * torch.randn(128, generator=g),  # norm: kept
        "model.layers.0.conv.weight": torch.randn(8, 4, 3, 32, generator=g),            # 4-D f32
        "model.layers.0.odd.weight": torch.randn(10, 100, generator=g),                 # row 100: no ggml
        "model.layers.1.down_proj.weight": torch.randn(16, 64, generator=g, dtype=torch.float64),
        "position_ids": torch.arange(77, dtype=torch.int64).reshape(1, 77),            # buffer: kept
    }


METADATA = {"format": "pt", "origin": "unit test"}


@pytest.fixture
def checkpoint(tmp_path) -> tuple[str, dict[str, torch.Tensor]]:
    t = _tensors()
    path = str(tmp_path / "model.safetensors")
    save_file(t, path, metadata=METADATA)
    return path, t


def _bits(t: torch.Tensor) -> np.ndarray:
    """The raw element bytes of a tensor (bit-exact comparison, NaN and -0 included)."""
    return t.contiguous().view(torch.uint8).numpy()


def _expected(orig: torch.Tensor, scheme: str) -> torch.Tensor:
    """fake_quantize of the float32 values, cast back to the tensor's dtype by torch itself."""
    q = Q.fake_quantize(orig.to(torch.float32).numpy(), scheme)
    return torch.from_numpy(q).to(orig.dtype)


def _header_order(path: str) -> list[str]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return [k for k, _ in sorted(h.items(), key=lambda kv: kv[1]["data_offsets"])]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", Q.DEFAULT_SCHEMES)
def test_roundtrip_bit_identical(checkpoint, tmp_path, scheme, backend):
    path, orig = checkpoint
    out = str(tmp_path / "out.safetensors")
    s = fake_quantize_file(path, scheme, out, backend=backend)
    got = load_file(out)
    assert list(got) and set(got) == set(orig)
    ggml = scheme in ("q8_0", "q4_0")
    expect_q = {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
                "model.layers.0.conv.weight", "model.layers.1.down_proj.weight"}
    if not ggml:
        expect_q.add("model.layers.0.odd.weight")
    assert set(s["quantized"]) == expect_q
    for name, t in orig.items():
        g = got[name]
        assert g.dtype == t.dtype and g.shape == t.shape, name
        if name in expect_q:
            assert np.array_equal(_bits(g), _bits(_expected(t, scheme))), (scheme, name)
            assert not np.array_equal(_bits(g), _bits(t)), name      # it did change
        else:
            assert np.array_equal(_bits(g), _bits(t)), name
    # same order of the data, same metadata plus the paramkit.quant entry
    assert _header_order(out) == _header_order(path)
    with safe_open(out, "np") as f:
        meta = f.metadata()
    assert {k: meta[k] for k in METADATA} == METADATA
    entry = json.loads(meta["paramkit.quant"])
    assert entry["scheme"] == scheme and entry["paramkit_version"] == paramkit.__version__
    assert entry["tensors"] == s["quantized"] and entry["n_tensors"] == len(expect_q)
    # the summary
    assert s["out"] == os.path.abspath(out) and s["scheme"] == scheme and s["schemes"] == [scheme]
    assert s["n_quantized"] == len(expect_q) and s["n_kept"] == len(orig) - len(expect_q)
    assert s["bytes_written"] == os.path.getsize(out)
    assert s["original_bytes"] == sum(t.numel() * t.element_size() for t in orig.values())
    reasons = {k["name"]: k["reason"] for k in s["kept"]}
    assert reasons["position_ids"].startswith("role buffer")
    assert "2 dimensions" in reasons["model.layers.0.mlp.up_proj.bias"]
    if ggml:
        assert "multiple of the block size 32" in reasons["model.layers.0.odd.weight"]
    e = s["error"]
    assert e["n"] == sum(orig[n].numel() for n in expect_q)
    assert 10 < e["sqnr_db"] < 60 and 0 < e["rel_err"] < 0.2 and 0.99 < e["cosine"] <= 1
    ref = Q.merge_error(Q.empty_error_sums(), Q.empty_error_sums())
    qbytes = 0
    for n in expect_q:
        ref = Q.merge_error(ref, Q.error_sums(orig[n].to(torch.float32).numpy(), scheme))
        qbytes += Q.get_scheme(scheme).quantized_nbytes(tuple(orig[n].shape))
    assert e["clipped"] == ref["clipped"]
    assert math.isclose(e["sse"], ref["sse"], rel_tol=1e-9)
    assert e["quantized_nbytes"] == qbytes
    assert s["quantized_bytes"] == qbytes + sum(orig[n].numel() * orig[n].element_size()
                                                for n in orig if n not in expect_q)
    assert len(s["worst"]) == len(expect_q)
    assert s["worst"] == sorted(s["worst"], key=lambda w: w["sqnr_db"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_equals_whole(checkpoint, tmp_path, monkeypatch, backend):
    """Tensors larger than CHUNK_ELEMENTS go chunk by chunk (aligned to chunk_multiple, per-tensor
    schemes after an absmax read): the file must be byte-identical to the whole-tensor export."""
    path, _ = checkpoint
    for scheme in Q.DEFAULT_SCHEMES + ("int4_g64", "int8_g32", "int4_g32_asym"):
        whole = str(tmp_path / f"{scheme}.whole.safetensors")
        s1 = fake_quantize_file(path, scheme, whole, backend=backend)
        with open(whole, "rb") as a:
            expect = a.read()
        runs = []
        for chunk, piece, threads in ((600, 200, 1), (600, 200, 3), (200, 200, 2), (5000, 700, 4)):
            monkeypatch.setattr(X, "CHUNK_ELEMENTS", chunk)
            monkeypatch.setattr(X, "PIECE_ELEMENTS", piece)
            out = str(tmp_path / f"{scheme}.{chunk}.{piece}.{threads}.safetensors")
            s2 = fake_quantize_file(path, scheme, out, backend=backend, threads=threads)
            monkeypatch.undo()
            with open(out, "rb") as b:
                assert b.read() == expect, (scheme, chunk, piece)
            for k in ("n", "clipped", "scale_clamped", "nonfinite", "max_abs_err"):
                assert s1["error"][k] == s2["error"][k], (scheme, k)
            assert math.isclose(s1["error"]["sse"], s2["error"]["sse"], rel_tol=1e-9)
            runs.append(s2)
        # the same pieces give the same sums whatever the thread count
        assert runs[0]["error"] == runs[1]["error"] and runs[0]["stored_error"] == runs[1]["stored_error"]


def test_progress_reaches_total(checkpoint, tmp_path, monkeypatch):
    path, _ = checkpoint
    calls = []
    monkeypatch.setattr(X, "CHUNK_ELEMENTS", 500)   # int8_tensor: absmax read counted too
    fake_quantize_file(path, "int8_tensor", str(tmp_path / "o.safetensors"),
                       progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1]
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))


def test_policy_override(checkpoint, tmp_path):
    path, orig = checkpoint
    s = fake_quantize_file(path, "int8_channel", str(tmp_path / "a.safetensors"), quant_tensors=r"up_proj")
    assert set(s["quantized"]) == {"model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.bias"}
    got = load_file(str(tmp_path / "a.safetensors"))
    b = orig["model.layers.0.mlp.up_proj.bias"]
    assert np.array_equal(_bits(got["model.layers.0.mlp.up_proj.bias"]), _bits(_expected(b, "int8_channel")))
    s = fake_quantize_file(path, "nf4", str(tmp_path / "b.safetensors"),
                           quant_tensors=lambda name, dtype, shape, role: dtype == "BF16")
    assert s["quantized"] == ["model.embed_tokens.weight"]
    # buffers are never quantized, whatever the policy says
    s = fake_quantize_file(path, "nf4", str(tmp_path / "c.safetensors"), quant_tensors=lambda *a: True)
    assert "position_ids" not in s["quantized"] and len(s["quantized"]) == len(orig) - 1


def test_long_name_list_stored_as_count(checkpoint, tmp_path, monkeypatch):
    path, _ = checkpoint
    monkeypatch.setattr(X, "MAX_NAMES_JSON", 10)
    out = str(tmp_path / "o.safetensors")
    s = fake_quantize_file(path, "q8_0", out)
    with safe_open(out, "np") as f:
        entry = json.loads(f.metadata()["paramkit.quant"])
    assert "tensors" not in entry and entry["n_tensors"] == s["n_quantized"] == 4


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_no_partial_output_on_failure(checkpoint, tmp_path, monkeypatch, exc):
    path, _ = checkpoint
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous contents")
    real = X.cast_back
    calls = []

    def failing(values, dtype):
        calls.append(dtype)
        if len(calls) == 3:          # mid-write: two tensors already written to the temp file
            raise exc("injected")
        return real(values, dtype)

    monkeypatch.setattr(X, "cast_back", failing)
    with pytest.raises(exc, match="injected"):
        fake_quantize_file(path, "int4_g128", str(out), overwrite=True)
    assert len(calls) == 3
    assert out.read_bytes() == b"previous contents"
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "out.safetensors"]
    # and without a previous file nothing appears at all
    out.unlink()
    calls.clear()
    with pytest.raises(exc):
        fake_quantize_file(path, "int4_g128", str(out))
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


def test_refuses_input_and_existing_output(checkpoint, tmp_path):
    path, _ = checkpoint
    before = open(path, "rb").read()
    with pytest.raises(ValueError, match="input"):
        fake_quantize_file(path, "q8_0", path, overwrite=True)
    link = tmp_path / "link.safetensors"
    os.symlink(path, link)
    with pytest.raises(ValueError, match="input"):
        fake_quantize_file(path, "q8_0", str(link), overwrite=True)
    with pytest.raises(ValueError, match="input"):
        fake_quantize_file(str(link), "q8_0", path, overwrite=True)
    hard = tmp_path / "hard.safetensors"
    os.link(path, hard)
    with pytest.raises(ValueError, match="input"):
        fake_quantize_file(path, "q8_0", str(hard), overwrite=True)
    assert open(path, "rb").read() == before
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        fake_quantize_file(path, "q8_0", str(out))
    assert out.read_bytes() == b"keep me"
    fake_quantize_file(path, "q8_0", str(out), overwrite=True)
    assert set(load_file(str(out))) == set(_tensors())
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        fake_quantize_file(path, "q3_weird", str(tmp_path / "x.safetensors"))
    assert not (tmp_path / "x.safetensors").exists()


def test_sharded_input_refused(tmp_path):
    t = _tensors()
    names = list(t)
    save_file({n: t[n] for n in names[:4]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({n: t[n] for n in names[4:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    wm = {n: f"model-0000{1 if i < 4 else 2}-of-00002.safetensors" for i, n in enumerate(names)}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    with pytest.raises(ValueError, match="sharded"):
        fake_quantize_file(str(tmp_path), "q8_0", str(tmp_path / "o.safetensors"))
    # one shard at a time works
    s = fake_quantize_file(str(tmp_path / "model-00001-of-00002.safetensors"), "q8_0",
                           str(tmp_path / "o.safetensors"))
    assert s["n_quantized"] == 2


# ---- the cast back -----------------------------------------------------------------------------
def _probe_f32(rng, n: int) -> np.ndarray:
    """Random float32 bit patterns plus values around every scale (ties included), ±0, ±Inf, NaN."""
    bits = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    mags = (np.exp2(rng.uniform(-30, 20, size=n)) * rng.choice([-1, 1], size=n)).astype(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-45, 448, 464, 465,
                        480, 57344, 61440, 61441, 65520, 2.0**-9, 2.0**-10, 3 * 2.0**-11, 2.0**-16,
                        2.0**-17, 3 * 2.0**-18], dtype=np.float32)
    return np.concatenate([bits, mags, special, -special])


def test_bf16_cast_back_matches_torch():
    rng = np.random.default_rng(0)
    x = _probe_f32(rng, 200_000)
    # exact ties between two bfloat16 values: bf16 patterns with the half bit set
    ties = ((rng.integers(0, 2**16, 50_000).astype(np.uint32) << 16) | 0x8000).view(np.float32)
    x = np.concatenate([x, ties])
    got = X.cast_back(x, "BF16").view(np.uint16)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(got[~nan], ref[~nan])
    back = (got.astype(np.uint32) << 16).view(np.float32)
    assert np.isnan(back[nan]).all()


@pytest.mark.parametrize("dtype,mld", [("F8_E4M3", ml_dtypes.float8_e4m3fn), ("F8_E5M2", ml_dtypes.float8_e5m2)])
def test_f8_cast_back_matches_ml_dtypes(dtype, mld):
    rng = np.random.default_rng(1)
    x = _probe_f32(rng, 200_000)
    # every F8 value and every midpoint between neighbours (ties to even), both signs
    vals = np.arange(256, dtype=np.uint8).view(mld).astype(np.float32)
    vals = np.unique(vals[np.isfinite(vals)])
    mids = ((vals[:-1].astype(np.float64) + vals[1:]) / 2).astype(np.float32)
    x = np.concatenate([x, vals, mids, np.nextafter(mids, np.float32(np.inf)),
                        np.nextafter(mids, np.float32(-np.inf))])
    with np.errstate(all="ignore"):
        ref = x.astype(mld)
    got = X.cast_back(x, dtype)
    refb = ref.view(np.uint8)
    rnan = np.isnan(ref.astype(np.float32))
    assert np.array_equal(got[~rnan], refb[~rnan])
    assert np.isnan(got.view(mld).astype(np.float32)[rnan]).all()


def test_f8_and_f64_inputs(tmp_path):
    g = torch.Generator().manual_seed(5)
    t = {"e4.weight": (torch.randn(32, 64, generator=g) * 50).to(torch.float8_e4m3fn),
         "e5.weight": (torch.randn(32, 64, generator=g) * 3).to(torch.float8_e5m2),
         "d.weight": torch.randn(8, 64, generator=g, dtype=torch.float64)}
    path = str(tmp_path / "f8.safetensors")
    save_file(t, path)
    for scheme in ("int4_g128_asym", "int8_channel", "fp8_e4m3", "q4_0"):
        out = str(tmp_path / f"{scheme}.safetensors")
        s = fake_quantize_file(path, scheme, out)
        assert s["n_quantized"] == 3
        got = load_file(out)
        for name, orig in t.items():
            x = orig.to(torch.float32).numpy()
            q = Q.fake_quantize(x, scheme)
            if orig.dtype == torch.float64:
                exp = q.astype(np.float64).view(np.uint8)
            else:
                mld = ml_dtypes.float8_e4m3fn if orig.dtype == torch.float8_e4m3fn else ml_dtypes.float8_e5m2
                exp = q.astype(mld).view(np.uint8)
            assert np.array_equal(_bits(got[name]).reshape(-1), exp.reshape(-1)), (scheme, name)


def test_minilm_export(minilm_path, tmp_path):
    """The real all-MiniLM-L6-v2 weights: every 2-D weight quantized, the rest byte-identical."""
    out = str(tmp_path / "minilm.q8_0.safetensors")
    s = fake_quantize_file(minilm_path, "q8_0", out)
    got = load_file(out)
    orig = load_file(minilm_path)
    assert set(got) == set(orig)
    assert s["n_quantized"] == sum(1 for t in orig.values() if t.ndim >= 2 and t.is_floating_point())
    assert 40 < s["error"]["sqnr_db"] < 50
    name = "encoder.layer.0.attention.self.query.weight"
    assert name in s["quantized"]
    assert np.array_equal(got[name].numpy(), Q.fake_quantize(orig[name].numpy(), "q8_0"))
    for n, t in orig.items():
        if n not in s["quantized"]:
            assert torch.equal(got[n], t), n


def test_output_mode_follows_umask(checkpoint, tmp_path):
    """The temporary file is private (0600) while written; the finished file gets the usual mode."""
    path, _ = checkpoint
    old = os.umask(0o027)
    try:
        out = str(tmp_path / "m.safetensors")
        fake_quantize_file(path, "q8_0", out)
    finally:
        os.umask(old)
    assert os.stat(out).st_mode & 0o777 == 0o640
