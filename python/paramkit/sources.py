"""Byte sources: the one place paramkit opens a weight file for its bytes. A source has a name (for
messages and the report), a size, an identity (what a resumable job compares) and range reads; format
readers, the numpy reference, the quantization stream and the export read tensor bytes through it, and
the native engines get its path and byte ranges (they pread the same file themselves)."""
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


def open_source(path: str | os.PathLike) -> LocalFile:
    """The source for `path` (a local file today; remote objects plug in here)."""
    return LocalFile(path)
