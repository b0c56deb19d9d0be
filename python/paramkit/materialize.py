"""Plain bytes for the data pass: the engines read tensors as contiguous little-endian row-major byte ranges
of a file, and the native engines (those with Engine.reads_views) also read ViewLayout tensors of stored
(uncompressed) members themselves: strided torch views and big-endian data (cpp/include/paramkit/read_plan.hpp).
Any other ViewLayout tensor (a member of a deflated zip; every view, for the numpy engine, the oracle, and for
export's Python reads) is written once, in that plain form, to a private temporary file for the duration of the
pass; plain tensors are read where they are, untouched. A strided view holds its storage in memory while it is
gathered, and a deflated member that several tensors view is inflated once."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import shutil
import tempfile
from typing import Iterator, Sequence

import numpy as np

from .dtypes import DTYPES
from .formats.stored import is_contiguous
from .sources import open_source
from .table import TensorInfo

CHUNK_BYTES = 16 << 20          # streaming piece for contiguous views of a member
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _to_little(raw: bytes | np.ndarray, es: int, byteorder: str) -> np.ndarray:
    a = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    if byteorder == "<" or es == 1:
        return a
    return a.view(np.dtype(_UINT[es]).newbyteorder(">")).astype(_UINT[es]).view(np.uint8)


def _contiguous_pieces(src, t: TensorInfo, es: int) -> Iterator[bytes]:
    """The bytes of a row-major view (element_offset.., nbytes) of its storage, streamed from the member with
    bounded memory (deflated members are inflated piece by piece)."""
    from .formats.stored import iter_blob
    lay = t.layout
    start, end = lay.element_offset * es, lay.element_offset * es + t.nbytes
    pos = 0
    for piece in iter_blob(src, lay.blob, CHUNK_BYTES):
        a, b = max(start - pos, 0), min(end - pos, len(piece))
        if a < b:
            yield piece[a:b]
        pos += len(piece)
        if pos >= end:
            break


class _Storages:
    """Whole storages in memory, one at a time (tensors are visited storage by storage): a strided view needs
    random access to its storage, and a deflated member that several tensors view is inflated once."""

    def __init__(self) -> None:
        self._key = None
        self._data = b""

    def get(self, src, blob) -> bytes:
        from .formats.stored import read_blob
        key = (src.name, blob.key, blob.offset)
        if key != self._key:
            self._key, self._data = None, b""   # drop the previous storage before reading the next
            self._data, self._key = read_blob(src, blob), key
        return self._data


def _gathered(storage: bytes, t: TensorInfo, es: int) -> bytes:
    """The elements of a view (any strides) of `storage`, in row-major order."""
    lay = t.layout
    elements = np.frombuffer(storage, dtype=_UINT[es])
    view = np.lib.stride_tricks.as_strided(elements[lay.element_offset:], shape=t.shape,
                                           strides=tuple(s * es for s in lay.strides), writeable=False)
    return np.ascontiguousarray(view).tobytes()


def _write_plain(f, src, t: TensorInfo, storages: _Storages, whole: bool) -> None:
    """Write tensor t's elements, row-major and little-endian; `whole`: from its storage held in memory,
    else streamed from the member (a contiguous view)."""
    es = DTYPES[t.dtype].bits // 8
    lay = t.layout
    if whole:
        f.write(_to_little(_gathered(storages.get(src, lay.blob), t, es), es, lay.byteorder))
        return
    carry = b""        # pieces of a deflated member need not end on an element boundary
    for piece in _contiguous_pieces(src, t, es):
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
    storages = _Storages()
    todo.sort(key=lambda i: (tensors[i].file, tensors[i].layout.blob.offset, tensors[i].layout.blob.key))
    views = collections.Counter((tensors[i].file, tensors[i].layout.blob.key) for i in todo)
    try:
        with open(path, "wb") as f:
            for i in todo:
                t = tensors[i]
                lay = t.layout
                src = sources.get(t.file) or sources.setdefault(t.file, open_source(t.file))
                whole = not is_contiguous(t.shape, lay.strides) or (
                    lay.blob.compression != "stored" and views[(t.file, lay.blob.key)] > 1)
                at = f.tell()
                _write_plain(f, src, t, storages, whole)
                if f.tell() - at != t.nbytes:
                    raise OSError(f"{t.file}: tensor {t.name!r} gave {f.tell() - at} bytes, expected {t.nbytes}")
                out[i] = dataclasses.replace(t, file=path, offset=at, layout=None)
        yield out
    finally:
        for s in sources.values():
            s.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
