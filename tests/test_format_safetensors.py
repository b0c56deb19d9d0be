"""Tests for the strict safetensors reader (paramkit.formats): round trips with the real safetensors
package, one malformed file per validation rule with its exact error code, shards, directories, fuzz."""
from __future__ import annotations

import json
import os
import random
import struct
import tempfile
import tracemalloc

import numpy as np
import pytest

from paramkit.dtypes import DTYPES, SAFETENSORS_DTYPES
from paramkit.errors import FormatError
from paramkit.formats import ERROR_CODES, open_table
from paramkit.formats import resolver
from paramkit.formats import safetensors as st

# --- helpers ------------------------------------------------------------------------------------


def st_bytes(header, data: bytes = b"", n: int | None = None) -> bytes:
    """Hand-craft a safetensors file: u64 N, header (dict -> compact JSON, or raw str/bytes), data."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8")
    return struct.pack("<Q", len(header) if n is None else n) + header + data


def write(path, header, data: bytes = b"", n: int | None = None) -> str:
    path = str(path)
    with open(path, "wb") as f:
        f.write(st_bytes(header, data, n))
    return path


def ent(dtype: str, shape, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


def expect(code: str, path, *, tensor=None, strict: bool = True, target=None) -> FormatError:
    with pytest.raises(FormatError) as ei:
        open_table(path if target is None else target, strict=strict)
    err = ei.value
    assert err.code == code, f"{err.code} != {code}: {err}"
    assert err.code in ERROR_CODES
    assert err.path == os.path.abspath(str(path)), (err.path, path)
    assert err.tensor == tensor
    assert err.message and len(err.message) > 20
    return err


def check_bytes(table, arrays: dict) -> None:
    """Every tensor's absolute offset/nbytes points at exactly the array's bytes."""
    by_name = {t.name: t for t in table.tensors}
    assert set(by_name) == set(arrays)
    for name, arr in arrays.items():
        t = by_name[name]
        with open(t.file, "rb") as f:
            f.seek(t.offset)
            assert f.read(t.nbytes) == np.ascontiguousarray(arr).tobytes()
        assert t.shape == tuple(arr.shape)
        assert t.numel == arr.size
        assert t.nbytes == arr.nbytes


# --- round trips with the real safetensors package -----------------------------------------------

def test_roundtrip_numpy_save_file(tmp_path):
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    arrays = {
        "model.embed.weight": rng.standard_normal((7, 5)).astype(np.float32),
        "model.norm.weight": rng.standard_normal(5).astype(np.float16),
        "model.position_ids": np.arange(9, dtype=np.int64)[None, :],
        "a.mask": rng.integers(0, 2, (3, 3)).astype(bool),
        "a.u8": rng.integers(0, 255, 11).astype(np.uint8),
        "a.f64": rng.standard_normal((2, 2, 2)).astype(np.float64),
        "a.i16": rng.integers(-300, 300, 5).astype(np.int16),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    p = tmp_path / "model.safetensors"
    save_file(arrays, str(p), metadata={"format": "np", "note": "x: y"})
    table = open_table(p)
    assert table.format == "safetensors"
    assert table.path == str(p)
    assert table.files == [str(p)]
    assert table.metadata == {"format": "np", "note": "x: y"}
    assert table.unreferenced_files == [] and table.index_metadata is None and table.config is None
    n = struct.unpack("<Q", p.read_bytes()[:8])[0]
    assert table.header_bytes == 8 + n
    dt = {"model.embed.weight": "F32", "model.norm.weight": "F16", "model.position_ids": "I64",
          "a.mask": "BOOL", "a.u8": "U8", "a.f64": "F64", "a.i16": "I16", "scalar": "F32", "empty": "F32"}
    assert {t.name: t.dtype for t in table.tensors} == dt
    check_bytes(table, arrays)
    offsets = [t.offset for t in table.tensors]
    assert offsets == sorted(offsets)
    assert table.tensors[0].offset == 8 + n
    assert table.data_bytes == sum(a.nbytes for a in arrays.values())
    last = max(table.tensors, key=lambda t: t.offset + t.nbytes)
    assert last.offset + last.nbytes == p.stat().st_size


def test_roundtrip_torch_bf16_fp8(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    tensors = {
        "w.bf16": torch.arange(12, dtype=torch.float32).reshape(3, 4).to(torch.bfloat16),
        "w.e4m3": torch.linspace(-2, 2, 8).to(torch.float8_e4m3fn),
        "w.e5m2": torch.linspace(-2, 2, 6).to(torch.float8_e5m2),
        "w.i32": torch.arange(5, dtype=torch.int32),
    }
    p = tmp_path / "t.safetensors"
    save_file(tensors, str(p), metadata={"format": "pt"})
    table = open_table(p)
    assert {t.name: t.dtype for t in table.tensors} == {
        "w.bf16": "BF16", "w.e4m3": "F8_E4M3", "w.e5m2": "F8_E5M2", "w.i32": "I32"}
    assert table.metadata == {"format": "pt"}
    raw = p.read_bytes()
    for t in table.tensors:
        expected = tensors[t.name].contiguous().view(torch.uint8).numpy().tobytes()
        assert raw[t.offset:t.offset + t.nbytes] == expected
        assert t.shape == tuple(tensors[t.name].shape)


def test_detect_by_content_not_extension(tmp_path):
    from safetensors.numpy import save_file
    p = tmp_path / "weights.bin"
    save_file({"x": np.ones(3, np.float32)}, str(p))
    assert [t.name for t in open_table(p).tensors] == ["x"]


def test_os_pathlike_and_relative_path(tmp_path, monkeypatch):
    write(tmp_path / "m.safetensors", {"a": ent("U8", [2], 0, 2)}, b"\x01\x02")
    monkeypatch.chdir(tmp_path)
    table = open_table("m.safetensors")
    assert table.path == "m.safetensors"
    assert table.files == [str(tmp_path / "m.safetensors")]
    assert table.tensors[0].file == str(tmp_path / "m.safetensors")


# --- valid edge cases ----------------------------------------------------------------------------

def test_scalars_zero_size_and_order_by_offset(tmp_path):
    # entries deliberately out of offset order in the JSON; zero-size tensors share offsets
    hdr = {
        "__metadata__": {"k": "v"},
        "z": ent("F32", [4], 8, 24),
        "scalar": ent("F64", [], 0, 8),
        "empty_a": ent("BF16", [0, 1000], 8, 8),
        "empty_b": ent("I8", [5, 0], 24, 24),
    }
    p = write(tmp_path / "m.safetensors", hdr, bytes(range(24)))
    table = open_table(p)
    assert [t.name for t in table.tensors] == ["scalar", "empty_a", "z", "empty_b"]
    n = len(json.dumps(hdr, separators=(",", ":")))
    s = {t.name: t for t in table.tensors}
    assert s["scalar"].shape == () and s["scalar"].numel == 1 and s["scalar"].nbytes == 8
    assert s["scalar"].offset == 8 + n
    assert s["z"].offset == 8 + n + 8
    assert s["empty_a"].numel == 0 and s["empty_a"].nbytes == 0
    assert table.metadata == {"k": "v"}


def test_all_dtypes(tmp_path):
    hdr, pos, expect_bytes = {}, 0, {}
    for name, d in ((n, DTYPES[n]) for n in SAFETENSORS_DTYPES):
        numel = 8  # 8 x bits is always whole bytes
        nb = numel * d.bits // 8
        hdr[f"t.{name}"] = ent(name, [2, 4], pos, pos + nb)
        expect_bytes[f"t.{name}"] = nb
        pos += nb
    # sub-byte: F4 with an even element count, F6 with a multiple of 4
    hdr["f4.even"] = ent("F4", [6], pos, pos + 3)
    pos += 3
    hdr["f6.four"] = ent("F6_E3M2", [4], pos, pos + 3)
    pos += 3
    p = write(tmp_path / "all.safetensors", hdr, bytes(pos))
    table = open_table(p)
    got = {t.name: (t.dtype, t.nbytes) for t in table.tensors}
    for name in SAFETENSORS_DTYPES:
        assert got[f"t.{name}"] == (name, expect_bytes[f"t.{name}"])
    assert got["f4.even"] == ("F4", 3) and got["f6.four"] == ("F6_E3M2", 3)
    assert len(table.tensors) == len(SAFETENSORS_DTYPES) + 2


def test_empty_file_no_tensors_is_valid(tmp_path):
    p = write(tmp_path / "e.safetensors", "{}      ")  # padded with spaces, as the writer does
    table = open_table(p)
    assert table.tensors == [] and table.metadata == {} and table.header_bytes == 16
    p2 = write(tmp_path / "e2.safetensors", {"__metadata__": {"format": "pt"}})
    assert open_table(p2).metadata == {"format": "pt"}


def test_leading_whitespace_null_metadata_and_extra_keys_accepted(tmp_path):
    # The reference implementation (serde_json) accepts these; so do we.
    hdr = '  \n{"__metadata__":null,"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"extra":{"x":1}}}'
    table = open_table(write(tmp_path / "m.safetensors", hdr, b"ab"))
    assert table.metadata == {}
    assert [(t.name, t.shape, t.nbytes) for t in table.tensors] == [("a", (2,), 2)]


def test_colons_inside_strings_are_not_duplicates(tmp_path):
    # ':' inside names/metadata defeats the fast duplicate check; the exact check must then pass
    hdr = {"__metadata__": {"url": "http://x:1/a:b"}, "weird:name::": ent("U8", [1], 0, 1)}
    table = open_table(write(tmp_path / "m.safetensors", hdr, b"\x00"))
    assert table.tensors[0].name == "weird:name::"
    assert table.metadata == {"url": "http://x:1/a:b"}


def test_config_json_read(tmp_path):
    write(tmp_path / "model.safetensors", {"a": ent("U8", [1], 0, 1)}, b"\x00")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    table = open_table(tmp_path / "model.safetensors")
    assert table.config == {"model_type": "llama", "num_hidden_layers": 2}
    assert open_table(tmp_path).config == table.config


# --- the malformed corpus: one file per rule -----------------------------------------------------

GOOD = {"a": ent("F32", [2], 0, 8)}
GOOD_DATA = bytes(8)

# (id, header, data, n override, expected code, expected tensor)
CORPUS = [
    ("unknown_text", None, b"hello world, this is not a weight file at all\n", None, "unknown_format", None),
    ("unknown_png", None, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(40), None, "unknown_format", None),
    ("unknown_empty_header", b"", b"\x00" * 16, None, "unknown_format", None),
    ("unknown_blank_header", b"        ", b"", None, "unknown_format", None),
    ("unknown_array_header", b"[1, 2, 3]", b"", None, "unknown_format", None),
    ("too_large", b"{}", b"", 100_000_001, "header_too_large", None),
    ("too_large_u64max", b"{}", b"", 2**64 - 1, "header_too_large", None),
    ("beyond_eof", b"{}", b"", 100, "header_beyond_eof", None),
    ("not_utf8", b'{"a\xff\xfe":1}', b"", None, "header_not_utf8", None),
    ("not_json", b'{"a": }', b"", None, "header_not_json", None),
    ("not_json_trailing_nul", b"{}\x00\x00", b"", None, "header_not_json", None),
    ("not_json_nan", b'{"__metadata__":{"a":"b"},"x":NaN}', b"", None, "header_not_json", None),
    ("not_json_deep", b"{" + b'"a":' * 1 + b"[" * 100000 + b"]" * 100000 + b"}", b"", None,
     "header_not_json", None),
    ("dup_tensor", b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                   b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\x00", None, "duplicate_key", "a"),
    ("dup_tensor_shadowed_scalar", b'{"a":1,"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\x00",
     None, "duplicate_key", "a"),
    ("dup_tensor_shadowing_bad", b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":7}', b"\x00",
     None, "duplicate_key", "a"),
    ("dup_metadata_key", b'{"__metadata__":{"k":"1","k":"2"}}', b"", None, "duplicate_key", None),
    ("dup_metadata_block", b'{"__metadata__":{"k":"1"},"__metadata__":{"j":"2"}}', b"", None,
     "duplicate_key", None),
    ("dup_field", b'{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\x00", None,
     "duplicate_key", "a"),
    ("metadata_not_str", {"__metadata__": {"a": 1}}, b"", None, "metadata_invalid", None),
    ("metadata_not_map", {"__metadata__": ["a"]}, b"", None, "metadata_invalid", None),
    ("entry_not_object", {"a": [1, 2]}, b"", None, "tensor_not_object", "a"),
    ("entry_string", {"a": "F32"}, b"", None, "tensor_not_object", "a"),
    ("missing_dtype", {"a": {"shape": [2], "data_offsets": [0, 8]}}, GOOD_DATA, None, "tensor_missing_field", "a"),
    ("missing_shape", {"a": {"dtype": "F32", "data_offsets": [0, 8]}}, GOOD_DATA, None,
     "tensor_missing_field", "a"),
    ("missing_offsets", {"a": {"dtype": "F32", "shape": [2]}}, GOOD_DATA, None, "tensor_missing_field", "a"),
    ("dtype_unknown", {"a": ent("F128", [2], 0, 8)}, GOOD_DATA, None, "dtype_unknown", "a"),
    ("dtype_lowercase", {"a": ent("f32", [2], 0, 8)}, GOOD_DATA, None, "dtype_unknown", "a"),
    ("dtype_ggml_block", {"a": ent("Q8_0", [32], 0, 34)}, bytes(34), None, "dtype_unknown", "a"),   # a GGUF type, not safetensors
    ("dtype_int", {"a": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}}, GOOD_DATA, None, "dtype_unknown", "a"),
    ("dtype_list", {"a": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, GOOD_DATA, None,
     "dtype_unknown", "a"),
    ("shape_str", {"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, GOOD_DATA, None,
     "shape_invalid", "a"),
    ("shape_float", {"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, GOOD_DATA, None,
     "shape_invalid", "a"),
    ("shape_bool", {"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, GOOD_DATA, None,
     "shape_invalid", "a"),
    ("shape_negative", {"a": {"dtype": "F32", "shape": [-2, -1], "data_offsets": [0, 8]}}, GOOD_DATA, None,
     "shape_invalid", "a"),
    ("shape_null", {"a": {"dtype": "F32", "shape": None, "data_offsets": [0, 8]}}, GOOD_DATA, None,
     "shape_invalid", "a"),
    ("shape_dim_above_u64", {"a": {"dtype": "F32", "shape": [2**64, 0], "data_offsets": [0, 0]}}, b"", None,
     "shape_invalid", "a"),
    ("numel_overflow", {"a": {"dtype": "U8", "shape": [2**32, 2**32], "data_offsets": [0, 8]}}, GOOD_DATA, None,
     "numel_overflow", "a"),
    ("offsets_one", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, GOOD_DATA, None,
     "offsets_invalid", "a"),
    ("offsets_three", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}}, GOOD_DATA, None,
     "offsets_invalid", "a"),
    ("offsets_negative", {"a": ent("F32", [2], -8, 0)}, GOOD_DATA, None, "offsets_invalid", "a"),
    ("offsets_reversed", {"a": ent("F32", [2], 8, 0)}, GOOD_DATA, None, "offsets_invalid", "a"),
    ("offsets_strings", {"a": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, GOOD_DATA, None,
     "offsets_invalid", "a"),
    ("offsets_str2", {"a": {"dtype": "F32", "shape": [2], "data_offsets": "08"}}, GOOD_DATA, None,
     "offsets_invalid", "a"),
    ("offsets_float", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}}, GOOD_DATA, None,
     "offsets_invalid", "a"),
    ("offsets_bool", {"a": {"dtype": "U8", "shape": [1], "data_offsets": [False, True]}}, b"\x00", None,
     "offsets_invalid", "a"),
    ("offsets_object", {"a": {"dtype": "U8", "shape": [1], "data_offsets": {"b": 0, "e": 1}}}, b"\x00", None,
     "offsets_invalid", "a"),
    ("f4_odd", {"a": ent("F4", [3], 0, 2)}, b"\x00\x00", None, "sub_byte_misaligned", "a"),
    ("f6_two", {"a": ent("F6_E2M3", [2], 0, 2)}, b"\x00\x00", None, "sub_byte_misaligned", "a"),
    ("size_mismatch", {"a": ent("F32", [2], 0, 4)}, b"\x00" * 4, None, "size_mismatch", "a"),
    ("size_mismatch_f4", {"a": ent("F4", [4], 0, 4)}, b"\x00" * 4, None, "size_mismatch", "a"),
    ("gap_at_start", {"a": ent("F32", [2], 4, 12)}, b"\x00" * 12, None, "data_gap", "a"),
    ("gap_between", {"a": ent("F32", [1], 0, 4), "b": ent("F32", [1], 8, 12)}, b"\x00" * 12, None,
     "data_gap", "b"),
    ("overlap", {"a": ent("F32", [2], 0, 8), "b": ent("F32", [1], 4, 8)}, b"\x00" * 8, None,
     "data_overlap", "b"),
    ("overlap_same", {"a": ent("F32", [1], 0, 4), "b": ent("F32", [1], 0, 4)}, b"\x00" * 4, None,
     "data_overlap", "b"),
    ("zero_size_inside", {"a": ent("F32", [2], 0, 8), "z": ent("F32", [0], 4, 4)}, b"\x00" * 8, None,
     "data_overlap", "z"),
    ("beyond_eof_data", {"a": ent("F32", [2], 0, 8)}, b"\x00" * 5, None, "data_beyond_eof", "a"),
    ("beyond_eof_second", {"a": ent("F32", [1], 0, 4), "b": ent("F32", [1], 4, 8)}, b"\x00" * 4, None,
     "data_beyond_eof", "b"),
    ("trailing", {"a": ent("F32", [2], 0, 8)}, b"\x00" * 9, None, "trailing_bytes", None),
    ("trailing_no_tensors", b"{}", b"\x00", None, "trailing_bytes", None),
]


def _corpus_file(tmp_path, header, data, n):
    p = tmp_path / "bad.safetensors"
    if header is None:
        p.write_bytes(data)
    else:
        write(p, header, data, n)
    return p


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
@pytest.mark.parametrize("strict", [True, False])
def test_malformed_corpus(tmp_path, case, strict):
    _, header, data, n, code, tensor = case
    p = _corpus_file(tmp_path, header, data, n)
    if not strict and code == "metadata_invalid":  # the one rule strict=False relaxes
        assert open_table(p, strict=False).tensors == []
        return
    err = expect(code, p, tensor=tensor, strict=strict)
    assert code in str(err)


def test_corpus_covers_every_single_file_code():
    single_file = {c[4] for c in CORPUS} | {"file_too_short"}
    multi = {"no_weights", "index_ambiguous", "index_invalid", "shard_missing", "tensor_missing_from_shard",
             "tensor_duplicate", "tensor_not_in_index", "config_invalid"}
    # every code of the safetensors reader and of the resolver (shards_mixed: tests/test_formats_resolver.py;
    # the remote ones, shard_outside_model and url_not_a_file: tests/test_remote_scan.py)
    assert single_file | multi == (set(st.ERROR_CODES) | set(resolver.ERROR_CODES)) - {
        "shards_mixed", "shard_outside_model", "url_not_a_file"}
    assert set(st.ERROR_CODES) <= set(ERROR_CODES) and set(resolver.ERROR_CODES) <= set(ERROR_CODES)
    assert all(isinstance(v, str) and v for v in ERROR_CODES.values())


@pytest.mark.parametrize("size", [0, 1, 7])
def test_file_too_short(tmp_path, size):
    p = tmp_path / "short.safetensors"
    p.write_bytes(b"\x01" * size)
    expect("file_too_short", p)


def test_truncated_header_of_real_file(tmp_path):
    # first 8 bytes of a real file only: a truncated download, not "unknown format"
    p = write(tmp_path / "t.safetensors", {"a": ent("U8", [1], 0, 1)}, b"\x00")
    raw = open(p, "rb").read()
    for cut in (8, 9, 20):
        with open(p, "wb") as f:
            f.write(raw[:cut])
        expect("header_beyond_eof", p)


def test_no_allocation_from_declared_header_length(tmp_path):
    # N just under the limit, tiny file: must fail without allocating ~100 MB
    p = write(tmp_path / "big_n.safetensors", b"{}", b"", n=99_999_999)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as ei:
            open_table(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ei.value.code == "header_beyond_eof"
    assert peak < 1_000_000


def test_messages_say_found_and_expected(tmp_path):
    err = expect("size_mismatch", write(tmp_path / "m.safetensors", {"w": ent("F32", [2], 0, 4)}, bytes(4)),
                 tensor="w")
    assert "4 bytes" in err.message and "8 bytes" in err.message
    err = expect("dtype_unknown", write(tmp_path / "m.safetensors", {"w": ent("Q4", [2], 0, 1)}, bytes(1)),
                 tensor="w")
    assert "'Q4'" in err.message and "BF16" in err.message
    err = expect("trailing_bytes", write(tmp_path / "m.safetensors", {"w": ent("U8", [2], 0, 2)}, bytes(5)))
    assert "3 more bytes" in err.message
    d = err.to_dict()
    assert d["code"] == "trailing_bytes" and d["path"] == str(tmp_path / "m.safetensors")


def test_duplicate_reported_before_other_errors(tmp_path):
    # the shadowed entry is valid, the kept one is not: the duplicate is the root cause
    hdr = (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
           b'"a":{"dtype":"U8","shape":[2],"data_offsets":[0,1]}}')
    expect("duplicate_key", write(tmp_path / "d.safetensors", hdr, b"\x00"), tensor="a")


# --- lone UTF-16 surrogate escapes: the reference rejects them as invalid JSON -----------------------

_F32 = '"dtype":"F32","shape":[1],"data_offsets":[0,4]'
# (id, header text as written in the file, accepted by the reference, FormatError.tensor when rejected)
SURROGATE_HEADERS = [
    ("name_high", '{"w\\ud800":{' + _F32 + '}}', False, None),
    ("name_low", '{"w\\udc00":{' + _F32 + '}}', False, None),
    ("name_reversed_pair", '{"w\\ude00\\ud83d":{' + _F32 + '}}', False, None),
    ("name_high_uppercase_hex", '{"w\\uDBFF":{' + _F32 + '}}', False, None),
    ("metadata_key", '{"__metadata__":{"k\\ud800":"v"},"w":{' + _F32 + '}}', False, None),
    ("metadata_value", '{"__metadata__":{"k":"v\\udfff"},"w":{' + _F32 + '}}', False, None),
    ("metadata_nonstring_value", '{"__metadata__":{"k":["\\ud800"]},"w":{' + _F32 + '}}', False, None),
    ("dtype", '{"w":{"dtype":"F32\\ud800","shape":[1],"data_offsets":[0,4]}}', False, "w"),
    ("extra_field_value", '{"w":{' + _F32 + ',"x":"\\ud800"}}', False, "w"),
    ("extra_field_key", '{"w":{' + _F32 + ',"x\\ud800":1}}', False, "w"),
    ("nested_extra", '{"w":{' + _F32 + ',"x":{"y":["a","\\udbff"]}}}', False, "w"),
    ("valid_pair", '{"w\\ud83d\\ude00":{' + _F32 + '}}', True, None),
    ("escaped_backslash", '{"w\\\\ud800":{' + _F32 + '}}', True, None),
]


@pytest.mark.parametrize("case", SURROGATE_HEADERS, ids=[c[0] for c in SURROGATE_HEADERS])
def test_lone_surrogate_escapes_rejected_like_the_reference(tmp_path, case):
    """A JSON escape of an unpaired UTF-16 surrogate (\ud800-\udfff) anywhere in the header: the safetensors
    package (serde_json) rejects the file; paramkit too, as header_not_utf8 (no UTF-8 text holds a lone
    surrogate), for strict=True and False. A proper pair and an escaped backslash followed by 'ud800' are text."""
    from safetensors import safe_open
    _, header, accepted, tensor = case
    p = write(tmp_path / "s.safetensors", header, bytes(4))
    try:
        with safe_open(p, "np") as f:
            ref_names = list(f.keys())
    except Exception:
        ref_names = None
    assert (ref_names is not None) == accepted, f"the reference's verdict changed: {ref_names}"
    for strict in (True, False):
        if accepted:
            assert [t.name for t in open_table(p, strict=strict).tensors] == ref_names
        else:
            err = expect("header_not_utf8", p, tensor=tensor, strict=strict)
            assert "surrogate" in err.message
            str(err).encode("utf-8")   # the message itself is printable text


def test_lone_surrogate_name_fails_the_cli_cleanly(tmp_path, capsys):
    """`paramkit scan` / `paramkit quant --out` of such a file: exit code 2 with the code (scan exited 1 with
    UnicodeEncodeError; quant wrote the output, then exited 1)."""
    from paramkit.cli import main
    p = write(tmp_path / "s.safetensors", '{"w\\ud800":{' + _F32 + '}}', bytes(4))
    assert main(["scan", p]) == 2
    assert "[header_not_utf8]" in capsys.readouterr().err
    out = tmp_path / "q.safetensors"
    assert main(["quant", p, "--out", str(out), "--scheme", "q8_0"]) == 2
    assert "[header_not_utf8]" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("what", ["index", "config"])
def test_lone_surrogate_in_index_or_config_rejected(tmp_path, what):
    """The same rule for the other JSON files a model directory holds: index_invalid / config_invalid."""
    write(tmp_path / "model.safetensors", {"w": ent("F32", [1], 0, 4)}, bytes(4))
    if what == "index":
        (tmp_path / "model.safetensors.index.json").write_text(
            '{"metadata":{"note":"\\ud800"},"weight_map":{"w":"model.safetensors"}}')
        err = expect("index_invalid", tmp_path / "model.safetensors.index.json", target=tmp_path)
    else:
        (tmp_path / "config.json").write_text('{"model_type":"llama\\udc00"}')
        err = expect("config_invalid", tmp_path / "config.json", target=tmp_path)
    assert "surrogate" in err.message


# --- strict=False ----------------------------------------------------------------------------------

def test_strict_false_tolerates_metadata_only(tmp_path):
    hdr = {"__metadata__": {"s": "str", "n": 1, "l": [1, "x"], "o": {"k": None}}, "a": ent("U8", [1], 0, 1)}
    p = write(tmp_path / "m.safetensors", hdr, b"\x00")
    expect("metadata_invalid", p)
    table = open_table(p, strict=False)
    assert table.metadata == {"s": "str", "n": "1", "l": '[1, "x"]', "o": '{"k": null}'}
    assert [t.name for t in table.tensors] == ["a"]
    p2 = write(tmp_path / "m2.safetensors", {"__metadata__": [1, 2], "a": ent("U8", [1], 0, 1)}, b"\x00")
    expect("metadata_invalid", p2)
    assert open_table(p2, strict=False).metadata == {}
    # duplicate keys inside __metadata__ are a different rule: still an error
    p3 = write(tmp_path / "m3.safetensors", b'{"__metadata__":{"k":1,"k":2}}')
    expect("duplicate_key", p3, strict=False)


# --- directories and sharded models ----------------------------------------------------------------

def _save(path, arrays, metadata=None):
    from safetensors.numpy import save_file
    save_file(arrays, str(path), metadata=metadata)


def _sharded(tmp_path, *, weight_map=None, extra=None):
    """2-shard model: shard 2 is first in weight_map order (the index is sorted by tensor name)."""
    a1 = {"b.weight": np.ones((2, 3), np.float32), "c.weight": np.arange(4, dtype=np.int64)}
    a2 = {"a.weight": np.full((5,), 2, np.float16)}
    _save(tmp_path / "model-00001-of-00002.safetensors", a1, {"format": "pt", "from": "one"})
    _save(tmp_path / "model-00002-of-00002.safetensors", a2, {"format": "np", "only2": "x"})
    wm = weight_map or {"a.weight": "model-00002-of-00002.safetensors",
                        "b.weight": "model-00001-of-00002.safetensors",
                        "c.weight": "model-00001-of-00002.safetensors"}
    idx = {"metadata": {"total_size": 66, "total_parameters": 15}, "weight_map": wm}
    if extra:
        idx.update(extra)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(idx))
    return {**a1, **a2}


def test_sharded_model_via_directory_and_index(tmp_path):
    arrays = _sharded(tmp_path)
    _save(tmp_path / "consolidated.safetensors", {"x": np.zeros(1, np.float32)})
    (tmp_path / "config.json").write_text('{"tie_word_embeddings": true}')
    (tmp_path / "README.md").write_text("not a weight file")
    for target in (tmp_path, tmp_path / "model.safetensors.index.json"):
        table = open_table(target)
        assert table.path == str(target)
        s1, s2 = (str(tmp_path / f"model-0000{i}-of-00002.safetensors") for i in (1, 2))
        assert table.files == [s2, s1]  # order of first appearance in weight_map
        # shard 2 first, then shard 1 by byte offset (the writer put the I64 tensor first)
        assert [t.name for t in table.tensors] == ["a.weight", "c.weight", "b.weight"]
        assert [t.file for t in table.tensors] == [s2, s1, s1]
        assert table.tensors[1].offset < table.tensors[2].offset
        assert table.unreferenced_files == [str(tmp_path / "consolidated.safetensors")]
        assert table.index_metadata == {"total_size": 66, "total_parameters": 15}
        assert table.metadata == {"format": "np", "only2": "x", "from": "one"}  # first file wins
        assert table.config == {"tie_word_embeddings": True}
        h = sum(8 + struct.unpack("<Q", open(f, "rb").read(8))[0] for f in (s1, s2))
        assert table.header_bytes == h
        check_bytes(table, arrays)


def test_index_named_other_than_model(tmp_path):
    _sharded(tmp_path)
    os.rename(tmp_path / "model.safetensors.index.json", tmp_path / "diffusion_pytorch_model.safetensors.index.json")
    assert len(open_table(tmp_path).tensors) == 3
    (tmp_path / "other.safetensors.index.json").write_text("{}")
    expect("index_ambiguous", tmp_path)


def test_shard_missing(tmp_path):
    _sharded(tmp_path)
    os.remove(tmp_path / "model-00001-of-00002.safetensors")
    err = expect("shard_missing", tmp_path / "model-00001-of-00002.safetensors", target=tmp_path)
    assert "b.weight" in err.message


def test_tensor_missing_from_shard(tmp_path):
    wm = {"a.weight": "model-00002-of-00002.safetensors", "b.weight": "model-00001-of-00002.safetensors",
          "c.weight": "model-00001-of-00002.safetensors", "d.weight": "model-00001-of-00002.safetensors"}
    _sharded(tmp_path, weight_map=wm)
    expect("tensor_missing_from_shard", tmp_path / "model-00001-of-00002.safetensors", tensor="d.weight",
           target=tmp_path)


def test_tensor_in_two_shards(tmp_path):
    _sharded(tmp_path)
    _save(tmp_path / "model-00002-of-00002.safetensors",
          {"a.weight": np.zeros(5, np.float16), "b.weight": np.ones((2, 3), np.float32)})
    # shard 2 is read first; shard 1 then repeats b.weight
    expect("tensor_duplicate", tmp_path / "model-00001-of-00002.safetensors", tensor="b.weight",
           target=tmp_path)


def test_tensor_in_a_shard_not_assigned_to_it(tmp_path):
    wm = {"a.weight": "model-00002-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors",
          "c.weight": "model-00001-of-00002.safetensors"}
    _sharded(tmp_path, weight_map=wm)
    err = expect("tensor_duplicate", tmp_path / "model-00001-of-00002.safetensors", tensor="b.weight",
                 target=tmp_path)
    assert "model-00002-of-00002.safetensors" in err.message


def test_tensor_not_in_index(tmp_path):
    wm = {"a.weight": "model-00002-of-00002.safetensors", "b.weight": "model-00001-of-00002.safetensors"}
    _sharded(tmp_path, weight_map=wm)
    expect("tensor_not_in_index", tmp_path / "model-00001-of-00002.safetensors", tensor="c.weight",
           target=tmp_path)


@pytest.mark.parametrize("content", [
    "{not json", '["weight_map"]', '{"metadata": {}}', '{"weight_map": []}',
    '{"weight_map": {"a": 1}}', '{"weight_map": {"a": "../outside.safetensors"}}',
    '{"weight_map": {"a": "/abs/x.safetensors"}}', '{"weight_map": {"a": ""}}',
    '{"weight_map": {}, "metadata": 3}', b'{"weight_map": {"\xff": "x"}}',
])
def test_index_invalid(tmp_path, content):
    p = tmp_path / "model.safetensors.index.json"
    if isinstance(content, str):
        content = content.encode()
    p.write_bytes(content)
    expect("index_invalid", p, tensor=None if b'"a"' not in content else "a", target=tmp_path)
    expect("index_invalid", p, tensor=None if b'"a"' not in content else "a")


def test_shard_errors_carry_shard_path(tmp_path):
    _sharded(tmp_path)
    write(tmp_path / "model-00001-of-00002.safetensors", {"a": ent("F32", [2], 0, 8)}, bytes(7))
    expect("data_beyond_eof", tmp_path / "model-00001-of-00002.safetensors", tensor="a", target=tmp_path)


def test_directory_single_file(tmp_path):
    _save(tmp_path / "model.safetensors", {"w": np.ones((2, 2), np.float32)}, {"format": "np"})
    (tmp_path / "notes.txt").write_text("x")
    table = open_table(tmp_path)
    assert table.files == [str(tmp_path / "model.safetensors")]
    assert [t.name for t in table.tensors] == ["w"] and table.metadata == {"format": "np"}
    assert table.unreferenced_files == []


def test_directory_several_files_without_index(tmp_path):
    _save(tmp_path / "b.safetensors", {"x": np.ones(2, np.float32)}, {"k": "from_b"})
    _save(tmp_path / "a.safetensors", {"y": np.ones(3, np.int8), "z": np.ones(1, np.uint8)}, {"k": "from_a"})
    table = open_table(tmp_path)
    assert table.files == [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    assert [t.name for t in table.tensors] == ["y", "z", "x"]
    assert table.metadata == {"k": "from_a"}
    _save(tmp_path / "c.safetensors", {"y": np.ones(3, np.int8)})
    expect("tensor_duplicate", tmp_path / "c.safetensors", tensor="y", target=tmp_path)


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "README.md").write_text("# a model card, no weights")
    expect("no_weights", tmp_path)
    # a .bin is a PyTorch checkpoint now (it used to be ignored: no_weights); a broken one says what is wrong
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04")
    expect("zip_invalid", tmp_path / "pytorch_model.bin", target=tmp_path)


def test_config_invalid(tmp_path):
    write(tmp_path / "model.safetensors", {"a": ent("U8", [1], 0, 1)}, b"\x00")
    (tmp_path / "config.json").write_text('{"a": ')
    expect("config_invalid", tmp_path / "config.json", target=tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("[1, 2]")
    expect("config_invalid", tmp_path / "config.json", target=tmp_path)


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_table(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        open_table(tmp_path / "nope" / "model.safetensors.index.json")


def test_io_errors_stay_oserror(tmp_path):
    p = write(tmp_path / "m.safetensors", {"a": ent("U8", [1], 0, 1)}, b"\x00")
    with pytest.raises(OSError) as ei:
        open_table(os.path.join(p, "inside"))  # a file used as a directory
    assert not isinstance(ei.value, FormatError)
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):  # root reads unreadable files
        os.chmod(p, 0)
        with pytest.raises(PermissionError):
            open_table(p)


# --- scale -------------------------------------------------------------------------------------------

def test_100k_tensor_header(tmp_path):
    n = 100_000
    hdr = {"__metadata__": {"format": "pt"}}
    for i in range(n):
        hdr[f"model.layers.{i // 128}.mlp.experts.{i % 128}.down_proj.weight"] = ent("BF16", [2, 2], 8 * i,
                                                                                     8 * i + 8)
    p = write(tmp_path / "moe.safetensors", hdr, bytes(8 * n))
    table = open_table(p)
    assert len(table.tensors) == n
    assert table.tensors[-1].offset + table.tensors[-1].nbytes == os.path.getsize(p)
    assert sum(t.numel for t in table.tensors) == 4 * n


# --- fuzzing -----------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402


def _valid_file() -> bytes:
    hdr = {"__metadata__": {"format": "pt", "k": "v"},
           "emb": ent("F32", [2, 3], 0, 24), "s": ent("F16", [], 24, 26), "f4": ent("F4", [4], 26, 28),
           "z": ent("I64", [0], 28, 28), "m": ent("BOOL", [3], 28, 31)}
    raw = json.dumps(hdr, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(range(31))


VALID = _valid_file()
_FUZZ_DIR = tempfile.mkdtemp(prefix="paramkit-fuzz-")


def _open_bytes(data: bytes):
    p = os.path.join(_FUZZ_DIR, "f.safetensors")
    with open(p, "wb") as f:
        f.write(data)
    for strict in (True, False):
        try:
            open_table(p, strict=strict)
        except FormatError as e:
            assert e.code in ERROR_CODES and e.path == p


def test_fuzz_baseline_is_valid(tmp_path):
    p = tmp_path / "v.safetensors"
    p.write_bytes(VALID)
    assert len(open_table(p).tensors) == 5


_edit = hs.tuples(hs.sampled_from(["set", "insert", "delete"]), hs.integers(0, len(VALID) - 1),
                  hs.integers(0, 255))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=hs.lists(_edit, min_size=1, max_size=6), cut=hs.one_of(hs.none(), hs.integers(0, len(VALID))))
def test_fuzz_byte_mutations(edits, cut):
    data = bytearray(VALID)
    for kind, pos, val in edits:
        pos = min(pos, len(data) - 1) if data else 0
        if kind == "set" and data:
            data[pos] = val
        elif kind == "insert":
            data.insert(pos, val)
        elif data:
            del data[pos]
    if cut is not None:
        data = data[:cut]
    _open_bytes(bytes(data))


_JSON_CHARS = list('{}[]:,"0123456789-.eE truefalsnNaI\\u') + ["F32", "U8", "F4", "__metadata__", "shape",
                                                                 "dtype", "data_offsets", "1e400", "-1"]


@settings(max_examples=400, deadline=None)
@given(pos=hs.integers(0, 500), repl=hs.lists(hs.sampled_from(_JSON_CHARS), max_size=3),
       dellen=hs.integers(0, 4), datalen=hs.integers(0, 40))
def test_fuzz_header_text_mutations(pos, repl, dellen, datalen):
    # mutate the JSON text but keep N consistent, so the mutation reaches the validation rules
    n = struct.unpack("<Q", VALID[:8])[0]
    text = VALID[8:8 + n].decode()
    pos = min(pos, len(text))
    text = text[:pos] + "".join(repl) + text[pos + dellen:]
    _open_bytes(st_bytes(text, bytes(datalen)))


@settings(max_examples=200, deadline=None)
@given(header=hs.recursive(
    hs.none() | hs.booleans() | hs.integers(-2, 2**65) | hs.floats(allow_nan=False) | hs.sampled_from(
        ["F32", "U8", "F4", "BOOL", "x"]),
    lambda kids: hs.lists(kids, max_size=4) | hs.dictionaries(
        hs.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "a", "b"]), kids, max_size=4),
    max_leaves=20), datalen=hs.integers(0, 64))
def test_fuzz_structured_headers(header, datalen):
    if not isinstance(header, dict):
        header = {"a": header}
    _open_bytes(st_bytes(json.dumps(header), bytes(datalen)))


def test_fuzz_random_seeds_exhaustive_truncation():
    # every truncation of a valid file is rejected with a FormatError
    for cut in range(len(VALID)):
        p = os.path.join(_FUZZ_DIR, "t.safetensors")
        with open(p, "wb") as f:
            f.write(VALID[:cut])
        with pytest.raises(FormatError):
            open_table(p)
    rng = random.Random(1)
    for _ in range(300):
        data = bytearray(VALID)
        data[rng.randrange(len(data))] = rng.randrange(256)
        _open_bytes(bytes(data))
