"""Object stores through fsspec (paramkit.remote.objstore): a file, a directory (prefix) and a sharded index on
fsspec's memory:// filesystem and as file:// URLs scan like the same files on disk, header-only and with full
statistics; a missing fsspec, a store whose package is missing and an unknown scheme say what to install or what
is wrong; an object replaced between its header read and its data is RemoteChanged."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

fsspec = pytest.importorskip("fsspec")   # the remote extra; listed in the test extra, so CI runs these

import paramkit                                                   # noqa: E402
from paramkit.remote import stream                                # noqa: E402
from paramkit.remote.http import RemoteChanged                    # noqa: E402

CONFIG = {"model_type": "llama", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 32, "vocab_size": 64}


def _state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"model.embed_tokens.weight": rng.standard_normal((64, 16)).astype(np.float32)}
    for i in range(2):
        out[f"model.layers.{i}.mlp.up_proj.weight"] = rng.standard_normal((32, 16)).astype(np.float16)
        out[f"model.layers.{i}.input_layernorm.weight"] = np.ones(16, np.float32)
    return out


def _write_model(d, shards: int = 1) -> None:
    from safetensors.numpy import save_file
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(CONFIG))
    state = _state()
    if shards == 1:
        save_file(state, str(d / "model.safetensors"))
        return
    names, weight_map = list(state), {}
    for k in range(shards):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n] for n in names[k::shards]}, str(d / fname))
        weight_map.update(dict.fromkeys(names[k::shards], fname))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.fixture
def memory(tmp_path):
    """(fsspec memory filesystem, a fresh prefix in it), removed afterwards."""
    fs = fsspec.filesystem("memory")
    prefix = f"/paramkit-tests/{tmp_path.name}"
    yield fs, prefix
    if fs.exists(prefix):
        fs.rm(prefix, recursive=True)


def _upload(fs, prefix: str, d) -> str:
    for p in d.iterdir():
        fs.pipe(f"{prefix}/{p.name}", p.read_bytes())
    return f"memory:/{prefix}"


def _doc(report, old=None, new=None) -> dict:
    text = report.to_json()
    if old is not None:
        text = text.replace(old, new)
    d = json.loads(text)
    d.pop("timing")
    d.get("engine", {}).pop("remote", None)
    return d


@pytest.mark.parametrize("stats", [False, True])
@pytest.mark.parametrize("where", ["file", "directory", "directory/", "index"])
def test_memory_store_equals_local(memory, tmp_path, where, stats):
    fs, prefix = memory
    d = tmp_path / "m"
    _write_model(d, 3 if where == "index" else 1)
    base = _upload(fs, prefix, d)
    name = {"file": "/model.safetensors", "directory": "", "directory/": "/",
            "index": "/model.safetensors.index.json"}[where]
    report = paramkit.scan(base + name, stats=stats, backend="numpy")
    remote = _doc(report)
    local = _doc(paramkit.scan(str(d) + name, stats=stats, backend="numpy"), str(d), base)
    transfer = remote.pop("transfer")
    assert remote == local
    assert report.config == CONFIG
    assert transfer["files"] == (5 if where == "index" else 2)      # the weights (3 shards and the index), config.json
    assert ("data" in transfer) == stats


def test_file_url_equals_local(tmp_path):
    d = tmp_path / "f"
    _write_model(d)
    url = f"file://{d}/model.safetensors"
    remote = _doc(paramkit.scan(url, quant="int8_channel", backend="numpy"))
    local = _doc(paramkit.scan(str(d / "model.safetensors"), quant="int8_channel", backend="numpy"),
                 str(d), f"file://{d}")
    remote.pop("transfer")
    assert remote == local


def test_header_is_one_read(memory, tmp_path):
    """The object's size from fs.info, then its first 100,000 bytes in one read hold the safetensors header."""
    fs, prefix = memory
    d = tmp_path / "h"
    _write_model(d)
    (d / "config.json").unlink()
    base = _upload(fs, prefix, d)
    rep = paramkit.scan(f"{base}/model.safetensors", stats=False)
    # info + first window of the weights; info of the absent config.json
    assert rep.transfer["requests"] == 3 and rep.transfer["bytes"] == (d / "model.safetensors").stat().st_size


def test_missing_object_and_prefix(memory):
    fs, prefix = memory
    with pytest.raises(FileNotFoundError):
        paramkit.scan(f"memory:/{prefix}/nothing.safetensors", stats=False)
    fs.mkdir(f"{prefix}/empty")
    with pytest.raises(paramkit.FormatError) as e:
        paramkit.scan(f"memory:/{prefix}/empty/", stats=False)
    assert e.value.code == "no_weights"


def test_changed_between_header_and_data(memory, tmp_path, monkeypatch):
    fs, prefix = memory
    d = tmp_path / "c"
    _write_model(d)
    base = _upload(fs, prefix, d)
    run = stream.remote_run

    def replace_then_run(*a, **kw):
        fs.pipe(f"{prefix}/model.safetensors", (d / "model.safetensors").read_bytes() + b"x")
        return run(*a, **kw)
    monkeypatch.setattr(stream, "remote_run", replace_then_run)
    with pytest.raises(RemoteChanged, match="changed since its header was read"):
        paramkit.scan(f"{base}/model.safetensors", backend="numpy")


def test_missing_fsspec_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)
    monkeypatch.setitem(sys.modules, "fsspec.core", None)
    monkeypatch.setitem(sys.modules, "fsspec.registry", None)
    with pytest.raises(ImportError, match=r"s3:// URLs needs fsspec.*paramkit\[remote\]"):
        paramkit.scan("s3://bucket/model.safetensors", stats=False)


def test_missing_store_package_names_it(monkeypatch):
    """A store fsspec knows whose package is not installed (as s3fs for s3://): the error names the package."""
    from fsspec.registry import known_implementations
    monkeypatch.setitem(known_implementations, "pkstore", {"class": "paramkit_absent_store.StoreFS",
                                                           "err": "Install paramkit_absent_store to access pkstore"})
    with pytest.raises(ImportError, match=r"needs the package 'paramkit_absent_store'.*pip install "
                                          r"paramkit_absent_store"):
        paramkit.scan("pkstore://bucket/model.safetensors", stats=False)


def test_unknown_scheme(monkeypatch):
    with pytest.raises(ValueError, match="no fsspec filesystem for nosuchstore://"):
        paramkit.scan("nosuchstore://bucket/model.safetensors", stats=False)


def test_header_cache_revalidates_an_object_store_url_by_its_info(memory, tmp_path, monkeypatch):
    """PARAMKIT_HEADER_CACHE on: the second header-only scan of an unchanged memory:// object reads no byte range
    (its fs.info, made at every open, is the revalidation); a replaced object is read again."""
    fs, prefix = memory
    _write_model(tmp_path / "m")
    url = _upload(fs, prefix, tmp_path / "m") + "/model.safetensors"
    monkeypatch.setenv("PARAMKIT_HEADER_CACHE", str(tmp_path / "cache"))
    reads = []
    real = type(fs).cat_file

    def counted(self, path, start=None, end=None, **kw):
        reads.append((path, start, end))
        return real(self, path, start=start, end=end, **kw)
    monkeypatch.setattr(type(fs), "cat_file", counted)
    first = paramkit.scan(url, stats=False)
    assert reads and os.listdir(tmp_path / "cache")
    reads.clear()
    second = paramkit.scan(url, stats=False)
    assert [r for r in reads if r[0].endswith("model.safetensors")] == []
    assert second.transfer["bytes"] < first.transfer["bytes"]
    assert _doc(second)["tensors"] == _doc(first)["tensors"]
    import time
    time.sleep(0.01)                       # a new modification time for the replaced object
    _write_model(tmp_path / "m2")
    from safetensors.numpy import save_file
    save_file({"other": np.ones(3, np.float32)}, str(tmp_path / "m2" / "model.safetensors"))
    fs.pipe(f"{prefix}/model.safetensors", (tmp_path / "m2" / "model.safetensors").read_bytes())
    reads.clear()
    third = paramkit.scan(url, stats=False)
    assert [t.name for t in third.tensors] == ["other"] and reads
