"""Plain bytes for the data pass: the engines read tensors as contiguous little-endian row-major byte ranges
of a file, and the native engines (those with Engine.reads_views) also read ViewLayout tensors of stored
(uncompressed) members themselves: strided torch views and big-endian data (cpp/include/paramkit/read_plan.hpp).
Any other ViewLayout tensor (a member of a deflated zip; every view, for the numpy engine, the oracle, and for
export's Python reads) is written once, in that plain form, to a private temporary file for the duration of the
pass; plain tensors are read where they are, untouched. A strided view holds its storage in memory while it is
gathered; contiguous views stream from their member (paramkit.sources.ZipMember) with bounded memory, and the
contiguous views of one deflated member, visited in offset order, share one inflation."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from typing import Iterator, Sequence

import numpy as np

from .dtypes import DTYPES
from .formats.stored import is_contiguous
from .sources import ZipMember, open_source
from .table import TensorInfo

CHUNK_BYTES = 4 << 20           # streaming piece for contiguous views of a member
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _to_little(raw: bytes | np.ndarray, es: int, byteorder: str) -> np.ndarray:
    a = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    if byteorder == "<" or es == 1:
        return a
    return a.view(np.dtype(_UINT[es]).newbyteorder(">")).astype(_UINT[es]).view(np.uint8)


def _contiguous_pieces(member: ZipMember, t: TensorInfo, es: int) -> Iterator[bytes]:
    """The bytes of a row-major view (element_offset.., nbytes) of its storage, read from the member source in
    pieces of CHUNK_BYTES: a deflated member is inflated as it is read, and views visited in offset order
    continue one inflation instead of starting it again (ZipMember.read_at)."""
    start = t.layout.element_offset * es
    for at in range(start, start + t.nbytes, CHUNK_BYTES):
        yield member.read_at(at, min(CHUNK_BYTES, start + t.nbytes - at))


class _Storages:
    """Whole storages in memory, one at a time (tensors are visited storage by storage): a strided view needs
    random access to its storage."""

    def __init__(self) -> None:
        self._key = None
        self._data = b""

    def get(self, member: ZipMember) -> bytes:
        key = member.identity
        if key != self._key:
            self._key, self._data = None, b""   # drop the previous storage before reading the next
            self._data, self._key = member.read_all(), key
        return self._data


def _gathered(storage: bytes, t: TensorInfo, es: int) -> bytes:
    """The elements of a view (any strides) of `storage`, in row-major order."""
    lay = t.layout
    elements = np.frombuffer(storage, dtype=_UINT[es])
    view = np.lib.stride_tricks.as_strided(elements[lay.element_offset:], shape=t.shape,
                                           strides=tuple(s * es for s in lay.strides), writeable=False)
    return np.ascontiguousarray(view).tobytes()


def _write_plain(f, member: ZipMember, t: TensorInfo, storages: _Storages) -> None:
    """Write tensor t's elements, row-major and little-endian: a strided view from its storage held in memory,
    a contiguous one streamed from the member."""
    es = DTYPES[t.dtype].bits // 8
    lay = t.layout
    if not is_contiguous(t.shape, lay.strides):
        f.write(_to_little(_gathered(storages.get(member), t, es), es, lay.byteorder))
        return
    carry = b""        # pieces need not end on an element boundary
    for piece in _contiguous_pieces(member, t, es):
        data = carry + piece if carry else piece
        n = len(data) // es * es
        f.write(_to_little(data[:n], es, lay.byteorder))
        carry = data[n:]


def reads_in_place(t: TensorInfo) -> bool:
    """Whether a native engine reads ViewLayout tensor t from its file itself: its storage is a stored
    (uncompressed) byte range of the file."""
    return t.layout is not None and t.layout.blob.compression == "stored"


@contextlib.contextmanager
def plain_tensors(tensors: Sequence[TensorInfo], *, engine_reads_views: bool = False) -> Iterator[list[TensorInfo]]:
    """`tensors` with every ViewLayout tensor replaced by the same tensor in a temporary file of plain bytes
    (deleted on exit), except, for an engine that reads views (engine_reads_views: Engine.reads_views), those
    it reads in place; the list is `tensors` itself when none needs it."""
    todo = [i for i, t in enumerate(tensors) if t.layout is not None and t.nbytes
            and not (engine_reads_views and reads_in_place(t))]
    if not todo:
        yield list(tensors)
        return
    tmpdir = tempfile.mkdtemp(prefix="paramkit-plain-")
    path = os.path.join(tmpdir, "tensors.bin")
    out = list(tensors)
    sources: dict[str, object] = {}
    members: dict[tuple, ZipMember] = {}
    storages = _Storages()
    # storage by storage, each in offset order: a deflated member is inflated once for its contiguous views
    todo.sort(key=lambda i: (tensors[i].file, tensors[i].layout.blob.offset, tensors[i].layout.blob.key,
                             tensors[i].layout.element_offset))
    try:
        with open(path, "wb") as f:
            for i in todo:
                t = tensors[i]
                lay = t.layout
                src = sources.get(t.file) or sources.setdefault(t.file, open_source(t.file))
                key = (t.file, lay.blob.key, lay.blob.offset)
                if key not in members:
                    members.clear()      # the previous storage's inflation state goes
                    members[key] = ZipMember(src, lay.blob)
                at = f.tell()
                _write_plain(f, members[key], t, storages)
                if f.tell() - at != t.nbytes:
                    raise OSError(f"{t.file}: tensor {t.name!r} gave {f.tell() - at} bytes, expected {t.nbytes}")
                out[i] = dataclasses.replace(t, file=path, offset=at, layout=None)
        yield out
    finally:
        for s in sources.values():
            s.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
