"""Byte sources: the one place paramkit opens a weight file for its bytes. A source has a name (for
messages and the report), a size, an identity (what a resumable job compares) and range reads: a local
file (LocalFile), a member of a zip archive (ZipMember: stored members are a range of their archive,
deflated ones are inflated as they are read, with bounded memory) and remote objects (paramkit.remote's
HttpFile: range GETs, path None; open_source gives it for http(s) URLs, and an fsspec FsspecFile for other
URLs). Format
readers take a source; the numpy reference, the quantization stream and the export read tensor bytes
through one, and the native engines get its local path and byte ranges (they pread the same file)."""
from __future__ import annotations

import errno
import os
import stat
from typing import Protocol


class Source(Protocol):
    name: str        # the path or URL, as messages and the report show it
    size: int        # bytes

    @property
    def identity(self) -> tuple: ...

    @property
    def path(self) -> str | None:
        """The local file the native engines pread for this source's bytes (at file_offset), else None."""

    def read_at(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes from `offset`; OSError (errno EIO) when the source ends before that."""

    def close(self) -> None: ...


class LocalFile:
    """A regular local file, opened once (read-only) and read with pread: thread-safe, no shared position."""

    kind = "file"

    def __init__(self, path: str | os.PathLike):
        self.name = os.path.abspath(os.fsdecode(os.fspath(path)))
        self._fd = os.open(self.name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file", self.name) \
                    if stat.S_ISDIR(st.st_mode) else OSError(errno.EINVAL, "not a regular file", self.name)
        except BaseException:
            os.close(self._fd)
            raise
        self.size = st.st_size
        self._mtime_ns = st.st_mtime_ns

    @property
    def identity(self) -> tuple:
        """(path, size, mtime in ns): changes when the file is replaced or rewritten."""
        return (self.name, self.size, self._mtime_ns)

    @property
    def path(self) -> str:
        """The local path the native engines pread."""
        return self.name

    file_offset = 0   # where the source's byte 0 lies in `path`

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"read_at({offset}, {length}): negative offset or length")
        parts = []
        done = 0
        while done < length:
            b = os.pread(self._fd, min(length - done, 1 << 26), offset + done)
            if not b:
                raise OSError(errno.EIO, f"{self.name}: file ended at byte {offset + done:,} while reading bytes "
                              f"{offset:,}..{offset + length:,} (was it truncated while being read?)")
            parts.append(b)
            done += len(b)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readinto_at(self, buf, offset: int) -> None:
        """Fill the writable buffer `buf` with the bytes from `offset` (no intermediate bytes object)."""
        view = memoryview(buf).cast("B")
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n <= 0:
                raise OSError(errno.EIO, f"{self.name}: file ended at byte {offset + done:,} while reading bytes "
                              f"{offset:,}..{offset + len(view):,} (was it truncated while being read?)")
            done += n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "LocalFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _check_range(src, offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"read_at({offset}, {length}): negative offset or length")
    if offset + length > src.size:
        raise OSError(errno.EIO, f"{src.name}: bytes {offset:,}..{offset + length:,} lie beyond the end of the "
                      f"{src.size:,}-byte member")


class ZipMember:
    """One member of a zip archive (an .npz array, a torch.save storage, data.pkl) as a source of its
    uncompressed bytes after `blob.skip` (formats.stored.StoredBlob). A stored member is a byte range of its
    archive: reads go to the archive's source, and the native engines read it in place (path, file_offset).
    A deflated member has no offset in any file (path None): it is inflated as it is read, from the start,
    with at most about two chunks in memory; reads that move forward continue the stream, a read before the
    stream's position starts it again; a read that reaches the member's end checks its size and CRC-32
    (FormatError blob_corrupt), as iter_chunks does."""

    kind = "zip-member"
    _CHUNK = 1 << 20

    def __init__(self, archive: Source, blob):
        self.archive = archive
        self.blob = blob
        self.name = f"{archive.name}::{blob.key}"
        self.size = blob.nbytes
        self._stream = None      # (iterator of inflated pieces, position of its next byte, bytes held back)

    @property
    def identity(self) -> tuple:
        """The archive's identity and the member's key and place: changes when the archive does."""
        return (*self.archive.identity, self.blob.key, self.blob.offset, self.blob.skip)

    @property
    def path(self) -> str | None:
        return self.archive.path if self.blob.compression == "stored" else None

    @property
    def file_offset(self) -> int | None:
        return self.archive.file_offset + self.blob.offset if self.blob.compression == "stored" else None

    def iter_chunks(self, chunk: int = _CHUNK):
        """The member's bytes in pieces of at most `chunk` bytes; FormatError blob_corrupt (while iterating)
        when it inflates to another size or fails its CRC-32."""
        from .formats.stored import iter_blob
        return iter_blob(self.archive, self.blob, chunk)

    def read_all(self) -> bytes:
        """The whole member in memory (small members: data.pkl, byteorder), size and CRC-32 checked."""
        return b"".join(self.iter_chunks())

    def read_at(self, offset: int, length: int) -> bytes:
        _check_range(self, offset, length)
        if length == 0:
            return b""
        if self.blob.compression == "stored":
            if self.blob.offset < 0 or self.blob.offset + self.blob.nbytes > self.archive.size:
                from .errors import FormatError
                raise FormatError("blob_corrupt", f"member {self.blob.key!r}: {self.blob.nbytes:,} bytes at offset "
                                  f"{self.blob.offset:,} lie outside the {self.archive.size:,}-byte file",
                                  path=self.archive.name)
            return self.archive.read_at(self.blob.offset + offset, length)
        return self._inflated_at(offset, length)

    def _next_piece(self, pieces, at: int, offset: int, length: int) -> bytes:
        piece = next(pieces, None)
        if piece is None:   # not reached for a well-formed member: iter_blob checks the size at its end
            raise OSError(errno.EIO, f"{self.name}: member ended at byte {at:,} while reading bytes "
                          f"{offset:,}..{offset + length:,}")
        return piece

    def _inflated_at(self, offset: int, length: int) -> bytes:
        # stream state: the inflated pieces, the stream position of `held`'s first byte, and `held` (the
        # part of the last piece not yet read past)
        if self._stream is None or offset < self._stream[1]:
            self._stream = (self.iter_chunks(self._CHUNK), 0, b"")
        pieces, pos, held = self._stream
        while pos + len(held) <= offset:                 # skip what lies wholly before the range
            pos += len(held)
            held = self._next_piece(pieces, pos, offset, length)
        out = bytearray(held[offset - pos:])
        while len(out) < length:
            out += self._next_piece(pieces, offset + len(out), offset, length)
        self._stream = (pieces, offset + length, bytes(out[length:]))
        del out[length:]
        if offset + length == self.size:   # the member's end: run the stream out so its size and CRC are checked
            for extra in pieces:
                raise OSError(errno.EIO, f"{self.name}: member inflates past its {self.size:,} bytes")
        return bytes(out)

    def close(self) -> None:
        self._stream = None

    def __enter__(self) -> "ZipMember":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_whole(source) -> bool:
    """Whether `source` is a whole file or remote object (LocalFile, HttpFile), which tables name by its name,
    rather than a part of another file (a zip member)."""
    if getattr(source, "kind", None) in ("http", "fsspec"):
        return True
    return source.path is not None and source.path == source.name and not source.file_offset


def open_source(path: str | os.PathLike, **kw) -> Source:
    """The source for `path`: an http:// or https:// URL is a paramkit.remote HttpFile (range reads; needs the
    `paramkit[remote]` extra; keywords go to it: timeout=, client=), another scheme:// URL an fsspec FsspecFile
    (hf:// is a ValueError: scan and open_table resolve it), anything else a LocalFile."""
    from .remote import is_url
    if is_url(path):
        from .remote import open_url
        return open_url(path, **kw)
    return LocalFile(path)
