"""Loopback HTTP servers for the remote-weights tests (no internet here): RangeServer serves files with single
Range GETs, ETags and keep-alive, logs every request (headers included) and injects faults on demand (429 with
Retry-After, 5xx, connection resets, truncated bodies, a Range-ignoring mode, a changed ETag, redirects); FakeHub
answers the two Hub routes paramkit uses (model info of a revision, resolve redirecting to a CDN server)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Fault:
    """One injected fault for the next request of a path: kind "status" (answer `status` with `headers`),
    "reset" (close the connection with a TCP RST, no answer), "truncate" (announce the body,
    send half, reset), "short" (a complete answer whose body is half the range its Content-Range names), "pass"
    (answered as usual: faults queued after it hit later requests), "etag" (the object changes: its ETag becomes
    headers["ETag"] from this request on)."""
    kind: str
    status: int = 500
    headers: dict = field(default_factory=dict)


@dataclass
class Request:
    path: str
    headers: dict
    status: int
    nbytes: int


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def setup(self) -> None:
        super().setup()   # headers and body go out in two writes: no Nagle wait on the second
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args) -> None:   # quiet
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        self.req_path = unquote(urlsplit(self.path).path)
        self.req_headers = {k.lower(): v for k, v in self.headers.items()}
        with owner.lock:
            owner.inflight += 1
            owner.max_inflight = max(owner.max_inflight, owner.inflight)
        try:
            if owner.delay:
                time.sleep(owner.delay)
            owner.handle(self, self.req_path, self.req_headers)
        finally:
            with owner.lock:
                owner.inflight -= 1

    # helpers for the owners: each logs the request before it answers (the client may look at once)
    def record(self, status: int, nbytes: int) -> tuple[int, int]:
        owner = self.server.owner
        with owner.lock:
            owner.log.append(Request(self.req_path, self.req_headers, status, nbytes))
        return status, nbytes

    def answer(self, status: int, body: bytes = b"", headers: dict | None = None) -> tuple[int, int]:
        self.record(status, len(body))
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return status, len(body)

    def reset(self, log: bool = True) -> tuple[int, int]:
        if log:
            self.record(0, 0)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        return 0, 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:   # a client that went away (resets, timeouts)
        pass


class _Base:
    def __init__(self):
        self.lock = threading.Lock()
        self.log: list[Request] = []
        self.delay = 0.0          # seconds each request waits before it is answered (to see concurrency)
        self.inflight = self.max_inflight = 0
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"{self.base}/{quote(path.lstrip('/'))}"

    def requests(self, path: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.log if path is None or r.path == "/" + path.lstrip("/")]

    def clear_log(self) -> None:
        with self.lock:
            self.log.clear()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class RangeServer(_Base):
    """Files (path -> bytes) served with Range support. `faults[path]`: Faults used up one per request;
    `redirects[path]`: a URL to answer 302 with; `ignore_range`: answer every request 200 with the whole body;
    `etags[path]`: the ETag to send (default: a hash of the content; set it to simulate a changed object);
    `conditional`: answer If-None-Match with 304 when it names the current ETag (False: ignore it)."""

    def __init__(self):
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.faults: dict[str, list[Fault]] = {}
        self.redirects: dict[str, str] = {}
        self.ignore_range = False
        self.conditional = True   # If-None-Match with the current ETag: 304 Not Modified
        self.send_etag = True
        self.last_modified = "Wed, 21 Oct 2015 07:28:00 GMT"   # sent instead of an ETag when send_etag is False

    def add(self, path: str, data: bytes) -> str:
        path = "/" + path.lstrip("/")
        self.files[path] = data
        self.etags[path] = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        return self.url(path)

    def add_file(self, path: str, local: str) -> str:
        with open(local, "rb") as f:
            return self.add(path, f.read())

    def add_dir(self, prefix: str, local: str) -> str:
        """Serve every file of the local directory `local` under `prefix`/; returns the directory's URL."""
        for name in os.listdir(local):
            if os.path.isfile(os.path.join(local, name)):
                self.add_file(f"{prefix}/{name}", os.path.join(local, name))
        return self.url(prefix)

    def fault(self, path: str, *faults: Fault) -> None:
        self.faults.setdefault("/" + path.lstrip("/"), []).extend(faults)

    def handle(self, h: _Handler, path: str, headers: dict) -> tuple[int, int]:
        with self.lock:
            queue = self.faults.get(path)
            fault = queue.pop(0) if queue else None
        if fault is not None and fault.kind == "status":
            return h.answer(fault.status, b"injected", fault.headers)
        if fault is not None and fault.kind == "reset":
            return h.reset()
        if fault is not None and fault.kind == "etag":
            with self.lock:
                self.etags[path] = fault.headers["ETag"]
        if path in self.redirects:
            return h.answer(302, b"", {"Location": self.redirects[path]})
        data = self.files.get(path)
        if data is None:
            return h.answer(404, b"not found")
        extra = {"ETag": self.etags[path]} if self.send_etag else {"Last-Modified": self.last_modified}
        if self.conditional and self.send_etag and headers.get("if-none-match") == self.etags[path]:
            return h.answer(304, b"", extra)
        m = _RANGE.match(headers.get("range", ""))
        if m is None or self.ignore_range:
            return h.answer(200, data, extra)
        start = int(m.group(1))
        end = min(int(m.group(2)) + 1 if m.group(2) else len(data), len(data))
        if start >= len(data):
            return h.answer(416, b"", {"Content-Range": f"bytes */{len(data)}", **extra})
        body = data[start:end]
        extra["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        if fault is not None and fault.kind == "truncate":
            h.record(206, len(body) // 2)
            h.send_response(206)
            for k, v in extra.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[:len(body) // 2])
            h.wfile.flush()
            h.reset(log=False)
            return 206, len(body) // 2
        if fault is not None and fault.kind == "short":
            return h.answer(206, body[:len(body) // 2], extra)
        return h.answer(206, body, extra)


@dataclass
class Repo:
    """A repository of the fake hub: revision name -> (commit sha, {path: bytes}); gated: a token is needed."""
    revisions: dict[str, tuple[str, dict[str, bytes]]]
    gated: bool = False


class FakeHub(_Base):
    """The Hub routes paramkit uses: GET /api/models/{repo}/revision/{rev} (sha and siblings) and
    GET /{repo}/resolve/{rev}/{path} (302 to the CDN server, which serves the bytes; a signed query string).
    Gated repos answer 401 without a token and 403 with a token other than `token`."""

    def __init__(self, cdn: RangeServer, token: str = "hf_secret"):
        super().__init__()
        self.cdn = cdn
        self.token = token
        self.repos: dict[str, Repo] = {}

    def add_repo(self, name: str, files: dict[str, bytes], *, gated: bool = False, revision: str = "main",
                 sha: str | None = None) -> str:
        sha = sha or hashlib.sha1(f"{name}@{revision}".encode()).hexdigest()
        repo = self.repos.setdefault(name, Repo({}, gated))
        repo.gated = repo.gated or gated
        repo.revisions[revision] = (sha, dict(files))
        repo.revisions[sha] = (sha, dict(files))
        for path, data in files.items():
            self.cdn.add(f"{name}/{sha}/{path}", data)
        return sha

    def _auth(self, repo: Repo, headers: dict) -> int | None:
        if not repo.gated:
            return None
        auth = headers.get("authorization")
        if auth is None:
            return 401
        return None if auth == f"Bearer {self.token}" else 403

    def handle(self, h: _Handler, path: str, headers: dict) -> tuple[int, int]:
        m = re.match(r"^/api/models/(.+)/revision/([^/]+)$", path)
        if m:
            repo = self.repos.get(m.group(1))
            if repo is None:
                return h.answer(404, b'{"error": "Repository not found"}')
            denied = self._auth(repo, headers)
            if denied:
                return h.answer(denied, b'{"error": "gated"}')
            rev = repo.revisions.get(m.group(2))
            if rev is None:
                return h.answer(404, b'{"error": "Revision not found"}')
            sha, files = rev
            body = json.dumps({"id": m.group(1), "sha": sha,
                               "siblings": [{"rfilename": p} for p in sorted(files)]}).encode()
            return h.answer(200, body, {"Content-Type": "application/json"})
        m = re.match(r"^/(.+?/.+?)/resolve/([^/]+)/(.+)$", path)
        if m:
            repo = self.repos.get(m.group(1))
            if repo is None or m.group(2) not in repo.revisions:
                return h.answer(404, b"not found")
            denied = self._auth(repo, headers)
            if denied:
                return h.answer(denied, b"gated")
            sha, files = repo.revisions[m.group(2)]
            if m.group(3) not in files:
                return h.answer(404, b"entry not found")
            target = self.cdn.url(f"{m.group(1)}/{sha}/{m.group(3)}") + "?X-Signature=abc"
            return h.answer(302, b"", {"Location": target})
        return h.answer(404, b"no route")
