"""Plain bytes for the data pass: the engines read tensors as contiguous little-endian row-major byte ranges
of a file. A tensor whose TensorInfo has a ViewLayout (a strided torch view, big-endian data, a member of a
deflated zip) is written once, in that plain form, to a private temporary file for the duration of the pass;
plain tensors are read where they are, untouched."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from typing import Iterator, Sequence

import numpy as np

from .dtypes import DTYPES
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


def _strided(src, t: TensorInfo, es: int) -> bytes:
    """The elements of a strided view in row-major order; holds its storage in memory while it gathers."""
    from .formats.stored import read_blob
    lay = t.layout
    storage = np.frombuffer(read_blob(src, lay.blob), dtype=_UINT[es])
    view = np.lib.stride_tricks.as_strided(storage[lay.element_offset:], shape=t.shape,
                                           strides=tuple(s * es for s in lay.strides), writeable=False)
    return np.ascontiguousarray(view).tobytes()


def _write_plain(f, src, t: TensorInfo) -> None:
    from .formats.stored import is_contiguous
    es = DTYPES[t.dtype].bits // 8
    lay = t.layout
    if is_contiguous(t.shape, lay.strides):
        carry = b""        # pieces of a deflated member need not end on an element boundary
        for piece in _contiguous_pieces(src, t, es):
            data = carry + piece if carry else piece
            n = len(data) // es * es
            f.write(_to_little(data[:n], es, lay.byteorder))
            carry = data[n:]
    else:
        f.write(_to_little(_strided(src, t, es), es, lay.byteorder))


@contextlib.contextmanager
def plain_tensors(tensors: Sequence[TensorInfo]) -> Iterator[list[TensorInfo]]:
    """`tensors` with every ViewLayout tensor replaced by the same tensor in a temporary
    file of plain bytes (deleted on exit); the list is `tensors` itself when none needs it."""
    todo = [i for i, t in enumerate(tensors) if t.layout is not None and t.nbytes]
    if not todo:
        yield list(tensors)
        return
    tmpdir = tempfile.mkdtemp(prefix="paramkit-plain-")
    path = os.path.join(tmpdir, "tensors.bin")
    out = list(tensors)
    sources: dict[str, object] = {}
    try:
        with open(path, "wb") as f:
            for i in todo:
                t = tensors[i]
                src = sources.get(t.file) or sources.setdefault(t.file, open_source(t.file))
                at = f.tell()
                _write_plain(f, src, t)
                if f.tell() - at != t.nbytes:
                    raise OSError(f"{t.file}: tensor {t.name!r} gave {f.tell() - at} bytes, expected {t.nbytes}")
                out[i] = dataclasses.replace(t, file=path, offset=at, layout=None)
        yield out
    finally:
        for s in sources.values():
            s.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
