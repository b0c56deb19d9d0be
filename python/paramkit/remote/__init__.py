"""Remote weights: weight files read over HTTP(S) range requests (http.HttpFile, one more Source), models
resolved on a Hugging Face hub (hf://org/model[@revision][/path], hub.py) and objects of any store fsspec reads
(s3://, gs://, memory:// ...: objstore.FsspecFile). Needs the optional extra `paramkit[remote]` (urllib3, fsspec),
imported only when a URL is opened, so `import paramkit` never depends on it."""
from __future__ import annotations

import contextlib
import contextvars
import re
import threading

__all__ = ["Session", "Transfer", "is_url", "open_url", "session"]

URL_SCHEMES = ("http://", "https://")
HUB_SCHEME = "hf://"


# scheme://: two letters at least, so that a Windows drive (C://) stays a path
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_url(path) -> bool:
    """Whether `path` (a str) is a URL paramkit reads remotely: http://, https://, hf:// or any other scheme://
    (an fsspec filesystem's)."""
    return isinstance(path, str) and _SCHEME.match(path) is not None


def is_http(path) -> bool:
    return isinstance(path, str) and path.lower().startswith(URL_SCHEMES)


def _open(url: str, **kw):
    """The Source of a URL: an HttpFile for http(s), else an fsspec FsspecFile."""
    if is_http(url):
        from .http import HttpFile
        return HttpFile(url, **kw)
    if url.lower().startswith(HUB_SCHEME):
        raise ValueError(f"{url}: an hf:// address names a model or a file of a hub repository; paramkit.scan and "
                         "open_table resolve it (open_source takes a path or a URL)")
    from .objstore import FsspecFile
    kw.pop("client", None)
    kw.pop("timeout", None)
    return FsspecFile(url, **kw)


class Transfer:
    """Requests made and body bytes received (thread-safe); `parent` gets the same counts (a scan's total)."""

    def __init__(self, parent: "Transfer | None" = None):
        self.requests = 0
        self.bytes = 0
        self.retries = 0
        self.files = 0
        self.parent = parent
        self._lock = threading.Lock()

    def add(self, requests: int = 0, nbytes: int = 0, retries: int = 0, files: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.bytes += nbytes
            self.retries += retries
            self.files += files
        if self.parent is not None:
            self.parent.add(requests, nbytes, retries, files)

    def to_dict(self) -> dict:
        """requests (retries and redirects included), bytes (bodies received), retries, files (opened)."""
        return {"requests": self.requests, "bytes": self.bytes, "retries": self.retries, "files": self.files}


class Session:
    """What one remote open_table shares: the HTTP client (its connection pool and tokens), the transfer totals,
    and the file lists a hub gave (hub directory URL -> names), so the resolver can list and check files."""

    def __init__(self, client=None):
        from .http import default_client
        self.client = client if client is not None else default_client()
        self.transfer = Transfer()
        self.sizes: dict[str, int] = {}        # URL -> size of every object opened
        self.validators: dict[str, str | None] = {}   # URL -> its ETag (else Last-Modified) when first read
        self.data: Transfer | None = None      # the statistics pass's requests and bytes (in `transfer` too)
        self.listings: dict[str, list[str]] = {}
        self.revision: dict | None = None      # hf://: {"repo", "revision", "commit"}

    def data_source(self, url: str):
        """A source of `url` for the statistics pass: range reads checked against the size and validator its
        header read saw (RemoteChanged when the object changed since), with no request made to open it; its
        requests and bytes are counted in `data` (and in the totals)."""
        if self.data is None:
            self.data = Transfer(self.transfer)
        return _open(url, client=self.client, transfer=self.data, expect=(self.sizes[url], self.validators[url]))

    def report(self) -> dict:
        """The report's `transfer`: the totals, the statistics pass's share ("data") and, for hf://, the hub
        revision."""
        d = self.transfer.to_dict()
        if self.data is not None:
            d["data"] = {k: v for k, v in self.data.to_dict().items() if k != "files"}
        if self.revision is not None:
            d["hub"] = dict(self.revision)
        # what identifies the bytes read (a resumable job keeps it): each object's size and validator
        d["objects"] = {url: {"size": size, "validator": self.validators.get(url)}
                        for url, size in sorted(self.sizes.items())}
        return d


_current: contextvars.ContextVar[Session | None] = contextvars.ContextVar("paramkit_remote_session", default=None)


def current() -> Session | None:
    return _current.get()


@contextlib.contextmanager
def session(client=None):
    """The remote session of one open_table (nested calls share the outer one)."""
    s = _current.get()
    if s is not None:
        yield s
        return
    s = Session(client)
    token = _current.set(s)
    try:
        yield s
    finally:
        _current.reset(token)


def open_url(url: str, **kw):
    """The Source of a URL (HttpFile for http(s), FsspecFile for another store), counted in the current session's
    transfer totals when there is one."""
    s = _current.get()
    if s is None:
        return _open(url, **kw)
    kw.setdefault("client", s.client)
    s.transfer.add(files=1)
    src = _open(url, transfer=Transfer(s.transfer), **kw)
    s.sizes[url] = src.size
    s.validators[url] = src.validator
    return src
