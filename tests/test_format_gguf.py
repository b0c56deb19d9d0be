"""The GGUF header reader (paramkit.formats.gguf_file) against gguf-py: files written by gguf.GGUFWriter (every
value type, long and nested arrays, many GGML types, big-endian, custom alignment) read like GGUFReader reads
them; every malformed-header rule raises its FormatError code; truncations and byte mutations raise only
FormatError; the native string walker and the Python path agree."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import gguf
from gguf import GGMLQuantizationType as T
from paramkit.errors import FormatError
from paramkit.formats import gguf_file
from paramkit.ggml_types import GGML_TYPES
from paramkit.formats.gguf_file import ERROR_CODES, GGUFArray, parse_gguf
from paramkit.sources import open_source

from test_format_torch import BytesSource


def test_type_table_is_the_gguf_packages():
    theirs = {int(t): (t.name, *map(int, gguf.GGML_QUANT_SIZES[t])) for t in T if t in gguf.GGML_QUANT_SIZES}
    ours = {i: (g.name, g.block, g.type_size) for i, g in GGML_TYPES.items()}
    assert ours == theirs


def _parse(path):
    with open_source(path) as src:
        return parse_gguf(src)


def _flat(v):
    """Nested lists flattened: GGUFReader.contents() flattens arrays of arrays."""
    return [x for item in v for x in _flat(item)] if isinstance(v, list) and v and isinstance(v[0], list) else v


def _finish(w) -> None:
    """Write a GGUFWriter's header, metadata and tensors, and close it."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _write(path, *, endian=gguf.GGUFEndian.LITTLE, alignment=None, tokens=10, tensors=None):
    w = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 1.5)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", -2.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ✓")
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.strs", ["a", "", "ccc"])
    w.add_array("t.nested", [[1, 2], [3]])
    w.add_token_list([f"tok{i}" for i in range(tokens)])
    w.add_token_scores([float(i) for i in range(tokens)])
    rng = np.random.default_rng(0)
    for name, arr, qtype in tensors if tensors is not None else _default_tensors(rng):
        if qtype is None:
            w.add_tensor(name, arr)
        elif name.startswith("raw_"):
            w.add_tensor(name, arr, raw_shape=arr.shape, raw_dtype=qtype)   # the byte shape
        else:
            q = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
    _finish(w)
    return str(path)


def _default_tensors(rng):
    x = rng.standard_normal((4, 256)).astype(np.float32)
    out = [("f32", rng.standard_normal((3, 5)).astype(np.float32), None),
           ("f16", rng.standard_normal((7,)).astype(np.float16), None),
           ("scalarish", np.array([2.0], dtype=np.float32), None),
           ("i32", np.arange(6, dtype=np.int32).reshape(2, 3), None),
           ("f64", rng.standard_normal((2, 2)), None)]
    for qt in T:       # every type: quantized by gguf-py where it can, else random blocks (a header test)
        if qt in (T.F32, T.F16) or qt not in gguf.GGML_QUANT_SIZES:
            continue
        block, size = gguf.GGML_QUANT_SIZES[qt]
        out.append((f"q_{qt.name}", x, qt) if qt.name in _QUANTIZABLE else
                   (f"raw_{qt.name}", rng.integers(0, 256, (4, 256 // block * size), dtype=np.uint8), qt))
    return out


_QUANTIZABLE = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16", "MXFP4"}


def _check_against_reader(path, h):
    r = gguf.GGUFReader(path)
    assert [t.name for t in h.tensors] == [t.name for t in r.tensors]
    for ours, theirs in zip(h.tensors, r.tensors):
        assert ours.ne == tuple(int(d) for d in theirs.shape), ours.name
        assert ours.ggml_type == int(theirs.tensor_type) and ours.type_name == theirs.tensor_type.name
        assert ours.offset == theirs.data_offset and ours.nbytes == theirs.n_bytes
        assert ours.numel == theirs.n_elements
    fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert set(h.metadata) == set(fields)
    src = open_source(path)
    for k, f in fields.items():
        v = h.metadata[k]
        if isinstance(v, GGUFArray):
            v = v.decode(src, h.byteorder)
        want = f.contents()
        v = _flat(v)
        if isinstance(want, float) or (isinstance(want, list) and want and isinstance(want[0], float)):
            assert np.allclose(v, want), k
        else:
            assert v == want, k
        assert h.value_types[k] == int(f.types[0]), k
    src.close()


@pytest.mark.parametrize("endian", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG], ids=["le", "be"])
@pytest.mark.parametrize("alignment", [None, 64])
def test_reads_gguf_writer_files_like_gguf_reader(tmp_path, endian, alignment):
    path = _write(tmp_path / "m.gguf", endian=endian, alignment=alignment,
                  tokens=3000)   # > DECODE_ARRAY_MAX: the tokenizer arrays stay undecoded placeholders
    h = _parse(path)
    assert h.version == 3 and h.byteorder == ("<" if endian == gguf.GGUFEndian.LITTLE else ">")
    assert h.alignment == (alignment or 32) and h.data_offset % h.alignment == 0
    assert isinstance(h.metadata["tokenizer.ggml.tokens"], GGUFArray)
    assert isinstance(h.metadata["tokenizer.ggml.scores"], GGUFArray)
    assert h.metadata["t.strs"] == ["a", "", "ccc"] and h.metadata["t.nested"] == [[1, 2], [3]]
    assert any(t.type_name == "Q4_K" for t in h.tensors) and any(t.type_name == "Q8_0" for t in h.tensors)
    _check_against_reader(path, h)   # GGUFReader reads big-endian files too (contents() in host order)


def test_native_walker_and_python_agree(tmp_path, monkeypatch):
    """The tokenizer array walked natively and in Python give the same header, strings longer than the walk
    window included."""
    w = gguf.GGUFWriter(str(tmp_path / "long.gguf"), "llama")
    w.add_token_list([("x" * (5 << 20)) if i == 1500 else f"t{i}" for i in range(3000)])
    w.add_tensor("a", np.ones((2, 32), np.float32))
    _finish(w)
    native = _parse(tmp_path / "long.gguf")
    assert gguf_file._native_walker() is not None or pytest.skip("paramkit._core not built")
    monkeypatch.setattr(gguf_file, "_native_walker", lambda: None)
    python = _parse(tmp_path / "long.gguf")
    assert native.metadata == python.metadata and native.tensors == python.tensors
    tokens = native.metadata["tokenizer.ggml.tokens"]
    with open_source(tmp_path / "long.gguf") as src:
        decoded = tokens.decode(src, "<")
    assert len(decoded) == 3000 and len(decoded[1500]) == 5 << 20 and decoded[2999] == "t2999"


# --- a byte-exact builder for malformed files -----------------------------------------------------------------
def _s(text: str | bytes, bo="<") -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack(bo + "Q", len(b)) + b


def _kv(key, vtype, payload: bytes, bo="<") -> bytes:
    return _s(key, bo) + struct.pack(bo + "I", vtype) + payload


def _tensor(name, ne, ttype, offset, bo="<") -> bytes:
    return _s(name, bo) + struct.pack(bo + "I", len(ne)) + b"".join(struct.pack(bo + "Q", d) for d in ne) + \
        struct.pack(bo + "IQ", ttype, offset)


def _file(kvs=(), tensors=(), data=b"", version=3, bo="<", alignment=32, n_tensors=None, n_kv=None) -> bytes:
    head = b"GGUF" + struct.pack(bo + "I", version) + struct.pack(
        bo + "QQ", len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    pad = -len(body) % alignment
    return body + bytes(pad) + data


GOOD = _file(kvs=[_kv("general.architecture", 8, _s("llama")), _kv("x.n", 4, struct.pack("<I", 7))],
             tensors=[_tensor("a", (8, 2), 0, 0), _tensor("b", (32,), 8, 64)],
             data=bytes(64) + bytes(34))


def _code(raw: bytes) -> str:
    with pytest.raises(FormatError) as e:
        parse_gguf(BytesSource(raw, "bad.gguf"))
    assert e.value.code in ERROR_CODES or e.value.code == "unknown_format"
    return e.value.code


def test_the_builder_makes_a_valid_file():
    h = parse_gguf(BytesSource(GOOD, "good.gguf"))
    assert [(t.name, t.ne, t.type_name, t.nbytes) for t in h.tensors] == [("a", (8, 2), "F32", 64),
                                                                           ("b", (32,), "Q8_0", 34)]
    assert h.metadata == {"general.architecture": "llama", "x.n": 7}


@pytest.mark.parametrize("raw, code", [
    (_file(version=1), "gguf_version_unsupported"),
    (_file(version=4), "gguf_version_unsupported"),
    (_file(n_kv=10**9), "gguf_count_invalid"),
    (_file(n_tensors=2**62), "gguf_count_invalid"),
    (_file(kvs=[_kv("k", 4, struct.pack("<I", 1)), _kv("k", 4, struct.pack("<I", 2))]), "gguf_key_duplicate"),
    (_file(kvs=[_kv("k", 13, b"\0" * 8)]), "gguf_value_invalid"),
    (_file(kvs=[_kv(b"\xff\xfe", 4, struct.pack("<I", 1))]), "gguf_value_invalid"),
    (_file(kvs=[_kv("k", 8, _s(b"\xc3("))]), "gguf_value_invalid"),
    (_file(kvs=[_kv("k", 9, struct.pack("<IQ", 13, 1) + b"\0" * 8)]), "gguf_value_invalid"),
    (_file(kvs=[_kv("k", 9, struct.pack("<IQ", 9, 1) * 9 + struct.pack("<IQ", 4, 0))]), "gguf_value_invalid"),
    (_file(kvs=[_kv("k", 9, struct.pack("<IQ", 4, 2**40))]), "gguf_truncated"),
    (_file(kvs=[_kv("k", 9, struct.pack("<IQ", 8, 2**40))]), "gguf_truncated"),
    (_file(kvs=[_kv("k", 8, struct.pack("<Q", 2**60))]), "gguf_truncated"),
    (_file(kvs=[_kv("general.alignment", 4, struct.pack("<I", 48))]), "gguf_alignment_invalid"),
    (_file(kvs=[_kv("general.alignment", 4, struct.pack("<I", 0))]), "gguf_alignment_invalid"),
    (_file(kvs=[_kv("general.alignment", 10, struct.pack("<Q", 64))]), "gguf_alignment_invalid"),
    (_file(tensors=[_tensor("a", (4,), 99, 0)], data=bytes(64)), "gguf_tensor_type_unknown"),
    (_file(tensors=[_tensor("a", (1, 1, 1, 1, 1), 0, 0)], data=bytes(64)), "gguf_tensor_dims_invalid"),
    (_file(tensors=[_tensor("a", (2**32, 2**32), 0, 0)], data=bytes(64)), "gguf_tensor_dims_invalid"),
    (_file(tensors=[_tensor("a", (31, 2), 8, 0)], data=bytes(128)), "gguf_tensor_block_misaligned"),
    (_file(tensors=[_tensor("a", (4,), 0, 0), _tensor("a", (4,), 0, 32)], data=bytes(64)),
     "gguf_tensor_name_duplicate"),
    (_file(tensors=[_tensor("a", (4,), 0, 16)], data=bytes(64)), "gguf_tensor_offset_misaligned"),
    (_file(tensors=[_tensor("a", (40,), 0, 0)], data=bytes(64)), "gguf_tensor_out_of_bounds"),
    (_file(tensors=[_tensor("a", (4,), 0, 2**63)], data=bytes(64)), "gguf_tensor_out_of_bounds"),
    (_file(tensors=[_tensor("a", (16,), 0, 0), _tensor("b", (4,), 0, 32)], data=bytes(64)), "gguf_tensor_overlap"),
])
def test_malformed_headers(raw, code):
    assert _code(raw) == code


def test_every_code_has_a_malformed_file_test():
    import inspect
    src = inspect.getsource(test_malformed_headers) + inspect.getsource(test_truncated_anywhere)
    params = str(test_malformed_headers.pytestmark[0].args[1])
    assert {c for c in ERROR_CODES if c in params or c in src} == set(ERROR_CODES)


def test_truncated_anywhere():
    """GOOD cut at every byte: the header's own truncation codes (gguf_truncated; counts and tensors past
    the end), never another exception."""
    seen = set()
    for n in range(len(GOOD)):
        try:
            parse_gguf(BytesSource(GOOD[:n], "cut.gguf"))
        except FormatError as e:
            seen.add(e.code)
    assert "gguf_truncated" in seen and "gguf_tensor_out_of_bounds" in seen


def test_big_endian_is_read_in_its_byte_order():
    raw = _file(kvs=[_kv("x.n", 4, struct.pack(">I", 7), ">")], tensors=[_tensor("a", (8,), 0, 0, ">")],
                data=bytes(32), bo=">")
    h = parse_gguf(BytesSource(raw, "be.gguf"))
    assert h.byteorder == ">" and h.metadata == {"x.n": 7} and h.tensors[0].ne == (8,)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_byte_mutations_raise_only_format_errors(edits):
    raw = bytearray(GOOD)
    for at, value in edits:
        raw[at] = value
    try:
        parse_gguf(BytesSource(bytes(raw), "fuzz.gguf"))
    except FormatError as e:
        assert e.code in ERROR_CODES or e.code == "unknown_format"


def test_config_from_the_metadata_of_a_real_model(gemma_gguf_path):
    """Gemma-3 270M: the config.json keys planning reads, from the GGUF metadata (read here with GGUFReader)."""
    from paramkit.formats.gguf_config import config_from_gguf
    r = gguf.GGUFReader(gemma_gguf_path)
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.")}
    h = _parse(gemma_gguf_path)
    cfg = config_from_gguf(h.metadata, [t.name for t in h.tensors])
    assert cfg["model_type"] == "gemma3"
    assert cfg["num_hidden_layers"] == meta["gemma3.block_count"] == 18
    assert cfg["hidden_size"] == meta["gemma3.embedding_length"]
    assert cfg["num_attention_heads"] == meta["gemma3.attention.head_count"]
    assert cfg["num_key_value_heads"] == meta["gemma3.attention.head_count_kv"]
    assert cfg["head_dim"] == meta["gemma3.attention.key_length"]
    assert cfg["max_position_embeddings"] == meta["gemma3.context_length"]
    assert cfg["sliding_window"] == meta["gemma3.attention.sliding_window"] and cfg["sliding_window_pattern"] == 6
    assert cfg["vocab_size"] == len(r.fields["tokenizer.ggml.tokens"].data)
    assert cfg["tie_word_embeddings"] is ("output.weight" not in {t.name for t in r.tensors})


def test_config_of_a_moe_and_per_layer_heads(tmp_path):
    from paramkit.formats.gguf_config import config_from_gguf
    w = gguf.GGUFWriter(str(tmp_path / "moe.gguf"), "qwen2moe")
    w.add_block_count(3)
    w.add_expert_count(60)
    w.add_expert_used_count(4)
    w.add_expert_shared_count(1)
    w.add_head_count([16, 16, 8])
    w.add_head_count_kv([4, 2, 2])
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.add_tensor("output.weight", np.zeros((8, 32), np.float32))
    _finish(w)
    h = _parse(tmp_path / "moe.gguf")
    cfg = config_from_gguf(h.metadata, [t.name for t in h.tensors])
    assert (cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["n_shared_experts"]) == (60, 4, 1)
    assert cfg["num_attention_heads"] == 16 and cfg["num_key_value_heads"] == 4
    assert cfg["num_key_value_heads_per_layer"] == [4, 2, 2]
    assert cfg["tie_word_embeddings"] is False
    assert config_from_gguf({}, []) is None


def test_version_2_reads_like_version_3(tmp_path):
    """GGUF v2 (64-bit counts, as v3; v3 added big-endian support) is read like v3, through scan()."""
    import paramkit
    for version in (2, 3):
        raw = _file(kvs=[_kv("general.architecture", 8, _s("llama"))],
                    tensors=[_tensor("a", (8, 2), 0, 0), _tensor("b", (32,), 8, 64)],
                    data=np.arange(16, dtype="<f4").tobytes() + bytes(34), version=version)
        p = tmp_path / f"v{version}.gguf"
        p.write_bytes(raw)
        d = paramkit.scan(p, backend="numpy").to_dict()
        assert d["gguf"]["version"] == version and d["total_params"] == 16 + 32
        assert d["tensors"][0]["stats"]["max"] == 15.0
