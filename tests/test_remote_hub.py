"""hf:// addresses against a fake hub on loopback (HF_ENDPOINT): public, gated (401/403) and sharded repositories,
revisions, subfolders and single files, the local resolver's precedence over a repository's file list, tokens from
HF_TOKEN or the stored login that reach the hub's host only (never the CDN its resolve URLs redirect to), and
crafted indexes that try to leave the repository."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("urllib3")   # the remote extra; listed in the test extra, so CI runs these

import paramkit                                                   # noqa: E402
from http_server import FakeHub, RangeServer                      # noqa: E402
from paramkit import FormatError                                  # noqa: E402
from paramkit.remote import hub as hub_mod                        # noqa: E402
from test_remote_scan import _write_gguf, _write_safetensors, _write_torch   # noqa: E402


@pytest.fixture
def hub(monkeypatch, tmp_path):
    cdn = RangeServer()
    h = FakeHub(cdn)
    monkeypatch.setenv("HF_ENDPOINT", h.base)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))      # no stored login unless a test writes one
    yield h
    h.close()
    cdn.close()


def _files(d) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            out[os.path.relpath(p, d).replace(os.sep, "/")] = open(p, "rb").read()
    return out


def _same_as_local(hub, address: str, repo: str, sha: str, local: str, local_dir: str) -> dict:
    """The hf:// report (header-only) equals the local scan of the same files, paths aside; its transfer."""
    remote = paramkit.scan(address, stats=False).to_dict()
    want = paramkit.scan(local, stats=False).to_dict()
    transfer = remote.pop("transfer")
    assert remote.pop("path") == address
    want.pop("path")
    for d in (remote, want):
        d.pop("timing")
    want = json.loads(json.dumps(want).replace(local_dir, f"{hub.base}/{repo}/resolve/{sha}"))
    assert remote == want
    assert transfer["hub"] == {"repo": repo, "revision": address.partition("@")[2].split("/")[0] or "main",
                               "commit": sha}
    return transfer


def test_public_repo_single_file(hub, tmp_path):
    d = tmp_path / "tiny"
    _write_safetensors(d)
    sha = hub.add_repo("org/tiny", _files(d))
    t = _same_as_local(hub, "hf://org/tiny", "org/tiny", sha, str(d), str(d))
    assert t["retries"] == 0
    weights = [r for r in hub.log if r.path.endswith("/model.safetensors")]
    cdn = hub.cdn.requests(f"org/tiny/{sha}/model.safetensors")
    assert len(weights) + len(cdn) <= 2          # header-only: the resolve redirect and one range GET
    # every request: the API, then a resolve redirect and a CDN range GET per file (weights, config.json)
    assert t["requests"] == len(hub.log) + len(hub.cdn.log) == 5


def test_sharded_repo_and_precedence(hub, tmp_path):
    """A repository with a safetensors index, its shards, a .bin and a .gguf: the index wins, as locally, and
    the other formats' files are listed as ignored."""
    d = tmp_path / "sharded"
    _write_safetensors(d, 3)
    _write_torch(d)
    _write_gguf(d)
    sha = hub.add_repo("org/sharded", _files(d))
    r = paramkit.scan("hf://org/sharded", stats=False)
    assert len(r.files) == 3 and {os.path.basename(f["file"]) for f in r.ignored_files} == {"pytorch_model.bin",
                                                                                             "model.gguf"}
    _same_as_local(hub, "hf://org/sharded", "org/sharded", sha, str(d), str(d))


def test_revisions(hub, tmp_path):
    d1, d2 = tmp_path / "r1", tmp_path / "r2"
    _write_safetensors(d1)
    _write_safetensors(d2, 2)
    sha1 = hub.add_repo("org/rev", _files(d1))
    sha2 = hub.add_repo("org/rev", _files(d2), revision="v2.0")
    _same_as_local(hub, "hf://org/rev", "org/rev", sha1, str(d1), str(d1))
    _same_as_local(hub, "hf://org/rev@v2.0", "org/rev", sha2, str(d2), str(d2))
    # a commit as the revision
    assert paramkit.scan(f"hf://org/rev@{sha2}", stats=False).files[0].startswith(
        f"{hub.base}/org/rev/resolve/{sha2}/")
    with pytest.raises(FileNotFoundError, match="404"):
        paramkit.scan("hf://org/rev@nope", stats=False)


def test_subfolders_and_files(hub, tmp_path):
    d = tmp_path / "multi"
    _write_safetensors(d / "text")
    _write_gguf(d / "gguf")
    sha = hub.add_repo("org/multi", _files(d))
    _same_as_local(hub, "hf://org/multi/text", "org/multi", sha, str(d / "text"), str(d))
    _same_as_local(hub, "hf://org/multi/gguf", "org/multi", sha, str(d / "gguf"), str(d))
    _same_as_local(hub, "hf://org/multi@main/gguf/model.gguf", "org/multi", sha, str(d / "gguf" / "model.gguf"),
                   str(d))
    with pytest.raises(FileNotFoundError, match="no file or folder"):
        paramkit.scan("hf://org/multi/other", stats=False)
    with pytest.raises(FormatError) as e:
        paramkit.scan("hf://org/multi", stats=False)      # the root holds no weights
    assert e.value.code == "no_weights"


def test_gated_repo(hub, tmp_path, monkeypatch):
    d = tmp_path / "gated"
    _write_safetensors(d)
    hub.add_repo("org/gated", _files(d), gated=True)
    with pytest.raises(PermissionError, match="401") as e:
        paramkit.scan("hf://org/gated", stats=False)
    assert "HF_TOKEN" in str(e.value)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(PermissionError, match="403"):
        paramkit.scan("hf://org/gated", stats=False)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    hub.cdn.clear_log()
    assert paramkit.scan("hf://org/gated", stats=False).total_params > 0
    assert hub.cdn.log and all("authorization" not in r.headers for r in hub.cdn.log)
    assert all(r.headers.get("authorization") == f"Bearer {hub.token}" for r in hub.log[-3:])


def test_token_from_the_stored_login(hub, tmp_path, monkeypatch):
    d = tmp_path / "gated2"
    _write_safetensors(d)
    hub.add_repo("org/gated2", _files(d), gated=True)
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text(hub.token + "\n")
    assert hub_mod.token() == hub.token
    assert paramkit.scan("hf://org/gated2", stats=False).total_params > 0
    assert all("authorization" not in r.headers for r in hub.cdn.log)


def test_missing_repo(hub):
    with pytest.raises(FileNotFoundError, match="not found"):
        paramkit.scan("hf://org/none", stats=False)


@pytest.mark.parametrize("value", ["../../other/resolve/main/model.safetensors", "http://127.0.0.1:9/x.safetensors",
                                   "/org/other/resolve/main/model.safetensors"])
def test_index_leaving_the_repository(hub, tmp_path, monkeypatch, value):
    """huggingface_hub's bug: a crafted index sent the caller's token to another repository. Here it is a
    FormatError before any request for a shard."""
    d = tmp_path / "crafted"
    _write_safetensors(d, 2)
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"]["model.norm.weight"] = value
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    hub.add_repo("org/crafted", _files(d))
    monkeypatch.setenv("HF_TOKEN", hub.token)
    with pytest.raises(FormatError) as e:
        paramkit.scan("hf://org/crafted", stats=False)
    assert e.value.code == "shard_outside_model"
    assert not any(r.path.endswith("-of-00002.safetensors") for r in hub.log + hub.cdn.log)


def test_index_naming_a_file_the_repository_lacks(hub, tmp_path):
    d = tmp_path / "lacking"
    _write_safetensors(d, 2)
    files = _files(d)
    del files["model-00002-of-00002.safetensors"]
    hub.add_repo("org/lacking", files)
    with pytest.raises(FormatError) as e:
        paramkit.scan("hf://org/lacking", stats=False)
    assert e.value.code == "shard_missing"
    assert not any(r.path.endswith("model-00002-of-00002.safetensors") for r in hub.log + hub.cdn.log)


def test_addresses():
    assert hub_mod.parse("hf://org/model") == ("org/model", "main", "")
    assert hub_mod.parse("hf://org/model@v1/sub/f.gguf") == ("org/model", "v1", "sub/f.gguf")
    assert hub_mod.parse("hf://org/model@refs/pr/3/f.gguf") == ("org/model", "refs/pr/3", "f.gguf")
    assert hub_mod.parse("hf://org/model@a%2Fb") == ("org/model", "a/b", "")
    for bad in ("hf://model", "hf://org/model/../x", "hf:///x"):
        with pytest.raises(ValueError):
            hub_mod.parse(bad)


def test_cli_scan_of_a_hub_address(hub, tmp_path, capsys):
    from paramkit.cli import main
    d = tmp_path / "clihub"
    _write_safetensors(d)
    hub.add_repo("org/cli", _files(d))
    assert main(["scan", "hf://org/cli", "--no-stats", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total_params"] == int(sum(np.prod(a.shape) for a in _state_arrays()))
    assert main(["plan", "hf://org/cli"]) == 0
    assert main(["scan", "hf://org/none", "--no-stats"]) == 1
    assert "not found" in capsys.readouterr().err


def _state_arrays():
    from test_remote_scan import _state
    return list(_state().values())
