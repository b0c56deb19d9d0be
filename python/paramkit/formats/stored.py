"""What container formats (PyTorch zip checkpoints, NumPy .npy/.npz) store, as plain records: tensors as
(storage, dtype, offset, shape, strides) descriptors and storages as byte ranges or deflated zip members;
plus the strict zip member table and the bounded-memory blob reader that both of those readers share."""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import FormatError
from ..sources import Source

__all__ = ["ERROR_CODES", "LONE_TENSOR_NAME", "ParsedArchive", "Source", "StoredBlob", "StoredTensor",
           "c_strides", "is_contiguous", "iter_blob", "read_blob", "read_zip_members"]

# Codes raised here or shared by several container readers (each with a one-line meaning).
ERROR_CODES: dict[str, str] = {
    "zip_invalid": "the zip structure is malformed: unreadable central directory, a member outside the file or "
                   "overlapping another, a local header that disagrees with the central directory, a name "
                   "given twice, encryption, or a compression method other than stored/deflate",
    "blob_corrupt": "a zip member's data does not match its central-directory entry: it inflates to another "
                    "size, fails its CRC-32, or is not a valid deflate stream",
    "unsafe_pickle": "the file asks to build or call something outside the allowlist (a pickle global such "
                     "as os.system, an object-building opcode, a non-plain value) or holds a NumPy object "
                     "array; nothing from the file is ever imported, called or unpickled",
    "dtype_unsupported": "a tensor's element type has no paramkit dtype (complex128, quantized or packed "
                         "sub-byte torch types, NumPy strings, structured or void dtypes such as ml_dtypes "
                         "bfloat16 saved by np.save)",
    "tensor_name_duplicate": "two tensors of one file get the same (flattened) name",
}

# The name given to a tensor that the file stores without one (a .npy file, torch.save of a lone tensor).
LONE_TENSOR_NAME = "tensor"

# Deflate cannot expand data by more than 1032:1 (RFC 1951 worst case, plus a little for tiny streams).
_MAX_DEFLATE_RATIO = 1032
_MAX_DEFLATE_SLACK = 1024
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")   # signature .. extra length, 30 bytes
_LOCAL_SIGNATURE = b"PK\x03\x04"
_MIN_MEMBER_BYTES = 30 + 46                  # a local header plus a central-directory entry, names empty
_PREFETCH_SLACK = 512    # remote prefetch: bytes after a local header and its name (extra field, an .npy header)
_DEFAULT_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as the file stores it."""
    name: str                  # flattened state-dict key, e.g. "model.layers.0.weight"
    dtype: str                 # paramkit dtype name, a key of paramkit.dtypes.DTYPES
    shape: tuple[int, ...]
    strides: tuple[int, ...]   # in elements
    storage: str               # key into ParsedArchive.blobs
    element_offset: int        # offset of element [0, ..., 0] into the storage, in elements
    byteorder: str             # "<" or ">"
    role_hint: str | None      # "optimizer" for optimizer state, else None


@dataclass(frozen=True)
class StoredBlob:
    """One storage: a byte range of the file, or (a tail of) a deflated zip member.

    Stored blobs are the `nbytes` bytes at `offset`, to be read directly. Deflated blobs start `offset` at
    the member's compressed data (`compressed_size` bytes); inflated, the member is `skip` bytes (an .npy
    header inside an .npz member) followed by the storage's `nbytes` bytes: read them with iter_blob.
    `crc32` is the zip member's CRC when the blob's bytes (after `skip` bytes) are a whole member, else None.
    """
    key: str
    offset: int
    nbytes: int
    compressed_size: int
    compression: str           # "stored" or "deflate"
    crc32: int | None = None
    skip: int = 0


@dataclass
class ParsedArchive:
    format: str                                   # "pytorch" or "numpy"
    tensors: list[StoredTensor]
    blobs: dict[str, StoredBlob]                  # storage key -> blob, the storages tensors refer to
    metadata: dict[str, str] = field(default_factory=dict)   # non-tensor entries, JSON text


def c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major (C-contiguous) strides in elements."""
    strides = []
    step = 1
    for d in reversed(shape):
        strides.append(step)
        step *= max(d, 1)
    return tuple(reversed(strides))


def is_contiguous(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Whether a tensor's elements are row-major and gapless (then they are the numel x itemsize bytes from
    its element offset): strides of dimensions of size 1 do not matter, and an empty tensor is contiguous."""
    if 0 in shape:
        return True
    step = 1
    for d, s in zip(reversed(shape), reversed(strides)):
        if d != 1:
            if s != step:
                return False
            step *= d
    return True


# --- zip member table ---------------------------------------------------------------------------------
class _BadSeek(OSError):
    """A seek the zip parser asked for that no file allows (before the start): a malformed archive."""


class _SourceFile(io.RawIOBase):
    """A read-only file object over a Source, for zipfile's central-directory parser: reads are clamped
    to the source's size, so nothing is ever read outside the file."""

    def __init__(self, source: Source):
        self._source = source
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._source.size}[whence]
        if base + offset < 0:
            raise _BadSeek(22, "seek before the start of the file")
        self._pos = base + offset
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self._source.size if n is None or n < 0 else min(self._source.size, self._pos + n)
        if end <= self._pos:
            return b""
        data = self._source.read_at(self._pos, end - self._pos)
        self._pos = end
        return data

    def readinto(self, b) -> int:  # pragma: no cover - zipfile uses read()
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def _zip_error(source: Source, message: str) -> FormatError:
    return FormatError("zip_invalid", message, path=source.name)


def _central_directory(source: Source) -> tuple[list[zipfile.ZipInfo], int]:
    """The central directory's entries (stdlib zipfile) and the directory's offset."""
    try:
        with zipfile.ZipFile(_SourceFile(source)) as zf:
            return zf.infolist(), zf.start_dir
    except _BadSeek as e:
        raise _zip_error(source, f"the central directory points outside the file ({e.strerror})") from None
    except OSError:
        raise
    except Exception as e:  # zipfile reports malformed archives as BadZipFile, ValueError, struct.error, ...
        raise _zip_error(source, f"cannot read the zip central directory: {type(e).__name__}: {e}") from None


def read_zip_members(source: Source) -> dict[str, StoredBlob]:
    """Member name -> StoredBlob (key = the member name) of a zip archive, after checking that every member
    has a matching local header, lies inside the file before the central directory, overlaps no other
    member, is stored or deflated (not encrypted) and has a unique name."""
    infos, start_dir = _central_directory(source)
    if len(infos) * _MIN_MEMBER_BYTES > source.size:
        raise _zip_error(source, f"the central directory lists {len(infos):,} members, more than a "
                         f"{source.size:,}-byte file can hold")
    prefetch = getattr(source, "prefetch", None)   # a remote source: the local headers (and a little after) at once
    if prefetch is not None:
        prefetch([(i.header_offset, _LOCAL_HEADER.size + 4 * len(i.orig_filename) + _PREFETCH_SLACK) for i in infos])
    members: dict[str, StoredBlob] = {}
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        name = info.orig_filename
        if name in members:
            raise _zip_error(source, f"member name {name!r} appears twice in the central directory")
        if "\x00" in name:
            raise _zip_error(source, f"member name {name!r} contains a NUL byte")
        if info.flag_bits & 0x1:
            raise _zip_error(source, f"member {name!r} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            compression = "stored"
            if info.compress_size != info.file_size:
                raise _zip_error(source, f"stored member {name!r} has compressed size {info.compress_size:,} "
                                 f"but size {info.file_size:,}")
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            compression = "deflate"
            if info.file_size > info.compress_size * _MAX_DEFLATE_RATIO + _MAX_DEFLATE_SLACK:
                raise _zip_error(source, f"deflated member {name!r} declares {info.file_size:,} bytes from "
                                 f"{info.compress_size:,} compressed bytes, more than deflate can produce")
        else:
            raise _zip_error(source, f"member {name!r} uses compression method {info.compress_type}; only "
                             "stored (0) and deflate (8) are supported")
        encoded = name.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        head_end = info.header_offset + _LOCAL_HEADER.size + len(encoded)
        if info.header_offset < 0 or head_end > start_dir:
            raise _zip_error(source, f"the local header of member {name!r} (offset {info.header_offset:,}) lies "
                             "outside the file's member area")
        raw = source.read_at(info.header_offset, head_end - info.header_offset)
        sig, _ver, _flags, _method, _t, _d, _crc, _cs, _us, name_len, extra_len = _LOCAL_HEADER.unpack_from(raw)
        if sig != _LOCAL_SIGNATURE:
            raise _zip_error(source, f"no local file header at offset {info.header_offset:,} for member {name!r}")
        if name_len != len(encoded) or raw[_LOCAL_HEADER.size:] != encoded:
            raise _zip_error(source, f"the local header at offset {info.header_offset:,} names "
                             f"{raw[_LOCAL_HEADER.size:]!r}, the central directory {name!r}")
        data_offset = head_end + extra_len
        data_end = data_offset + info.compress_size
        if data_end > start_dir:
            raise _zip_error(source, f"the data of member {name!r} ({info.compress_size:,} bytes at offset "
                             f"{data_offset:,}) runs past the start of the central directory ({start_dir:,})")
        members[name] = StoredBlob(key=name, offset=data_offset, nbytes=info.file_size,
                                   compressed_size=info.compress_size, compression=compression,
                                   crc32=info.CRC)
        spans.append((info.header_offset, data_end, name))
    spans.sort()
    for (_, end, name), (begin, _, after) in zip(spans, spans[1:]):
        if end > begin:
            raise _zip_error(source, f"member {name!r} overlaps member {after!r} (its data ends at {end:,}, "
                             f"the next local header starts at {begin:,})")
    return members


# --- reading blobs ------------------------------------------------------------------------------------
def _corrupt(source: Source, blob: StoredBlob, message: str) -> FormatError:
    return FormatError("blob_corrupt", f"member {blob.key!r}: {message}", path=source.name)


def _raw_chunks(source: Source, blob: StoredBlob, chunk: int) -> Iterator[bytes]:
    """The blob's bytes as stored in the file (compressed for deflated blobs), in chunks."""
    size = blob.compressed_size if blob.compression == "deflate" else blob.nbytes
    if blob.offset < 0 or blob.offset + size > source.size:
        raise _corrupt(source, blob, f"{size:,} bytes at offset {blob.offset:,} lie outside the "
                       f"{source.size:,}-byte file")
    pos = blob.offset
    end = blob.offset + size
    while pos < end:
        n = min(chunk, end - pos)
        yield source.read_at(pos, n)
        pos += n


def _inflated(source: Source, blob: StoredBlob, chunk: int) -> Iterator[bytes]:
    """The member's uncompressed bytes (the skipped prefix included), at most `chunk` bytes per piece, with
    at most one compressed chunk and one output chunk in memory; stops at the declared size."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    declared = blob.skip + blob.nbytes
    total = 0
    try:
        for data in _raw_chunks(source, blob, chunk):
            while data:
                out = inflater.decompress(data, chunk)
                data = inflater.unconsumed_tail
                total += len(out)
                if total > declared:
                    raise _corrupt(source, blob, f"inflates to more than the declared {declared:,} bytes")
                if out:
                    yield out
                if inflater.eof:
                    if data or inflater.unused_data:
                        raise _corrupt(source, blob, "the deflate stream ends before the member's "
                                       f"{blob.compressed_size:,} compressed bytes")
                    break
        while not inflater.eof:           # output still buffered in the inflater
            out = inflater.decompress(b"", chunk)
            total += len(out)
            if total > declared:
                raise _corrupt(source, blob, f"inflates to more than the declared {declared:,} bytes")
            if not out:
                raise _corrupt(source, blob, "the deflate stream is truncated")
            yield out
    except zlib.error as e:
        raise _corrupt(source, blob, f"invalid deflate data ({e})") from None


def iter_blob(source: Source, blob: StoredBlob, chunk: int = _DEFAULT_CHUNK) -> Iterator[bytes]:
    """Yield the blob's `nbytes` bytes in pieces of at most `chunk` bytes, inflating deflated members with
    bounded memory. Raises FormatError blob_corrupt (during iteration) when the member inflates to another
    size or fails its CRC-32; OSError for I/O errors."""
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    pieces = _raw_chunks(source, blob, chunk) if blob.compression == "stored" else _inflated(source, blob, chunk)
    crc = 0
    total = 0
    to_skip = blob.skip
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
        total += len(piece)
        if to_skip:
            cut = min(to_skip, len(piece))
            to_skip -= cut
            piece = piece[cut:]
            if not piece:
                continue
        yield piece
    if total != blob.skip + blob.nbytes:
        raise _corrupt(source, blob, f"inflates to {total:,} bytes, the zip directory declares "
                       f"{blob.skip + blob.nbytes:,}")
    if blob.crc32 is not None and crc != blob.crc32:
        raise _corrupt(source, blob, f"CRC-32 is {crc:08x}, the zip directory declares {blob.crc32:08x}")


def read_blob(source: Source, blob: StoredBlob) -> bytes:
    """The whole blob in memory (for small members: data.pkl, byteorder); see iter_blob."""
    return b"".join(iter_blob(source, blob))
