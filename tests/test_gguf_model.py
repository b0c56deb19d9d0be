"""GGUF models as paramkit counts them (issue 14, "Reading" and "Counting"): split models and directories,
roles (computed RoPE tables, the tied output), MoE total vs active from the metadata, the file type label and
bits per weight, on files written by gguf.GGUFWriter, sparse ones for big-model counts, and the real Gemma-3."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import gguf
from gguf import GGMLQuantizationType as T

import paramkit
from paramkit.counting.gguf import FILE_TYPES
from paramkit.errors import FormatError

from conftest import available_backends
from test_format_gguf import _finish


def test_file_type_labels_are_the_gguf_packages():
    want = {int(t): t.name.removeprefix("MOSTLY_").removeprefix("ALL_") for t in gguf.LlamaFileType}
    assert FILE_TYPES == want


def _llama(path, tensors, *, arch="llama", meta=None, split_max_tensors=0):
    """A GGUF written by GGUFWriter: `tensors` {name: float32 array}, `meta` {key: int} as uint32 values."""
    w = gguf.GGUFWriter(str(path), arch, split_max_tensors=split_max_tensors)
    w.add_block_count(2)
    for k, v in (meta or {}).items():
        w.add_uint32(k, v)
    for name, a in tensors.items():
        w.add_tensor(name, a)
    _finish(w)
    return path


def _small_tensors(rng, output=True):
    t = {"token_embd.weight": rng.standard_normal((10, 8), dtype=np.float32),
         "rope_freqs.weight": np.ones(4, np.float32), "output_norm.weight": np.ones(8, np.float32)}
    for b in range(2):
        t[f"blk.{b}.attn_q.weight"] = rng.standard_normal((8, 8), dtype=np.float32)
        t[f"blk.{b}.ffn_up.weight"] = rng.standard_normal((16, 8), dtype=np.float32)
    if output:
        t["output.weight"] = rng.standard_normal((10, 8), dtype=np.float32)
    return t


def test_roles_rope_table_is_a_buffer_and_a_missing_output_is_a_flagged_tie(tmp_path):
    rng = np.random.default_rng(0)
    r = paramkit.scan(_llama(tmp_path / "m.gguf", _small_tensors(rng, output=False)), stats=False)
    d = r.to_dict()
    assert d["format"] == "gguf"
    assert d["buffer_elements"] == 4
    roles = {t["name"]: t["role"] for t in d["tensors"]}
    assert roles["rope_freqs.weight"] == "buffer" and roles["token_embd.weight"] == "parameter"
    assert d["total_params"] == 80 + 8 + 2 * (64 + 128)
    assert d["ties"]["tie_word_embeddings"] is True and d["ties"]["embedding"] == "token_embd.weight"
    assert "tied" in d["ties"]["status"]
    with_output = paramkit.scan(_llama(tmp_path / "o.gguf", _small_tensors(rng)), stats=False).to_dict()
    assert with_output["total_params"] == d["total_params"] + 80
    assert with_output["ties"]["tie_word_embeddings"] is False


def _sizes_on_disk(paths):
    return sum(os.path.getsize(p) for p in paths)


def test_gguf_section_types_bits_per_weight_and_padding(tmp_path):
    rng = np.random.default_rng(1)
    w = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "llama")
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q8_0))
    x = rng.standard_normal((3, 64), dtype=np.float32)
    w.add_tensor("blk.0.ffn_up.weight", gguf.quants.quantize(x, T.Q8_0), raw_dtype=T.Q8_0)
    w.add_tensor("rope_freqs.weight", np.ones(5, np.float32))            # 20 bytes: 12 bytes of padding after
    w.add_tensor("output_norm.weight", np.ones(3, np.float32))
    _finish(w)
    path = tmp_path / "q.gguf"
    g = paramkit.scan(path, stats=False).to_dict()["gguf"]
    q8_bytes = 3 * 2 * 34                   # 2 blocks of 32 per row, 34 bytes each
    assert g["file_type"] == "Q8_0" and g["file_type_id"] == 7 and g["version"] == 3
    assert g["by_type"]["Q8_0"] == {"tensors": 1, "params": 192, "bytes": q8_bytes, "bits_per_weight": 8.5}
    assert g["by_type"]["F32"]["params"] == 3 and g["by_type"]["F32"]["tensors"] == 2
    assert g["parameter_bytes"] == q8_bytes + 12 and g["other_tensor_bytes"] == 20
    assert g["bits_per_weight"] == round((q8_bytes + 12) * 8 / 195, 4)
    assert g["file_bytes"] == _sizes_on_disk([path])
    assert g["padding_bytes"] == g["file_bytes"] - g["header_bytes"] - (q8_bytes + 20 + 12) and g["padding_bytes"] > 0
    q = paramkit.scan(path, stats=False).to_dict()["quantization"]
    assert q["method"] == "gguf" and q["format"] == "Q8_0"


def test_a_split_model_opens_from_any_of_its_files_and_its_directory(tmp_path):
    rng = np.random.default_rng(2)
    tensors = _small_tensors(rng)
    d = tmp_path / "split"
    d.mkdir()
    _llama(d / "m.gguf", tensors, split_max_tensors=3)
    files = sorted(os.listdir(d))
    assert files == [f"m-0000{k}-of-00003.gguf" for k in (1, 2, 3)]
    whole = paramkit.scan(_llama(tmp_path / "whole.gguf", tensors), stats=False).to_dict()
    for path in [d] + [d / f for f in files]:
        r = paramkit.scan(path, stats=False).to_dict()
        assert r["files"] == [str(d / f) for f in files]
        assert r["total_params"] == whole["total_params"] == sum(a.size for a in tensors.values()) - 4
        assert [t["name"] for t in r["tensors"]] == [t["name"] for t in whole["tensors"]]
    assert paramkit.scan(d, stats=True).to_dict()["aggregates"] == paramkit.scan(tmp_path / "whole.gguf").to_dict()["aggregates"]


def test_split_errors(tmp_path):
    rng = np.random.default_rng(3)
    tensors = _small_tensors(rng)
    _llama(tmp_path / "m.gguf", tensors, split_max_tensors=3)
    second = tmp_path / "m-00002-of-00003.gguf"
    os.replace(second, tmp_path / "aside.gguf")
    with pytest.raises(FormatError) as e:
        paramkit.scan(tmp_path / "m-00001-of-00003.gguf", stats=False)
    assert e.value.code == "gguf_split_missing" and "m-00002-of-00003.gguf" in str(e.value)
    # a file in the wrong place of the split: its split.no says 0 where file 2 must say 1
    os.replace(tmp_path / "m-00001-of-00003.gguf", second)
    os.replace(tmp_path / "aside.gguf", tmp_path / "m-00001-of-00003.gguf")
    with pytest.raises(FormatError) as e:
        paramkit.scan(second, stats=False)
    assert e.value.code == "gguf_split_invalid" and "split.no=1" in str(e.value)
    bad = tmp_path / "x-00004-of-00003.gguf"
    _llama(bad, {"a.weight": np.ones(2, np.float32)})
    with pytest.raises(FormatError) as e:
        paramkit.scan(bad, stats=False)
    assert e.value.code == "gguf_split_invalid"


def test_split_tensor_count_must_match(tmp_path):
    rng = np.random.default_rng(4)
    _llama(tmp_path / "m.gguf", _small_tensors(rng), split_max_tensors=3)          # 8 tensors: 3 + 3 + 2
    other = tmp_path / "o"
    other.mkdir()
    _llama(other / "m.gguf", {**_small_tensors(rng), "extra.weight": np.ones(3, np.float32)},
           split_max_tensors=3)                                                     # 9 tensors: 3 + 3 + 3
    # the last file of the 9-tensor split in place of the 8-tensor one's: split.tensors.count (8) disagrees
    os.replace(other / "m-00003-of-00003.gguf", tmp_path / "m-00003-of-00003.gguf")
    with pytest.raises(FormatError) as e:
        paramkit.scan(tmp_path / "m-00001-of-00003.gguf", stats=False)
    assert e.value.code == "gguf_split_invalid" and "split.tensors.count=8" in str(e.value)


def test_directories_one_model_precedence_and_ambiguity(tmp_path):
    rng = np.random.default_rng(5)
    d = tmp_path / "two"
    d.mkdir()
    _llama(d / "a.gguf", _small_tensors(rng))
    _llama(d / "b.gguf", _small_tensors(rng))
    with pytest.raises(FormatError) as e:
        paramkit.scan(d, stats=False)
    assert e.value.code == "gguf_models_ambiguous" and "a.gguf" in str(e.value) and "b.gguf" in str(e.value)
    os.remove(d / "b.gguf")
    assert paramkit.scan(d, stats=False).to_dict()["files"] == [str(d / "a.gguf")]
    from safetensors.numpy import save_file
    save_file({"w": np.ones((2, 2), np.float32)}, str(d / "model.safetensors"))
    r = paramkit.scan(d, stats=False).to_dict()
    assert r["format"] == "safetensors" and r["total_params"] == 4
    assert [f["file"] for f in r["ignored_files"]] == [str(d / "a.gguf")]
    assert "safetensors weights" in r["ignored_files"][0]["reason"]


def _pad(n: int, a: int = 32) -> int:
    return (n + a - 1) // a * a


def _sparse_gguf(path, arch: str, meta: dict[str, int], infos: list[tuple[str, tuple[int, ...], T]]):
    """A GGUF whose header is GGUFWriter's and whose tensor data is a hole: the file has its full size but
    holds no data (a sparse file), for counting big models."""
    w = gguf.GGUFWriter(str(path), arch)
    for k, v in meta.items():
        w.add_uint32(k, v)
    total = 0
    for name, shape, qt in infos:
        block, size = gguf.GGML_QUANT_SIZES[qt]
        nbytes = int(np.prod(shape)) // block * size
        w.add_tensor_info(name, shape, np.float32, nbytes, raw_dtype=qt)
        total += _pad(nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(path, "r+b") as f:
        f.truncate(_pad(os.path.getsize(path)) + total)
    return path


def test_mixtral_sized_moe_total_and_active_from_a_sparse_file(tmp_path):
    d, ff, vocab, experts, layers, kv = 4096, 14336, 32000, 8, 32, 1024
    infos = [("token_embd.weight", (vocab, d), T.Q4_0), ("output.weight", (vocab, d), T.Q6_K),
             ("output_norm.weight", (d,), T.F32)]
    for b in range(layers):
        p = f"blk.{b}."
        infos += [(p + "attn_q.weight", (d, d), T.Q4_0), (p + "attn_k.weight", (kv, d), T.Q4_0),
                  (p + "attn_v.weight", (kv, d), T.Q4_0), (p + "attn_output.weight", (d, d), T.Q4_0),
                  (p + "attn_norm.weight", (d,), T.F32), (p + "ffn_norm.weight", (d,), T.F32),
                  (p + "ffn_gate_inp.weight", (experts, d), T.F32),
                  (p + "ffn_gate_exps.weight", (experts, ff, d), T.Q4_0),
                  (p + "ffn_up_exps.weight", (experts, ff, d), T.Q4_0),
                  (p + "ffn_down_exps.weight", (experts, d, ff), T.Q4_0)]
    path = _sparse_gguf(tmp_path / "mixtral.gguf", "llama",
                        {"llama.block_count": layers, "llama.expert_count": experts, "llama.expert_used_count": 2},
                        infos)
    assert os.stat(path).st_blocks * 512 < 10 << 20          # really sparse: the count reads only the header
    r = paramkit.scan(path, stats=False).to_dict()
    assert r["total_params"] == 46_702_792_704                 # Mixtral-8x7B's published total
    assert r["active_params"] == 12_879_925_248                # and its 2-of-8 active count
    moe = r["moe"]
    assert moe["detected"] and moe["num_experts"] == 8 and moe["top_k"] == 2 and moe["expert_layout"] == "stacked"
    assert moe["routed_expert_params"] == layers * 3 * experts * ff * d
    assert moe["router_params"] == layers * experts * d
    roles = {t["name"]: t["role"] for t in r["tensors"]}
    assert roles["blk.0.ffn_gate_exps.weight"] == "parameter"


def test_shared_experts_and_leading_dense_blocks(tmp_path):
    """A DeepSeek-style layout: block 0 dense, block 1 with 4 routed experts (top 2), a shared expert and its
    gate: active = everything but the unchosen half of the routed experts."""
    rng = np.random.default_rng(6)
    t = {"token_embd.weight": rng.standard_normal((6, 4), dtype=np.float32),
         "blk.0.ffn_up.weight": rng.standard_normal((8, 4), dtype=np.float32),
         "blk.1.ffn_gate_inp.weight": rng.standard_normal((4, 4), dtype=np.float32),
         "blk.1.ffn_up_exps.weight": rng.standard_normal((4, 8, 4), dtype=np.float32),
         "blk.1.ffn_down_exps.weight": rng.standard_normal((4, 4, 8), dtype=np.float32),
         "blk.1.ffn_up_shexp.weight": rng.standard_normal((8, 4), dtype=np.float32),
         "blk.1.ffn_gate_inp_shexp.weight": rng.standard_normal((4,), dtype=np.float32)}
    path = _llama(tmp_path / "ds.gguf", t, arch="deepseek2",
                  meta={"deepseek2.expert_count": 4, "deepseek2.expert_used_count": 2,
                        "deepseek2.expert_shared_count": 1, "deepseek2.leading_dense_block_count": 1})
    r = paramkit.scan(path, stats=False).to_dict()
    total = sum(a.size for a in t.values())
    routed = 4 * 8 * 4 * 2
    assert r["total_params"] == total
    assert r["active_params"] == total - routed // 2
    m = r["moe"]
    assert m["routed_expert_params"] == routed and m["shared_expert_params"] == 32 + 4
    assert m["router_params"] == 16 and m["num_shared_experts"] == 1 and m["dense_layers"] == ["blk.0"]


def test_gemma_counts_and_gguf_section(gemma_gguf_path):
    reader = gguf.GGUFReader(gemma_gguf_path)
    want_params = sum(int(np.prod(t.shape)) for t in reader.tensors)
    want_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    r = paramkit.scan(gemma_gguf_path, stats=False).to_dict()
    assert r["total_params"] == want_params == 268_098_176
    assert r["bytes_total"] == want_bytes
    g = r["gguf"]
    assert g["file_type"] == "Q4_K_M" and g["bits_per_weight"] == round(want_bytes * 8 / want_params, 4)
    by_type = {}
    for t in reader.tensors:
        by_type[t.tensor_type.name] = by_type.get(t.tensor_type.name, 0) + int(np.prod(t.shape))
    assert {k: v["params"] for k, v in g["by_type"].items()} == by_type
    assert g["padding_bytes"] == os.path.getsize(gemma_gguf_path) - reader.data_offset - want_bytes
    assert r["ties"]["tie_word_embeddings"] is True        # Gemma has no output.weight


@pytest.mark.parametrize("backend", available_backends())
def test_big_endian_file_has_the_statistics_of_its_little_endian_twin(tmp_path, backend):
    rng = np.random.default_rng(7)
    tensors = {"a.weight": rng.standard_normal((5, 7), dtype=np.float32),
               "b.weight": rng.standard_normal(9).astype(np.float16),
               "c.weight": rng.integers(-100, 100, 6).astype(np.int16),
               "d.weight": rng.integers(-100, 100, 4).astype(np.int8)}

    def write(path, endian):
        w = gguf.GGUFWriter(str(path), "llama", endianess=endian)
        for k, a in tensors.items():
            w.add_tensor(k, a.copy())
        _finish(w)
        return path
    le = paramkit.scan(write(tmp_path / "le.gguf", gguf.GGUFEndian.LITTLE), backend=backend).to_dict()
    be = paramkit.scan(write(tmp_path / "be.gguf", gguf.GGUFEndian.BIG), backend=backend).to_dict()
    assert be["gguf"]["byteorder"] == "big" and le["gguf"]["byteorder"] == "little"
    assert [t["stats"] for t in be["tensors"]] == [t["stats"] for t in le["tensors"]]
    got = {t["name"]: t["stats"] for t in le["tensors"]}
    for k, a in tensors.items():
        assert got[k]["max"] == float(a.max()) and got[k]["min"] == float(a.min())


def test_plan_from_the_gguf_metadata_alone(gemma_gguf_path):
    """Gemma-3 270M's published shape (18 layers, 1 KV head of 256, a 512-token window on all but every 6th
    layer): the KV cache of a 4,096-token context, from the GGUF with no config.json anywhere."""
    kv = paramkit.plan(gemma_gguf_path, context=4096).to_dict()["kv_cache"]
    assert (kv["layers"], kv["kv_heads"], kv["head_dim"]) == (18, 1, 256)
    assert (kv["full_attention_layers"], kv["sliding_window_layers"]) == (3, 15)
    assert kv["per_token"]["value"] == 2 * 18 * 1 * 256 * 2
    assert kv["total"]["value"] == 2 * 1 * 256 * 2 * (3 * 4096 + 15 * 512)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6))
def test_scan_of_mutated_files_raises_only_format_errors(tmp_path, edits):
    """Byte mutations anywhere in a small GGUF's header: scan() (reader, resolver, counting, statistics) either
    works or raises FormatError."""
    base = tmp_path / "base.gguf"
    if not base.exists():
        _llama(base, _small_tensors(np.random.default_rng(8)), meta={"llama.expert_count": 4})
    raw = bytearray(base.read_bytes())
    for at, value in edits:
        raw[at % len(raw)] = value
    path = tmp_path / "m.gguf"
    path.write_bytes(bytes(raw))
    try:
        paramkit.scan(path, backend="numpy")
    except FormatError:
        pass
