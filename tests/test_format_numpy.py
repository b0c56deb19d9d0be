"""Tests of the NumPy .npy/.npz reader (paramkit.formats.numpy_files): files written by np.save / np.savez /
np.savez_compressed, read back through the descriptors and compared with np.load; object arrays that must never
be unpickled; malformed headers and sizes; fuzzing."""
from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paramkit.errors import FormatError
from paramkit.formats.numpy_files import parse_numpy
from paramkit.formats.stored import ParsedArchive, iter_blob
from test_format_torch import (BytesSource, LocalFileSource, _mutate, _Payload, edits_strategy, parse_or_none,
                               write_zip)

# numpy type code per paramkit dtype name, written out here independently of paramkit.dtypes
NUMPY_CODE = {"F64": "f8", "F32": "f4", "F16": "f2", "I8": "i1", "U8": "u1", "I16": "i2", "U16": "u2",
              "I32": "i4", "U32": "u4", "I64": "i8", "U64": "u8", "BOOL": "b1", "C64": "c8"}


def parse(path) -> ParsedArchive:
    return parse_numpy(LocalFileSource(path))


def read_array(path, parsed: ParsedArchive, name: str) -> np.ndarray:
    """The array read through its descriptor: the blob's bytes (straight from the file when stored), then
    numpy as_strided with the descriptor's strides."""
    t = next(t for t in parsed.tensors if t.name == name)
    blob = parsed.blobs[t.storage]
    if blob.compression == "stored":
        with open(path, "rb") as f:
            f.seek(blob.offset)
            data = f.read(blob.nbytes)
        assert len(data) == blob.nbytes
    else:
        data = b"".join(iter_blob(LocalFileSource(path), blob, chunk=1000))
    dtype = np.dtype(t.byteorder + NUMPY_CODE[t.dtype])
    raw = np.frombuffer(data, dtype=dtype)
    assert raw.size == math.prod(t.shape)
    view = np.lib.stride_tricks.as_strided(raw[t.element_offset:], shape=t.shape,
                                           strides=[s * dtype.itemsize for s in t.strides], writeable=False)
    return np.array(view)


def assert_same(actual: np.ndarray, expected: np.ndarray):
    """Same shape, same element type and the same bits, element by element (NaN payloads included)."""
    native = expected.dtype.newbyteorder("=")
    assert actual.shape == expected.shape and actual.dtype.newbyteorder("=") == native
    assert np.ascontiguousarray(actual, dtype=native).tobytes() == np.ascontiguousarray(expected, dtype=native).tobytes()


ARRAYS = {
    "F64": np.linspace(-3, 3, 12).reshape(3, 4),
    "F32": np.array([[1.5, -0.0, np.nan], [np.inf, -np.inf, 1e-40]], dtype=np.float32),
    "F16": np.arange(10, dtype=np.float16) / 7,
    "I8": np.arange(-5, 5, dtype=np.int8), "U8": np.arange(250, 256, dtype=np.uint8),
    "I16": np.array([-32768, 32767], dtype=np.int16), "U16": np.array([0, 65535], dtype=np.uint16),
    "I32": np.arange(6, dtype=np.int32).reshape(2, 3), "U32": np.array([2 ** 32 - 1], dtype=np.uint32),
    "I64": np.array([-2 ** 63, 2 ** 63 - 1, 0]), "U64": np.array([2 ** 64 - 1], dtype=np.uint64),
    "BOOL": np.array([True, False, True]), "C64": np.array([1 + 2j, -3j], dtype=np.complex64),
}


@pytest.mark.parametrize("dtype_name", list(ARRAYS))
def test_npy_every_dtype(tmp_path, dtype_name):
    path = tmp_path / "a.npy"
    np.save(path, ARRAYS[dtype_name])
    parsed = parse(path)
    assert parsed.format == "numpy" and parsed.metadata == {}
    (t,) = parsed.tensors
    assert (t.name, t.dtype, t.storage, t.element_offset, t.role_hint) == ("tensor", dtype_name, "", 0, None)
    assert t.shape == ARRAYS[dtype_name].shape
    blob = parsed.blobs[""]
    assert blob.compression == "stored" and blob.offset + blob.nbytes == os.path.getsize(path)
    assert_same(read_array(path, parsed, "tensor"), np.load(path))


def test_npy_scalar_empty_fortran_big_endian(tmp_path):
    cases = {
        "scalar": np.float32(3.25), "empty": np.zeros((0, 3)), "empty_fortran": np.asfortranarray(np.zeros((2, 0, 3))),
        "fortran": np.asfortranarray(np.arange(24, dtype=np.int64).reshape(2, 3, 4)),
        "big_f4": np.arange(6, dtype=">f4").reshape(2, 3), "big_i8": np.array([1, -2, 3 << 40], dtype=">i8"),
        "big_c8": np.array([1 + 1j], dtype=">c8"),
        "big_fortran": np.asfortranarray(np.arange(6, dtype=">u2").reshape(3, 2)),
    }
    for name, arr in cases.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, arr)
        parsed = parse(path)
        (t,) = parsed.tensors
        assert t.byteorder == (">" if arr.dtype.byteorder == ">" else "<"), name
        if "fortran" in name:
            assert t.strides == tuple(s // arr.itemsize for s in np.asfortranarray(arr).strides) or 0 in arr.shape
        assert_same(read_array(path, parsed, "tensor"), np.load(path))
    fortran = parse(tmp_path / "fortran.npy").tensors[0]
    assert fortran.shape == (2, 3, 4) and fortran.strides == (1, 2, 6)
    assert parse(tmp_path / "scalar.npy").tensors[0].shape == ()


@pytest.mark.parametrize("arr", [
    np.zeros(3, dtype=ml_dtypes.bfloat16), np.zeros(3, dtype=ml_dtypes.float8_e4m3fn), np.zeros(2, np.complex128),
    np.array(["ab", "c"]), np.array([b"x"]), np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]),
    np.zeros(2, dtype="datetime64[s]"), np.zeros(1, dtype=np.float128)
    if hasattr(np, "float128") else np.zeros(1, dtype="V7"),
], ids=lambda a: str(a.dtype))
def test_npy_dtypes_without_a_paramkit_name(tmp_path, arr):
    path = tmp_path / "u.npy"
    np.save(path, arr)
    with pytest.raises(FormatError) as e:
        parse(path)
    assert e.value.code == "dtype_unsupported" and e.value.tensor == "tensor"


def test_object_arrays_are_unsafe_and_never_unpickled(tmp_path):
    marker = str(tmp_path / "pwned")
    arr = np.array([_Payload(os.system, f"touch {marker}"), 1], dtype=object)
    path = tmp_path / "obj.npy"
    np.save(path, arr)
    npz = tmp_path / "obj.npz"
    np.savez(npz, fine=np.ones(2), evil=arr)
    # control: np.load with allow_pickle=True does run the payload (in a child process)
    code = "import numpy, sys; numpy.load(sys.argv[1], allow_pickle=True)"
    subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=60)
    assert os.path.exists(marker), "the control payload should create the file"
    os.remove(marker)
    for p in (path, npz):
        with pytest.raises(FormatError) as e:
            parse(p)
        assert e.value.code == "unsafe_pickle" and "object" in str(e.value)
    assert not os.path.exists(marker)
    with pytest.raises(FormatError) as e:
        parse(npz)
    assert e.value.tensor == "evil"


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_members(tmp_path, compressed):
    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((30, 20)).astype(np.float32), "b": np.arange(5, dtype=np.int64),
              "layer/norm": np.asfortranarray(rng.standard_normal((4, 3))), "s": np.float16(2.5),
              "e": np.zeros((0, 4), dtype=np.int8), "big": np.arange(8, dtype=">f8")}
    path = tmp_path / "m.npz"
    (np.savez_compressed if compressed else np.savez)(path, np.ones(3, dtype=np.uint8), **arrays)
    parsed = parse(path)
    loaded = np.load(path)
    assert sorted(t.name for t in parsed.tensors) == sorted(loaded.files)
    assert {t.storage for t in parsed.tensors} == {f"{n}.npy" for n in loaded.files}
    for t in parsed.tensors:
        blob = parsed.blobs[t.storage]
        assert blob.compression == ("deflate" if compressed else "stored")
        assert blob.nbytes == loaded[t.name].nbytes
        if compressed:
            assert blob.skip > 0 and blob.crc32 is not None
        assert_same(read_array(path, parsed, t.name), loaded[t.name])


def test_npz_deflated_blob_checks_crc(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, a=np.arange(1000, dtype=np.float32))
    raw = bytearray(path.read_bytes())
    parsed = parse(path)
    blob = parsed.blobs["a.npy"]
    raw[blob.offset + blob.compressed_size // 2] ^= 0x10
    with pytest.raises(FormatError) as e:
        list(iter_blob(BytesSource(bytes(raw)), blob))
    assert e.value.code == "blob_corrupt"


def test_empty_npz(tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path)
    assert parse(path).tensors == []


def _npy_bytes(arr, version=None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version)
    return buf.getvalue()


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_header_versions(version):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    parsed = parse_numpy(BytesSource(_npy_bytes(arr, version)))
    (t,) = parsed.tensors
    assert (t.dtype, t.shape, t.strides) == ("F32", (2, 3), (3, 1))


def test_python2_header_with_long_suffix():
    header = b"{'descr': '<i4', 'fortran_order': False, 'shape': (3L,), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + np.arange(3, dtype="<i4").tobytes()
    with pytest.warns(UserWarning):
        assert np.load(io.BytesIO(data)).tolist() == [0, 1, 2]
    assert parse_numpy(BytesSource(data)).tensors[0].shape == (3,)


def _with_header(text: str, data: bytes = b"", version=b"\x01\x00") -> bytes:
    header = text.encode("latin1") + b"\n"
    return b"\x93NUMPY" + version + len(header).to_bytes(2, "little") + header + data


@pytest.mark.parametrize("raw,code", [
    (_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", bytes(8)), None),
    (_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", bytes(7)), "npy_size_mismatch"),
    (_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", bytes(9)), "npy_size_mismatch"),
    (_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", b""), "npy_header_invalid"),
    (_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (True,), }", bytes(4)), "npy_header_invalid"),
    (_with_header("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", bytes(8)), "npy_header_invalid"),
    (_with_header("{'descr': '<f4', 'shape': (2,), }", bytes(8)), "npy_header_invalid"),
    (_with_header("{'descr': '<q9', 'fortran_order': False, 'shape': (2,), }", bytes(8)), "npy_header_invalid"),
    (_with_header("[1, 2, 3]", bytes(8)), "npy_header_invalid"),
    (_with_header("{'descr': __import__('os').system('true')}", bytes(8)), "npy_header_invalid"),
    (_with_header("(" * 2000 + ")" * 2000), "npy_header_invalid"),
    (_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }" + " " * 20000, bytes(8)),
     "npy_header_invalid"),
    (_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", bytes(8), b"\x04\x00"),
     "npy_header_invalid"),
    (_with_header("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", bytes(16)), "unsafe_pickle"),
    (b"\x93NUMPY\x01", "npy_header_invalid"),
    (b"\x93NUMPY\x01\x00\xff\xff{", "npy_header_invalid"),
    (b"\x93NUMPY\x03\x00\x05\x00\x00\x00{'\xc3\xa9'}", "npy_header_invalid"),
])
def test_malformed_npy(raw, code):
    if code is None:
        assert parse_numpy(BytesSource(raw)).tensors[0].shape == (2,)
        return
    with pytest.raises(FormatError) as e:
        parse_numpy(BytesSource(raw))
    assert e.value.code == code, e.value


def test_npz_member_errors(tmp_path):
    good = _npy_bytes(np.arange(4, dtype=np.int32))
    cases = {
        "npz_member_invalid": {"a.npy": good, "notes.txt": b"hello"},
        "npy_size_mismatch": {"a.npy": good[:-1]},
        "npy_header_invalid": {"a.npy": b"not an npy"},
    }
    for code, members in cases.items():
        for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            path = write_zip(tmp_path / f"{code}.npz", members, compression)
            with pytest.raises(FormatError) as e:
                parse(path)
            assert e.value.code == code, (code, compression)
    import torch
    pt = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, pt)
    with pytest.raises(FormatError) as e:
        parse(pt)
    assert e.value.code == "npz_member_invalid" and "PyTorch" in str(e.value)


def test_unknown_and_unsupported_files():
    with pytest.raises(FormatError) as e:
        parse_numpy(BytesSource(b"just some text", "x.npy"))
    assert e.value.code == "unknown_format"
    with pytest.raises(FormatError) as e:
        parse_numpy(BytesSource(b"\x89HDF\r\n\x1a\n" + bytes(40), "m.h5"))
    assert e.value.code == "unsupported_format" and "HDF5" in str(e.value)


# --- fuzzing -----------------------------------------------------------------------------------------------
SMALL_NPY = _npy_bytes(np.asfortranarray(np.arange(12, dtype=">f4").reshape(3, 4)))


def _npz_bytes(compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, a=np.arange(6, dtype=np.int16), b=np.float64(1.5))
    return buf.getvalue()


SMALL_NPZ = {False: _npz_bytes(False), True: _npz_bytes(True)}


def _check_parsed(parsed: ParsedArchive, data: bytes) -> None:
    """Whatever parses describes only bytes inside the file, and exactly the bytes of each tensor."""
    for t in parsed.tensors:
        blob = parsed.blobs[t.storage]
        stored = blob.compressed_size if blob.compression == "deflate" else blob.nbytes
        assert 0 <= blob.offset and blob.offset + stored <= len(data)
        assert blob.nbytes == math.prod(t.shape) * np.dtype(NUMPY_CODE[t.dtype]).itemsize
        if blob.compression == "deflate":
            try:
                assert len(b"".join(iter_blob(BytesSource(data), blob, chunk=64))) == blob.nbytes
            except FormatError as e:
                assert e.code == "blob_corrupt"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=edits_strategy, cut=st.integers(0, 30) | st.just(0))
def test_fuzz_npy(edits, cut):
    data = _mutate(SMALL_NPY, edits, cut)
    parsed = parse_or_none(parse_numpy, data)
    if parsed is not None:
        _check_parsed(parsed, data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(compressed=st.booleans(), edits=edits_strategy, cut=st.integers(0, 30) | st.just(0))
def test_fuzz_npz(compressed, edits, cut):
    data = _mutate(SMALL_NPZ[compressed], edits, cut)
    parsed = parse_or_none(parse_numpy, data)
    if parsed is not None:
        _check_parsed(parsed, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_npy_header_text(tail):
    parsed = parse_or_none(parse_numpy, b"\x93NUMPY\x01\x00" + len(tail).to_bytes(2, "little") + tail)
    assert parsed is None or len(parsed.tensors) == 1
