"""Object stores through fsspec (issue 15): any URL whose filesystem fsspec has installed (s3://, gs://, az://,
memory://, file:// ...) is read by FsspecFile, a Source of byte ranges (fs.cat_file(path, start, end)) behind the
same read-ahead cache as HTTP; a directory or prefix is listed with fs.ls, so the resolver picks the model's files
there as in a local directory. fsspec (and the store's own package, e.g. s3fs) is imported only when such a URL
is opened."""
from __future__ import annotations

import errno
import posixpath
from urllib.parse import urlsplit

from . import Transfer
from .http import RemoteChanged, RemoteError, RemoteNotFound
from .ranged import FIRST_WINDOW, RangedSource

# what fs.info() may carry that changes when the object does, in order of preference
_VALIDATORS = ("ETag", "etag", "md5Hash", "generation", "version_id", "LastModified", "last_modified", "mtime",
               "updated", "created")


def scheme_of(url: str) -> str:
    return urlsplit(url).scheme.lower()


def filesystem(url: str):
    """(fsspec filesystem, path inside it) of `url`; ImportError naming what to install when fsspec, or the
    package of this URL's filesystem (s3fs for s3://, gcsfs for gs:// ...), is missing; ValueError for a scheme
    fsspec does not know."""
    try:
        import fsspec.core
        from fsspec.registry import known_implementations
    except ImportError:
        raise ImportError(f"{url}: reading {scheme_of(url)}:// URLs needs fsspec, which is not installed: "
                          "pip install 'paramkit[remote]'") from None
    scheme = scheme_of(url)
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        known = known_implementations.get(scheme, {})
        package = known.get("class", "").split(".")[0] or "?"
        hint = known.get("err") or str(e)
        raise ImportError(f"{url}: fsspec's {scheme}:// filesystem needs the package {package!r}, which is not "
                          f"installed ({hint}): pip install {package}") from None
    except ValueError as e:
        if "Protocol not known" in str(e):
            raise ValueError(f"{url}: no fsspec filesystem for {scheme}:// URLs (fsspec knows "
                             f"{', '.join(sorted(known_implementations))})") from None
        raise


def _validator(info: dict) -> str | None:
    return next((str(info[k]) for k in _VALIDATORS if info.get(k) is not None), None)


def _info(fs, path: str, url: str) -> dict:
    try:
        return fs.info(path)
    except FileNotFoundError:
        raise RemoteNotFound(url, "no such object", None, errno.ENOENT) from None


def is_directory(url: str, transfer: Transfer) -> bool:
    """Whether `url` names a directory or prefix (it ends in '/', or the store says so: one request)."""
    if url.endswith("/"):
        return True
    fs, path = filesystem(url)
    transfer.add(requests=1)
    try:
        return fs.isdir(path)
    except FileNotFoundError:
        return False


def list_files(url: str, transfer: Transfer) -> list[str]:
    """The names of the files directly in the directory (or under the prefix) `url` (one request)."""
    fs, path = filesystem(url)
    transfer.add(requests=1)
    try:
        entries = fs.ls(path.rstrip("/") or "/", detail=True)
    except FileNotFoundError:
        raise RemoteNotFound(url, "no such directory or prefix", None, errno.ENOENT) from None
    return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "file")


class FsspecFile(RangedSource):
    """An object of an fsspec filesystem as a Source: size and validator (ETag, else a modification time) from
    fs.info(), byte ranges by fs.cat_file, each counted as a request in `transfer`. With `expect` (size,
    validator) from an earlier open, fs.info() is asked again and a changed object is RemoteChanged."""

    kind = "fsspec"

    def __init__(self, url: str, *, transfer: Transfer | None = None, window: int = FIRST_WINDOW,
                 expect: tuple[int, str | None] | None = None):
        self.name = url
        self.transfer = transfer if transfer is not None else Transfer()
        self._fs, self._path = filesystem(url)
        self._init_cache(window)
        info = _info(self._fs, self._path, url)
        self.transfer.add(requests=1)
        if info.get("type") not in (None, "file"):
            raise IsADirectoryError(errno.EISDIR, "a directory or prefix, not an object", url)
        self.size, self._validator = int(info["size"]), _validator(info)
        if expect is not None:
            if expect != (self.size, self._validator):
                raise RemoteChanged(url, f"the object changed since its header was read (size {expect[0]:,} -> "
                                    f"{self.size:,}, validator {expect[1]!r} -> {self._validator!r}); scan it again")
        elif self.size and not self._restore():   # the header cache's ranges of this object (same validator), or
            self._keep(0, self._fetch(0, window))  # the first window at once, as HttpFile: a safetensors header

    def _fetch(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        try:
            data = self._fs.cat_file(self._path, start=start, end=end)
        except FileNotFoundError:
            raise RemoteChanged(self.name, "the object is gone (deleted while it was read)") from None
        except OSError as e:
            raise RemoteError(self.name, f"{type(e).__name__}: {e}") from None
        self.transfer.add(requests=1, nbytes=len(data))
        if len(data) != end - start:
            raise RemoteError(self.name, f"short read: {len(data):,} bytes for bytes {start:,}..{end - 1:,} (did "
                              "the object change?)")
        self._next = end
        return data
