"""paramkit.remote.http against loopback servers: HttpFile as a Source (size and ETag from the first range answer,
exact bytes, read-ahead), the safetensors header in one or two requests at the exact 100,000-byte boundary, and the
faults a remote read must survive or refuse (5xx, 429 + Retry-After, resets, truncated and short bodies, a server
that ignores Range, a changed ETag, redirects that must not carry the token, timeouts)."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("urllib3")   # the remote extra; listed in the test extra, so CI runs these

import paramkit.remote.http as rh                                    # noqa: E402
from http_server import Fault, RangeServer                           # noqa: E402
from paramkit.formats.safetensors import read_columns                # noqa: E402
from paramkit.sources import open_source                             # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blob(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _safetensors_with_header(total_header: int) -> bytes:
    """A valid safetensors file of one F32 tensor [2] whose header (8 + N bytes) is exactly `total_header` bytes:
    the JSON right-padded with spaces, as the format allows."""
    text = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    n = total_header - 8
    assert n >= len(text)
    return n.to_bytes(8, "little") + text + b" " * (n - len(text)) + np.array([1.5, -2.0], "<f4").tobytes()


def test_import_paramkit_needs_no_urllib3():
    """Without urllib3, `import paramkit` works and opening a URL says which extra to install."""
    code = ("import sys; sys.modules['urllib3'] = None\n"
            "import paramkit\n"
            "from paramkit.sources import open_source\n"
            "try:\n    open_source('http://127.0.0.1:9/x.safetensors')\n"
            "except ImportError as e:\n    print('IMPORT-ERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "python")}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "IMPORT-ERROR" in out.stdout and "pip install 'paramkit[remote]'" in out.stdout


def test_source_protocol(server):
    data = _blob(250_000)
    url = server.add("dir/blob.bin", data)
    src = open_source(url)
    assert src.name == url and src.size == len(data) and src.path is None
    assert src.identity == (url, len(data), server.etags["/dir/blob.bin"])
    assert len(server.requests()) == 1                       # size and ETag came with the first range answer
    assert server.requests()[0].headers["range"] == "bytes=0-99999"
    rng = np.random.default_rng(1)
    for _ in range(50):
        a = int(rng.integers(0, len(data)))
        n = int(rng.integers(0, min(70_000, len(data) - a) + 1))
        assert src.read_at(a, n) == data[a:a + n]
    assert src.read_at(0, len(data)) == data
    assert src.requests == len(server.requests())
    assert src.bytes_received == sum(r.nbytes for r in server.requests())
    with pytest.raises(OSError):
        src.read_at(len(data) - 1, 2)
    src.close()


def test_last_modified_when_no_etag(server):
    server.send_etag = False
    url = server.add("a.bin", _blob(10))
    assert open_source(url).identity == (url, 10, server.last_modified)


def test_empty_and_small_files(server):
    assert open_source(server.add("empty.bin", b"")).size == 0
    src = open_source(server.add("small.bin", b"abc"))
    assert src.size == 3 and src.read_at(1, 2) == b"bc"


@pytest.mark.parametrize("total_header", range(99_990, 100_011))
def test_safetensors_header_boundary(server, tmp_path, total_header):
    """One GET of bytes 0..99,999 when 8 + N <= 100,000, a second only beyond it (huggingface_hub truncated
    headers of 99,994-100,000 bytes); the columns equal the local file's."""
    data = _safetensors_with_header(total_header)
    local = tmp_path / "m.safetensors"
    local.write_bytes(data)
    with open_source(server.add("m.safetensors", data)) as src:
        cols, meta, header = read_columns(src)
    assert header == total_header
    assert len(server.requests()) == (1 if total_header <= 100_000 else 2)
    want, _, _ = read_columns(str(local))
    assert cols.names == want.names and cols.numel.tolist() == want.numel.tolist()
    assert cols.offset.tolist() == want.offset.tolist() and cols.files() == [server.url("m.safetensors")]


def test_read_ahead_doubles(server):
    """Sequential small reads (a GGUF header's) cost a few requests of doubling size, not one per read."""
    data = _blob(5_000_000, 2)
    src = open_source(server.add("big.bin", data))
    pos = 0
    while pos < len(data):
        n = min(src.read_size, len(data) - pos)
        assert src.read_at(pos, n) == data[pos:pos + n]
        pos += n
    sizes = [r.nbytes for r in server.requests()]
    assert sum(sizes) == len(data)                              # nothing fetched twice
    assert len(sizes) <= 1 + math.ceil(math.log2(len(data) / 100_000))
    assert all(b >= 2 * a for a, b in zip(sizes, sizes[1:-1]))  # each window twice the one before (the last: the rest)


def test_tail_reads_come_back_from_the_end(server):
    """A read at the end (a zip's end of central directory) fetches a window ending at the end of the object,
    which then serves the reads just before it (the central directory)."""
    data = _blob(2_000_000, 3)
    src = open_source(server.add("z.bin", data))
    assert src.read_at(len(data) - 22, 22) == data[-22:]
    assert src.read_at(len(data) - 5_000, 4_000) == data[-5_000:-1_000]
    assert len(server.requests()) == 2


def test_5xx_retried_with_exponential_backoff(server, sleeps):
    data = _blob(1000)
    url = server.add("f.bin", data)
    server.fault("f.bin", Fault("status", 500), Fault("status", 503), Fault("status", 502))
    src = open_source(url)
    assert src.read_at(0, 1000) == data
    assert len(server.requests()) == 4 and src.transfer.retries == 3
    assert len(sleeps) == 3 and sleeps[1] == 2 * sleeps[0] and sleeps[2] == 2 * sleeps[1]


def test_5xx_gives_up(server, sleeps):
    url = server.add("f.bin", _blob(10))
    server.fault("f.bin", *[Fault("status", 500)] * 10)
    with pytest.raises(OSError) as e:
        rh.HttpFile(url, client=rh.HttpClient(retries=2))
    assert url in str(e.value) and "500" in str(e.value) and e.value.status == 500
    assert len(server.requests()) == 3


def test_429_honours_retry_after(server, sleeps):
    url = server.add("f.bin", _blob(10))
    server.fault("f.bin", Fault("status", 429, headers={"Retry-After": "7"}))
    assert open_source(url).size == 10
    assert sleeps == [7.0]


def test_429_asking_too_long_is_an_error(server, sleeps):
    url = server.add("f.bin", _blob(10))
    server.fault("f.bin", Fault("status", 429, headers={"Retry-After": "86400"}))
    with pytest.raises(OSError, match="429"):
        open_source(url)
    assert sleeps == []


def test_connection_reset_retried(server, sleeps):
    data = _blob(300)
    url = server.add("f.bin", data)
    server.fault("f.bin", Fault("reset"), Fault("truncate"))
    src = open_source(url)
    assert src.read_at(0, 300) == data and src.transfer.retries == 2


def test_truncated_body_every_time_is_an_oserror_naming_the_url(server, sleeps):
    url = server.add("f.bin", _blob(5000))
    server.fault("f.bin", *[Fault("truncate")] * 10)
    with pytest.raises(OSError) as e:
        rh.HttpFile(url, client=rh.HttpClient(retries=1))
    assert url in str(e.value)


def test_short_body_is_an_oserror_naming_the_url(server):
    url = server.add("f.bin", _blob(5000))
    server.fault("f.bin", Fault("short"))
    with pytest.raises(OSError) as e:
        open_source(url)
    assert url in str(e.value) and "short" in str(e.value)


def test_server_ignoring_range_is_refused(server):
    url = server.add("f.bin", _blob(400_000))
    server.ignore_range = True
    with pytest.raises(OSError, match="ignores HTTP Range") as e:
        open_source(url)
    assert url in str(e.value)
    assert len(server.requests()) == 1


def test_changed_etag_detected(server):
    data = _blob(300_000)
    url = server.add("f.bin", data)
    src = open_source(url)
    server.etags["/f.bin"] = '"a-new-version"'
    with pytest.raises(rh.RemoteChanged) as e:
        src.read_at(200_000, 10)
    assert isinstance(e.value, OSError) and url in str(e.value)


def test_http_errors(server):
    with pytest.raises(FileNotFoundError) as e:
        open_source(server.url("missing.bin"))
    assert server.url("missing.bin") in str(e.value) and "404" in str(e.value)
    server.add("private.bin", b"x")
    for status in (401, 403):
        server.fault("private.bin", Fault("status", status))
        with pytest.raises(PermissionError, match=str(status)):
            open_source(server.url("private.bin"))


def test_redirect_keeps_the_token_on_its_host(server):
    """A token set for one host goes to it only: the redirect target (another port: another origin) never
    receives it; later reads go straight to the target."""
    other = RangeServer()
    try:
        data = _blob(300_000)
        target = other.add("cdn/f.bin", data) + "?signature=1"
        server.redirects["/f.bin"] = target
        client = rh.HttpClient()
        client.set_token(server.url("f.bin"), "secret")
        src = rh.HttpFile(server.url("f.bin"), client=client)
        assert src.read_at(150_000, 100_000) == data[150_000:250_000]
        assert [r.headers.get("authorization") for r in server.requests()] == ["Bearer secret"]
        assert other.requests() and all("authorization" not in r.headers for r in other.requests())
        assert len(other.requests()) == 2 and src.requests == 3
    finally:
        other.close()


def test_timeout_never_hangs(sleeps):
    """A server that accepts the connection and never answers: the read times out (and the retries end)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/f.bin"
        with pytest.raises(OSError) as e:
            rh.HttpFile(url, client=rh.HttpClient(timeout=0.3, retries=1))
        assert url in str(e.value) and len(sleeps) == 1
    finally:
        sock.close()


def test_timeout_from_the_environment(monkeypatch):
    monkeypatch.setenv("PARAMKIT_HTTP_TIMEOUT", "2.5")
    assert rh.HttpClient().timeout == 2.5
    assert rh.HttpClient(timeout=4).timeout == 4.0
    monkeypatch.setenv("PARAMKIT_HTTP_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="PARAMKIT_HTTP_TIMEOUT"):
        rh.HttpClient()
