"""Reader for NumPy .npy files and .npz archives (np.savez: stored members; np.savez_compressed: deflated):
headers are parsed by numpy.lib.format's own header reader, object arrays are refused (allow_pickle never),
Fortran order and big-endian data are described by strides and byte order, and every array's data size is
checked against its header. Only headers are read (for deflated members, only their first bytes inflated)."""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import replace

import numpy as np
from numpy.lib import format as npy_format

from ..dtypes import from_numpy
from ..errors import FormatError
from .known_magics import HEAD_BYTES, identify_unsupported, unsupported_format_error
from ..sources import Source, ZipMember
from .stored import LONE_TENSOR_NAME, ParsedArchive, StoredBlob, StoredTensor, c_strides, read_zip_members

__all__ = ["ERROR_CODES", "NPY_MAGIC", "parse_numpy"]

ERROR_CODES: dict[str, str] = {
    "npy_header_invalid": "not a valid .npy header: wrong magic, an unknown format version, a header that "
                          "numpy.lib.format cannot parse or longer than its 10,000-character safety limit, "
                          "or a shape that is not a tuple of non-negative integers",
    "npy_size_mismatch": "an array's data size differs from shape x itemsize in its header (a truncated file "
                         "or member, or bytes after the array)",
    "npz_member_invalid": "an .npz archive holds a member that is not an .npy file (its name does not end "
                          "in .npy)",
}

NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER_CHARS = 10_000                  # numpy.lib.format's default max_header_size
_HEAD_WINDOW = 12 + 4 * _MAX_HEADER_CHARS   # magic, version, a 4-byte length, and UTF-8 of the longest header
_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
_COMPLEX64 = np.dtype(np.complex64)


def _error(code: str, message: str, source: Source, tensor: str | None = None) -> FormatError:
    return FormatError(code, message, path=source.name, tensor=tensor)


def _read_header(head: bytes, source: Source, name: str) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """(dtype, shape, fortran_order, header length in bytes) of the .npy that `head` starts."""
    if not head.startswith(NPY_MAGIC) or len(head) < 10:
        raise _error("npy_header_invalid", f"does not start with the .npy magic {NPY_MAGIC!r} and a version "
                     f"(found {head[:8]!r})", source, name)
    version = (head[6], head[7])
    if version == (3, 0):
        # 3.0 differs from 2.0 only in that the header text is UTF-8 (for non-Latin-1 field names of
        # structured dtypes, which paramkit does not read): an ASCII 3.0 header reads as 2.0.
        length = int.from_bytes(head[8:12], "little")
        if not head[12:12 + length].isascii():
            raise _error("npy_header_invalid", "format 3.0 header with non-ASCII text (field names of a "
                         "structured dtype, which paramkit does not read)", source, name)
        head = head[:6] + b"\x02\x00" + head[8:]
        version = (2, 0)
    reader = _HEADER_READERS.get(version)
    if reader is None:
        raise _error("npy_header_invalid", f".npy format version {version[0]}.{version[1]} is not 1.0, 2.0 or "
                     "3.0", source, name)
    fp = io.BytesIO(head)
    fp.seek(8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # numpy's notice about headers written by Python 2
            shape, fortran_order, dtype = reader(fp, max_header_size=_MAX_HEADER_CHARS)
    except Exception as e:  # numpy reports bad headers as ValueError; literal_eval/tokenize may raise others
        raise _error("npy_header_invalid", f"numpy.lib.format cannot read the header: {str(e)[:300]}",
                     source, name) from None
    if not all(type(d) is int and d >= 0 for d in shape):
        raise _error("npy_header_invalid", f"shape {shape!r} is not a tuple of non-negative integers", source,
                     name)
    return dtype, tuple(shape), fortran_order, fp.tell()


def _dtype_name(dtype: np.dtype, source: Source, name: str) -> str:
    if dtype.hasobject:
        raise _error("unsafe_pickle", f"object array (dtype {dtype}): its data is a pickle, which np.load only "
                     "runs with allow_pickle=True and paramkit never runs", source, name)
    native = dtype.newbyteorder("=")
    if native == _COMPLEX64:
        return "C64"
    if dtype.fields is None and dtype.subdtype is None:
        try:
            return from_numpy(native).name
        except TypeError:
            pass
    raise _error("dtype_unsupported", f"NumPy dtype {dtype.str!r} ({dtype}) has no paramkit dtype (np.save "
                 "writes ml_dtypes bfloat16/float8 as void '|V2'/'|V1': store them as safetensors instead)",
                 source, name)


def _array(head: bytes, data_bytes: int, source: Source, name: str,
           storage: str) -> tuple[StoredTensor, int]:
    """The tensor an .npy header describes, and the header's length; checks the data size."""
    dtype, shape, fortran_order, header_len = _read_header(head, source, name)
    dtype_name = _dtype_name(dtype, source, name)
    expected = math.prod(shape) * dtype.itemsize
    if data_bytes - header_len != expected:
        raise _error("npy_size_mismatch", f"shape {shape} of {dtype.str} needs {expected:,} data bytes after the "
                     f"{header_len}-byte header; there are {data_bytes - header_len:,}", source, name)
    if fortran_order:
        strides = tuple(reversed(c_strides(tuple(reversed(shape)))))
    else:
        strides = c_strides(shape)
    tensor = StoredTensor(name=name, dtype=dtype_name, shape=shape, strides=strides, storage=storage,
                          element_offset=0, byteorder=">" if dtype.str[0] == ">" else "<", role_hint=None)
    return tensor, header_len


def _parse_npy(source: Source, head: bytes) -> ParsedArchive:
    tensor, header_len = _array(head, source.size, source, LONE_TENSOR_NAME, "")
    nbytes = source.size - header_len
    blob = StoredBlob(key="", offset=header_len, nbytes=nbytes, compressed_size=nbytes, compression="stored")
    return ParsedArchive(format="numpy", tensors=[tensor], blobs={"": blob})


def _member_head(member: Source, nbytes: int, exact: bool) -> bytes:
    """The first bytes of an .npz member, enough for its .npy header: _HEAD_WINDOW of them, or, for a source that
    reads ahead itself (remote: read_size), the header's own length from its preamble (a few hundred bytes the
    zip prefetch already holds, not 40 KB per member); the same bytes up to the header's end either way."""
    if exact:
        pre = member.read_at(0, min(12, nbytes))
        if len(pre) == 12 and pre.startswith(NPY_MAGIC) and pre[6] in (1, 2, 3):
            n = 10 + int.from_bytes(pre[8:10], "little") if pre[6] == 1 else 12 + int.from_bytes(pre[8:12], "little")
            return member.read_at(0, min(n, _HEAD_WINDOW, nbytes))
    return member.read_at(0, min(_HEAD_WINDOW, nbytes))


def _parse_npz(source: Source) -> ParsedArchive:
    tensors = []
    blobs: dict[str, StoredBlob] = {}
    for member, blob in read_zip_members(source).items():
        if not member.endswith(".npy") or member.endswith("/"):
            hint = " (a PyTorch checkpoint?)" if member.endswith("/data.pkl") else ""
            raise _error("npz_member_invalid", f"member {member!r} is not an .npy file{hint}; np.savez writes "
                         "only <name>.npy members", source)
        name = member[:-len(".npy")]
        head = _member_head(ZipMember(source, blob), blob.nbytes, getattr(source, "read_size", None) is not None)
        tensor, header_len = _array(head, blob.nbytes, source, name, member)
        nbytes = blob.nbytes - header_len
        if blob.compression == "stored":
            blobs[member] = StoredBlob(key=member, offset=blob.offset + header_len, nbytes=nbytes,
                                       compressed_size=nbytes, compression="stored")
        else:
            blobs[member] = replace(blob, nbytes=nbytes, skip=header_len)
        tensors.append(tensor)
    return ParsedArchive(format="numpy", tensors=tensors, blobs=blobs)


def parse_numpy(source: Source) -> ParsedArchive:
    """Parse an .npy file or an .npz archive into tensor descriptors and the blobs holding their data.

    .npy: one tensor named LONE_TENSOR_NAME, storage "" (a stored blob after the header). .npz: one tensor
    per member, named as np.load names it (the member name without .npy), storage = the member name; a
    deflated member's blob skips the member's .npy header (StoredBlob.skip). Raises FormatError, OSError.
    """
    head = source.read_at(0, min(source.size, max(_HEAD_WINDOW, HEAD_BYTES)))
    if head.startswith(NPY_MAGIC):
        return _parse_npy(source, head)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _parse_npz(source)
    fmt = identify_unsupported(head, source.name)
    if fmt is not None:
        raise unsupported_format_error(fmt, source.name)
    raise _error("unknown_format", f"not a NumPy file: it starts with {head[:8]!r}, neither the .npy magic "
                 f"{NPY_MAGIC!r} nor a zip archive's 'PK\\x03\\x04' (.npz)", source)
