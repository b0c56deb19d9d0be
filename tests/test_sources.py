"""Byte sources (paramkit.sources): zip members as sources of their own (stored: a range of the archive that the
engines read in place; deflated: inflated as read, bounded memory), the readers' open(source) entry, and the
rule that nothing but paramkit.sources opens a weight, index or config file."""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import paramkit
from paramkit.formats import open_table
from paramkit.formats.resolver import _readers, read_source
from paramkit.formats.safetensors import read_columns
from paramkit.formats.stored import read_zip_members
from paramkit.sources import LocalFile, ZipMember, open_source

RNG = np.random.default_rng(7)
PAYLOAD = RNG.integers(0, 256, 300_000, dtype=np.uint8).tobytes() + bytes(200_000)


def _zip(path, members: dict[str, bytes], compression) -> str:
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return str(path)


@pytest.fixture(scope="module", params=["stored", "deflate"])
def archive(request, tmp_path_factory):
    comp = zipfile.ZIP_STORED if request.param == "stored" else zipfile.ZIP_DEFLATED
    p = _zip(tmp_path_factory.mktemp("zip") / "a.zip", {"small": b"hello", "big": PAYLOAD, "empty": b""}, comp)
    return p, request.param


def _member(path, key):
    src = open_source(path)
    return src, ZipMember(src, read_zip_members(src)[key])


@settings(max_examples=60, deadline=None)
@given(ranges=st.lists(st.tuples(st.integers(0, len(PAYLOAD)), st.integers(0, 70_000)), min_size=1, max_size=8))
def test_member_read_at_equals_zipfile(archive, ranges):
    """Any sequence of reads (forward, backward, repeated, empty) gives the member's bytes as zipfile reads them."""
    path, _ = archive
    src, m = _member(path, "big")
    with src, m:
        assert m.size == len(PAYLOAD)
        for a, n in ranges:
            n = min(n, len(PAYLOAD) - a)
            assert m.read_at(a, n) == PAYLOAD[a:a + n]


def test_member_reads_past_the_end_and_negative(archive):
    path, _ = archive
    src, m = _member(path, "small")
    with src:
        assert m.read_at(0, 5) == b"hello" and m.read_at(5, 0) == b""
        with pytest.raises(OSError) as e:
            m.read_at(3, 3)
        assert e.value.errno == errno.EIO
        with pytest.raises(ValueError):
            m.read_at(-1, 2)
        empty = ZipMember(src, read_zip_members(src)["empty"])
        assert empty.size == 0 and empty.read_at(0, 0) == b"" and empty.read_all() == b""


def test_stored_member_is_a_range_of_its_archive_and_deflated_has_no_path(archive):
    path, kind = archive
    src, m = _member(path, "big")
    with src:
        if kind == "stored":
            assert m.path == os.path.abspath(path)
            with open(path, "rb") as f:
                f.seek(m.file_offset)
                assert f.read(m.size) == PAYLOAD
        else:
            assert m.path is None and m.file_offset is None
        assert m.read_all() == PAYLOAD
        assert m.name == f"{os.path.abspath(path)}::big"


def test_member_identity_follows_the_archive(tmp_path):
    p = _zip(tmp_path / "a.zip", {"x": b"1" * 100, "y": b"2" * 100}, zipfile.ZIP_STORED)
    src = open_source(p)
    members = read_zip_members(src)
    ix, iy = ZipMember(src, members["x"]).identity, ZipMember(src, members["y"]).identity
    assert ix != iy and ix[:3] == src.identity
    src.close()
    st_before = os.stat(p)
    _zip(tmp_path / "a.zip", {"x": b"3" * 100, "y": b"2" * 100}, zipfile.ZIP_STORED)
    os.utime(p, ns=(st_before.st_atime_ns, st_before.st_mtime_ns + 10**9))
    with open_source(p) as src2:
        assert ZipMember(src2, read_zip_members(src2)["x"]).identity != ix


def test_deflated_member_is_read_with_bounded_memory(tmp_path):
    """A 64 MiB deflated member read front to back in 1 MiB reads never holds more than a few MiB."""
    big = (np.arange(64 << 18, dtype=np.uint32) % 977).tobytes()
    p = _zip(tmp_path / "big.zip", {"m": big}, zipfile.ZIP_DEFLATED)
    src, m = _member(p, "m")
    tracemalloc.start()
    try:
        step = 1 << 20
        for a in range(0, m.size, step):
            assert m.read_at(a, step) == big[a:a + step]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        src.close()
    assert peak < 8 << 20, peak


def test_corrupt_deflated_member_is_blob_corrupt(tmp_path):
    p = _zip(tmp_path / "c.zip", {"m": PAYLOAD}, zipfile.ZIP_DEFLATED)
    raw = bytearray(open(p, "rb").read())
    with open_source(p) as src:
        blob = read_zip_members(src)["m"]
    raw[blob.offset + blob.compressed_size // 2] ^= 0xFF
    q = tmp_path / "c2.zip"
    q.write_bytes(bytes(raw))
    with open_source(q) as src:
        m = ZipMember(src, read_zip_members(src)["m"])
        with pytest.raises((paramkit.FormatError, OSError)) as e:
            m.read_at(0, m.size)
        if isinstance(e.value, paramkit.FormatError):
            assert e.value.code == "blob_corrupt"


def _safetensors_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    header, data, pos = {}, b"", 0
    for k, a in arrays.items():
        b = a.tobytes()
        header[k] = {"dtype": {np.float32: "F32", np.int16: "I16"}[a.dtype.type], "shape": list(a.shape),
                     "data_offsets": [pos, pos + len(b)]}
        data += b
        pos += len(b)
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + data


def test_safetensors_reader_takes_a_stored_member_source(tmp_path):
    """read_columns(source): a safetensors file inside a stored zip gives offsets into the archive file."""
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([-3, 7], dtype=np.int16)}
    p = _zip(tmp_path / "s.zip", {"pad": b"x" * 1000, "m.safetensors": _safetensors_bytes(arrays)},
             zipfile.ZIP_STORED)
    src, m = _member(p, "m.safetensors")
    with src:
        cols, _, _ = read_columns(m)
    assert cols.file_names == (os.path.abspath(p),)
    raw = open(p, "rb").read()
    for i, name in enumerate(cols.names):
        off, n = int(cols.offset[i]), int(cols.nbytes[i])
        assert raw[off:off + n] == arrays[name].tobytes()


def test_every_reader_opens_a_source(tmp_path):
    """The registry's readers take an open Source (not a path); read_source picks the reader by content."""
    import torch
    st_path = tmp_path / "m.safetensors"
    st_path.write_bytes(_safetensors_bytes({"w": np.ones((2, 2), np.float32)}))
    pt_path = tmp_path / "m.bin"
    torch.save({"w": torch.ones(2, 2)}, pt_path)
    np_path = tmp_path / "m.npz"
    np.savez(np_path, w=np.ones((2, 2), np.float32))
    import gguf
    gg_path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(gg_path), "llama")
    w.add_tensor("w", np.ones((2, 2), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    formats = {r.format for r in _readers()}
    assert formats == {"safetensors", "pytorch", "numpy", "gguf"}
    for path, fmt in ((st_path, "safetensors"), (pt_path, "pytorch"), (np_path, "numpy"), (gg_path, "gguf")):
        with LocalFile(path) as src:
            ft = read_source(src)
        assert ft.format == fmt and ft.columns.names == ["w"]
        assert ft.columns.file_names == (str(path),)


def _local_weights(tmp_path):
    import torch
    d = tmp_path / "model"
    d.mkdir()
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    (d / "model-00001-of-00002.safetensors").write_bytes(_safetensors_bytes({"a": a}))
    (d / "model-00002-of-00002.safetensors").write_bytes(_safetensors_bytes({"b": a + 1}))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (d / "config.json").write_text(json.dumps({"model_type": "x"}))
    t = torch.arange(12.0).reshape(3, 4)
    torch.save({"w": t, "wt": t.t()}, tmp_path / "views.bin")
    np.savez_compressed(tmp_path / "c.npz", x=a)
    return [d, tmp_path / "views.bin", tmp_path / "c.npz"]


def test_only_sources_opens_weight_files(tmp_path, monkeypatch):
    """Every read of a weight, index or config file goes through paramkit.sources: builtins.open and os.open
    called for reading from any other paramkit module fail the test (the numpy backend's data pass included)."""
    paths = _local_weights(tmp_path)
    sources_file = os.path.abspath(sys.modules["paramkit.sources"].__file__)
    pkg_dir = os.path.dirname(sources_file)
    offenders = []

    def caller_file() -> str:
        f = sys._getframe(2)
        return os.path.abspath(f.f_code.co_filename)

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *a, **k):
        where = caller_file()
        if where.startswith(pkg_dir) and where != sources_file and "r" in mode and "+" not in mode:
            offenders.append((where, file))
        return real_open(file, mode, *a, **k)

    def guarded_os_open(path, flags, *a, **k):
        where = caller_file()
        if where.startswith(pkg_dir) and where != sources_file and not flags & (os.O_WRONLY | os.O_RDWR):
            offenders.append((where, path))
        return real_os_open(path, flags, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    for p in paths:
        open_table(p)
        paramkit.scan(p, backend="numpy")
    assert offenders == []
