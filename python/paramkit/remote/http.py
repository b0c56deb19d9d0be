"""HTTP(S) for remote weight files: HttpClient (one urllib3 connection pool; bounded retries with exponential
backoff on 5xx and broken connections, Retry-After on 429, timeouts, redirects followed by hand so that a token
only ever goes to the host it belongs to) and HttpFile, the Source of one remote object: range GETs through a
read-ahead cache (ranged.RangedSource), so a format reader's many small header reads cost one or two requests."""
from __future__ import annotations

import email.utils
import errno
import os
import re
import threading
import time
from urllib.parse import urljoin, urlsplit

from . import Transfer, cache
from .ranged import FIRST_WINDOW, RangedSource

DEFAULT_TIMEOUT = 30.0        # seconds, per connect and per read (PARAMKIT_HTTP_TIMEOUT)
DEFAULT_RETRIES = 4           # retries after the first attempt (PARAMKIT_HTTP_RETRIES)
BACKOFF = 0.5                 # seconds before the first retry, doubling, at most MAX_BACKOFF
MAX_BACKOFF = 8.0
MAX_RETRY_AFTER = 60.0        # a 429 asking to wait longer than this is an error, not a wait
MAX_REDIRECTS = 10
_RETRY_STATUS = frozenset({500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.I)

_sleep = time.sleep   # the tests record the waits instead


def _urllib3():
    try:
        import urllib3
    except ImportError:
        raise ImportError("reading weights over HTTP needs urllib3, which is not installed: "
                          "pip install 'paramkit[remote]'") from None
    return urllib3


class RemoteError(OSError):
    """An HTTP failure reading a remote object: the message names the URL; `.url`, `.status` (None when no
    response came)."""

    def __init__(self, url: str, message: str, status: int | None = None, code: int = errno.EIO):
        super().__init__(code, f"{url}: {message}")
        self.url = url
        self.status = status


class RemoteNotFound(RemoteError, FileNotFoundError):
    """HTTP 404 / 410."""


class RemoteAccessDenied(RemoteError, PermissionError):
    """HTTP 401 / 403: private, gated, or a token is needed or refused."""


class RemoteChanged(RemoteError):
    """The object changed between two requests (its ETag, Last-Modified or size differs)."""


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number of seconds") from None
    if not v > 0:
        raise ValueError(f"{name}={raw!r}: expected a positive number of seconds")
    return v


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, port None when it is the scheme's default."""
    u = urlsplit(url)
    port = u.port
    if port == {"http": 80, "https": 443}.get(u.scheme.lower()):
        port = None
    return u.scheme.lower(), (u.hostname or "").lower(), port


def _status_error(url: str, status: int, reason: str) -> RemoteError:
    what = f"HTTP {status}" + (f" {reason}" if reason else "")
    if status in (404, 410):
        return RemoteNotFound(url, f"{what}: not found", status, errno.ENOENT)
    if status in (401, 403):
        return RemoteAccessDenied(url, f"{what}: access denied (private or gated, or a token is missing or "
                                  "refused)", status, errno.EACCES)
    return RemoteError(url, what, status)


class Response:
    """A finished response: status, headers, the body read (bytes; b"" when not read), the URL that gave it."""

    def __init__(self, status: int, headers, data: bytes, url: str, reason: str = ""):
        self.status = status
        self.headers = headers
        self.data = data
        self.url = url
        self.reason = reason


class HttpClient:
    """One connection pool for every remote read of a process or session. Tokens are per origin: a request
    carries `Authorization` only when its own URL's scheme, host and port are those the token was given for,
    so a redirect to a CDN or any other host never receives it."""

    def __init__(self, *, timeout: float | None = None, retries: int | None = None, backoff: float = BACKOFF,
                 max_retry_after: float = MAX_RETRY_AFTER, pool_size: int = 16):
        urllib3 = _urllib3()
        self.timeout = float(timeout) if timeout is not None else _env_float("PARAMKIT_HTTP_TIMEOUT",
                                                                             DEFAULT_TIMEOUT)
        if not self.timeout > 0:
            raise ValueError(f"timeout={timeout!r}: expected a positive number of seconds")
        self.retries = retries if retries is not None else int(os.environ.get("PARAMKIT_HTTP_RETRIES",
                                                                              DEFAULT_RETRIES))
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self._tokens: dict[tuple, str] = {}
        from .. import __version__
        self._agent = f"paramkit/{__version__}"
        self._pool = urllib3.PoolManager(num_pools=pool_size, maxsize=pool_size, retries=False,
                                         timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout))
        self._errors = (urllib3.exceptions.HTTPError, OSError)

    def set_token(self, url: str, token: str | None) -> None:
        """Send `Authorization: Bearer token` to the origin of `url` (and only there); None: send none."""
        if token:
            self._tokens[origin(url)] = f"Bearer {token}"
        else:
            self._tokens.pop(origin(url), None)

    def get(self, url: str, *, start: int | None = None, end: int | None = None, max_body: int | None = None,
            transfer: Transfer | None = None, headers: dict | None = None) -> Response:
        """GET `url`, following redirects; with start/end the bytes start..end-1 (a Range request: a 200 answer
        with the whole body is refused, RemoteError). The body is read when the answer is 2xx (at most
        `max_body` bytes, else RemoteError). Non-2xx answers (after retries) raise RemoteError (404:
        RemoteNotFound, 401/403: RemoteAccessDenied). `headers`: more request headers (If-None-Match: a 304 answer
        is returned, with no body)."""
        transfer = transfer if transfer is not None else Transfer()
        headers = {**(headers or {}),
                   **({} if start is None else {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"})}
        for _ in range(MAX_REDIRECTS + 1):
            r = self._send(url, headers, start is not None, max_body, transfer)
            if r.status not in _REDIRECT_STATUS:
                return r
            loc = r.headers.get("Location")
            if not loc:
                raise RemoteError(url, f"HTTP {r.status} redirect without a Location", r.status)
            url = urljoin(url, loc)
            if urlsplit(url).scheme.lower() not in ("http", "https"):
                raise RemoteError(url, "redirected to a URL that is not http(s)", r.status)
        raise RemoteError(url, f"more than {MAX_REDIRECTS} redirects")

    def _send(self, url: str, headers: dict, ranged: bool, max_body: int | None, transfer: Transfer) -> Response:
        """One hop, retried: 5xx and broken connections with exponential backoff, 429 after its Retry-After."""
        h = {"User-Agent": self._agent, **headers}
        token = self._tokens.get(origin(url))
        if token is not None:
            h["Authorization"] = token
        attempt = 0
        while True:
            transfer.add(requests=1, retries=1 if attempt else 0)
            wait = None
            try:
                r = self._pool.request("GET", url, headers=h, preload_content=False, redirect=False,
                                       retries=False)
                try:
                    status = r.status
                    if status in _RETRY_STATUS or status == 429:
                        _discard(r)
                        wait = self._retry_wait(url, r, attempt)
                    else:
                        data = self._body(url, r, ranged, max_body)
                        transfer.add(nbytes=len(data))
                        return Response(status, r.headers, data, url, r.reason or "")
                except BaseException as e:
                    if not isinstance(e, RemoteError):   # (those discarded the body themselves)
                        r.close()    # a body not read to its end: the connection is not reused
                    raise
                finally:
                    r.release_conn()
            except self._errors as e:
                if isinstance(e, RemoteError):
                    raise
                if attempt >= self.retries:
                    raise RemoteError(url, f"{type(e).__name__}: {e} (after {attempt + 1} attempts)") from None
                wait = self._backoff(attempt)
            if wait is None:
                raise RemoteError(url, f"HTTP {status} (after {attempt + 1} attempts)", status)
            _sleep(wait)
            attempt += 1

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff * (2 ** attempt), MAX_BACKOFF)

    def _retry_wait(self, url: str, r, attempt: int) -> float | None:
        """Seconds to wait before retrying a 5xx or 429 answer; None when no retry is left."""
        if attempt >= self.retries:
            return None
        if r.status != 429:
            return self._backoff(attempt)
        after = _retry_after(r.headers.get("Retry-After"))
        if after is None:
            return self._backoff(attempt)
        if after > self.max_retry_after:
            raise RemoteError(url, f"HTTP 429: the server asks to retry after {after:.0f} s, longer than the "
                              f"{self.max_retry_after:.0f} s paramkit waits", 429)
        return after

    def _body(self, url: str, r, ranged: bool, max_body: int | None) -> bytes:
        """The body of a non-retried answer: read for 2xx, else the status is raised."""
        status = r.status
        if status in _REDIRECT_STATUS:
            _discard(r)
            return b""
        if ranged and status == 200:
            _discard(r)
            raise RemoteError(url, "the server ignores HTTP Range requests (it answered 200 with the whole "
                              f"{_length_text(r)} body): paramkit reads headers with range requests and does not "
                              "download whole files; download the file and scan it locally", 200)
        if (ranged and status == 416) or status == 304:     # 304: the answer to a conditional request
            _discard(r)
            return b""
        if not 200 <= status < 300:
            _discard(r)
            raise _status_error(url, status, r.reason or "")
        declared = r.headers.get("Content-Length")
        if max_body is not None and declared is not None and declared.isdigit() and int(declared) > max_body:
            _discard(r)
            raise RemoteError(url, f"the answer is {int(declared):,} bytes, more than the {max_body:,} asked for",
                              status)
        data = r.read() if max_body is None else r.read(max_body + 1)
        if max_body is not None and len(data) > max_body:
            raise RemoteError(url, f"the answer is longer than the {max_body:,} bytes asked for", status)
        return data


def _length_text(r) -> str:
    n = r.headers.get("Content-Length")
    return f"{int(n):,}-byte" if n and n.isdigit() else "unsized"


def _discard(r) -> None:
    """Drop a response's body: drained when small (the connection is kept), else the connection is closed."""
    n = r.headers.get("Content-Length")
    try:
        if n is not None and n.isdigit() and int(n) <= 65536:
            r.drain_conn()
        else:
            r.close()
    except Exception:
        r.close()


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_client: HttpClient | None = None
_client_lock = threading.Lock()


def default_client() -> HttpClient:
    """The process's shared client (one connection pool), made on first use."""
    global _client
    with _client_lock:
        if _client is None:
            _client = HttpClient()
        return _client


class HttpFile(RangedSource):
    """A remote object as a Source: name = the URL, size and validator (ETag, else Last-Modified) from the
    first ranged answer's headers (no HEAD), path None (the native engines cannot pread it), read_at by Range
    GETs. Fetched ranges are kept (up to CACHE_LIMIT bytes): a miss fetches at least the current window, which
    starts at FIRST_WINDOW and doubles per miss (a GGUF header read sequentially takes a few growing requests);
    a miss near the end reads back from the end (a zip's central directory). Every answer's validator and size
    are checked against the first (RemoteChanged); a short body is RemoteError (an OSError naming the URL)."""

    kind = "http"

    def __init__(self, url: str, *, client: HttpClient | None = None, timeout: float | None = None,
                 transfer: Transfer | None = None, window: int = FIRST_WINDOW,
                 expect: tuple[int, str | None] | None = None):
        self.name = url
        self.client = client if client is not None else (HttpClient(timeout=timeout) if timeout is not None
                                                         else default_client())
        self.transfer = transfer if transfer is not None else Transfer()
        self._target = url        # where the last answer came from (a redirect's target, reused)
        self._init_cache(window)
        self._validator: str | None = None
        self.size: int = -1
        if expect is not None:    # (size, validator) known from an earlier read: no request now, every answer
            self.size, self._validator = expect     # is checked against them (RemoteChanged)
            return
        kept = cache.load(url)
        if kept is not None and self._still(*kept[:2]):    # the header cache's ranges of this very object
            self.size, self._validator = kept[:2]
            if self._restore():
                return
        data = self._fetch(0, window)
        if data:
            self._keep(0, data)

    def _still(self, size: int, validator: str) -> bool:
        """Whether the object is still the one a header cache entry was made of: one request of at most one
        byte, conditional on its ETag (a 304 answer), else compared by the answer's size and validator."""
        etag = validator.startswith(('"', 'W/"'))
        r = self._get(0, 1, {"If-None-Match": validator} if etag else None)
        if r.status == 304:
            return True
        cr = _CONTENT_RANGE.match(r.headers.get("Content-Range", "") or "")
        return (cr is not None and cr.group(3) == str(size)
                and (r.headers.get("ETag") or r.headers.get("Last-Modified")) == validator)

    # ---- requests ----------------------------------------------------------------------------------------
    def _get(self, start: int, end: int, headers: dict | None = None) -> Response:
        try:
            r = self.client.get(self._target, start=start, end=end, max_body=end - start, transfer=self.transfer,
                                headers=headers)
        except (RemoteNotFound, RemoteAccessDenied):
            if self._target == self.name:
                raise
            self._target = self.name     # a redirect's target that no longer answers (an expired signed URL)
            r = self.client.get(self._target, start=start, end=end, max_body=end - start, transfer=self.transfer,
                                headers=headers)
        if r.url != self._target:
            self._target = r.url
        return r

    def _fetch(self, start: int, end: int) -> bytes:
        """Bytes start..end-1 (fewer only on the first request, for a file shorter than the window)."""
        r = self._get(start, end)
        first = self.size < 0
        cr = _CONTENT_RANGE.match(r.headers.get("Content-Range", "") or "")
        if cr is None or cr.group(3) == "*":
            raise RemoteError(self.name, f"HTTP {r.status} without a usable Content-Range "
                              f"({r.headers.get('Content-Range')!r}): the server must give the object's size in "
                              "its range answers", r.status)
        total = int(cr.group(3))
        validator = r.headers.get("ETag") or r.headers.get("Last-Modified")
        if first:
            self.size, self._validator = total, validator
        elif total != self.size or validator != self._validator:
            raise RemoteChanged(self.name, f"the object changed while it was read (size {self.size:,} -> "
                                f"{total:,}, validator {self._validator!r} -> {validator!r}); scan it again")
        if r.status == 416:
            if first and total == 0:
                return b""
            raise RemoteError(self.name, f"HTTP 416 for bytes {start:,}..{end - 1:,} of a {total:,}-byte object",
                              416)
        want_end = min(end, total)
        got_start, got_end = int(cr.group(1)), int(cr.group(2)) + 1
        if got_start != start or got_end != want_end:
            raise RemoteError(self.name, f"asked for bytes {start:,}..{want_end - 1:,}, the answer says it holds "
                              f"{got_start:,}..{got_end - 1:,}", r.status)
        if len(r.data) != want_end - start:
            raise RemoteError(self.name, f"short body: {len(r.data):,} bytes for bytes {start:,}..{want_end - 1:,} "
                              "(truncated answer)", r.status)
        self._next = want_end
        return r.data
