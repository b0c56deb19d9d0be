"""The on-disk header cache (PARAMKIT_HEADER_CACHE, paramkit.remote.cache) against the loopback server: off by
default; on, a second header-only scan of unchanged files makes no ranged GET for their bytes, one revalidation
request each (a 304 to If-None-Match, or a 1-byte range where the server ignores it), with the same report; a
changed object, a corrupt entry and a server without ETags fall back to fetching; entries are written by rename."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("urllib3")   # the remote extra; listed in the test extra, so CI runs these

import paramkit                                                   # noqa: E402


def _model(d, tensors: int = 30) -> None:
    from safetensors.numpy import save_file
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    save_file({f"layers.{i}.w": rng.standard_normal((40, 40)).astype(np.float32) for i in range(tensors)},
              str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))


def _report(url: str) -> dict:
    d = json.loads(paramkit.scan(url, stats=False).to_json())
    d.pop("timing")
    return d


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    c = tmp_path / "cache"
    monkeypatch.setenv("PARAMKIT_HEADER_CACHE", str(c))
    return c


def test_off_by_default(server, tmp_path, monkeypatch):
    monkeypatch.delenv("PARAMKIT_HEADER_CACHE", raising=False)
    _model(tmp_path / "m")
    url = server.add_dir("m", str(tmp_path / "m")) + "/model.safetensors"
    _report(url)
    server.clear_log()
    _report(url)
    assert [r.headers["range"] for r in server.requests("m/model.safetensors")] == ["bytes=0-99999"]


@pytest.mark.parametrize("conditional", [True, False])
def test_second_scan_revalidates_only(server, tmp_path, cache_dir, conditional):
    """Second run: per file one request, If-None-Match with the ETag (304, no body) or, for a server that ignores
    it, a 1-byte range whose ETag is compared; the report is the first run's but for the transfer counts."""
    server.conditional = conditional
    _model(tmp_path / "m")
    url = server.add_dir("m", str(tmp_path / "m")) + "/model.safetensors"
    first = _report(url)
    assert len(os.listdir(cache_dir)) == 2                 # the weights and config.json
    server.clear_log()
    second = _report(url)
    got = server.requests()
    assert sorted(r.path for r in got) == ["/m/config.json", "/m/model.safetensors"]
    etag = server.etags["/m/model.safetensors"]
    for r in got:
        assert r.headers["range"] == "bytes=0-0" and r.headers["if-none-match"] == server.etags[r.path]
        assert (r.status, r.nbytes) == ((304, 0) if conditional else (206, 1))
    assert second["transfer"] == {**first["transfer"], "requests": 2, "bytes": 0 if conditional else 2}
    second.pop("transfer"), first.pop("transfer")
    assert second == first and etag


def test_changed_object_is_fetched_again(server, tmp_path, cache_dir):
    _model(tmp_path / "m")
    url = server.add_dir("m", str(tmp_path / "m")) + "/model.safetensors"
    _report(url)
    _model(tmp_path / "m", tensors=31)                      # a new object: another ETag
    server.add_dir("m", str(tmp_path / "m"))
    server.clear_log()
    rep = _report(url)
    assert len(rep["tensors"]) == 31
    ranges = [r.headers["range"] for r in server.requests("m/model.safetensors")]
    assert ranges == ["bytes=0-0", "bytes=0-99999"]
    server.clear_log()
    assert len(_report(url)["tensors"]) == 31               # and the entry is the new object's
    assert [r.headers["range"] for r in server.requests("m/model.safetensors")] == ["bytes=0-0"]


def test_corrupt_entries_are_ignored(server, tmp_path, cache_dir):
    _model(tmp_path / "m")
    url = server.add_dir("m", str(tmp_path / "m")) + "/model.safetensors"
    first = _report(url)
    for k, name in enumerate(sorted(os.listdir(cache_dir))):
        p = cache_dir / name
        raw = bytearray(p.read_bytes())
        if k == 0:
            raw[len(raw) // 2] ^= 0xFF                      # a flipped byte
        else:
            del raw[-10:]                                   # a truncated entry
        p.write_bytes(bytes(raw))
    server.clear_log()
    again = _report(url)
    assert again["tensors"] == first["tensors"]
    assert [r.headers["range"] for r in server.requests("m/model.safetensors")] == ["bytes=0-99999"]
    assert not [n for n in os.listdir(cache_dir) if n.startswith(".tmp")]   # rewritten by rename, none left
    server.clear_log()
    _report(url)
    assert [r.headers["range"] for r in server.requests("m/model.safetensors")] == ["bytes=0-0"]


def test_gguf_header_from_the_cache(server, tmp_path, cache_dir):
    """A GGUF header of a megabyte (two requests or more): the second scan makes one request for it."""
    import gguf
    d = tmp_path / "g"
    d.mkdir()
    w = gguf.GGUFWriter(str(d / "model.gguf"), "llama")
    w.add_token_list([f"token-{i}" for i in range(60_000)])
    w.add_tensor("t", np.ones((16, 16), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    url = server.add_dir("g", str(d)) + "/model.gguf"
    first = _report(url)
    assert len(server.requests("g/model.gguf")) >= 2
    server.clear_log()
    second = _report(url)
    assert len(server.requests("g/model.gguf")) == 1
    assert second["tensors"] == first["tensors"]
