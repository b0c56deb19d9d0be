"""scan() and the resolver over http(s) URLs, against a loopback range server: every format's header-only report
equals the local scan of the same files (but for the paths and the new transfer key), with the requests counted;
indexes fetched whole with shards resolved beside them (concurrently) and names that leave the directory refused;
the CLI's scan and plan of a URL."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("urllib3")   # the remote extra; listed in the test extra, so CI runs these

import paramkit                                                   # noqa: E402
from http_server import RangeServer                               # noqa: E402
from paramkit import FormatError                                  # noqa: E402

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16, "num_hidden_layers": 2,
          "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 32, "vocab_size": 64,
          "tie_word_embeddings": True, "torch_dtype": "float32"}


def _state(seed: int = 0, layers: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"model.embed_tokens.weight": rng.standard_normal((64, 16)).astype(np.float32)}
    for i in range(layers):
        out[f"model.layers.{i}.self_attn.q_proj.weight"] = rng.standard_normal((16, 16)).astype(np.float16)
        out[f"model.layers.{i}.mlp.up_proj.weight"] = rng.standard_normal((32, 16)).astype(np.float32)
        out[f"model.layers.{i}.input_layernorm.weight"] = np.ones(16, np.float32)
    out["model.norm.weight"] = np.ones(16, np.float32)
    return out


def _save_shards(state: dict, shards: int, name: str, save) -> dict[str, str]:
    """Write `state` as `shards` files (tensors dealt round-robin) with save(part, file name); the weight_map."""
    names = list(state)
    weight_map = {}
    for k in range(shards):
        fname = name.format(k + 1, shards)
        part = {n: state[n] for n in names[k::shards]}
        save(part, fname)
        weight_map.update(dict.fromkeys(part, fname))
    return weight_map


def _write_safetensors(d, shards: int = 1, config: bool = True) -> str:
    from safetensors.numpy import save_file
    d.mkdir(parents=True, exist_ok=True)
    state = _state()
    if config:
        (d / "config.json").write_text(json.dumps(CONFIG))
    if shards == 1:
        save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
        return "model.safetensors"
    weight_map = _save_shards(state, shards, "model-{:05d}-of-{:05d}.safetensors",
                              lambda part, f: save_file(part, str(d / f), metadata={"format": "pt"}))
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map":
                                                                weight_map}))
    return "model.safetensors.index.json"


def _write_torch(d, shards: int = 1) -> str:
    import torch
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(CONFIG))
    state = {k: torch.from_numpy(v) for k, v in _state(1).items()}
    if shards == 1:
        torch.save(state, str(d / "pytorch_model.bin"))
        return "pytorch_model.bin"
    weight_map = _save_shards(state, shards, "pytorch_model-{:05d}-of-{:05d}.bin",
                              lambda part, f: torch.save(part, str(d / f)))
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return "pytorch_model.bin.index.json"


def _write_npz(d, compressed: bool = False) -> str:
    d.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(str(d / "weights.npz"), **_state(2))
    return "weights.npz"


def _write_npy(d) -> str:
    d.mkdir(parents=True, exist_ok=True)
    np.save(str(d / "w.npy"), np.arange(12, dtype=np.float32).reshape(3, 4))
    return "w.npy"


def _write_gguf(d, tokens: int = 10) -> str:
    import gguf
    d.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(d / "model.gguf"), "llama")
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_embedding_length(16)
    w.add_head_count(2)
    w.add_token_list([f"token-{i}" for i in range(tokens)])
    for name, arr in {"token_embd.weight": np.ones((64, 16), np.float32),
                      "blk.0.attn_q.weight": np.ones((16, 16), np.float16),
                      "output_norm.weight": np.ones(16, np.float32)}.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return "model.gguf"


def _serve(server, d) -> str:
    return server.add_dir(d.name, str(d))


def _scan_both(server, d, name: str) -> tuple[dict, dict]:
    """(remote report dict without timing, its transfer) after checking it equals the local one with the
    directory's path replaced by its URL."""
    base = _serve(server, d)
    remote = paramkit.scan(f"{base}/{name}", stats=False).to_dict()
    local = paramkit.scan(str(d / name), stats=False).to_dict()
    transfer = remote.pop("transfer")
    assert "transfer" not in local
    remote.pop("timing")
    local.pop("timing")
    local = json.loads(json.dumps(local).replace(str(d), base))
    assert remote == local
    return remote, transfer


WRITERS = {"safetensors": _write_safetensors, "safetensors-sharded": lambda d: _write_safetensors(d, 3),
           "pytorch": _write_torch, "pytorch-sharded": lambda d: _write_torch(d, 2), "npz": _write_npz,
           "npz-deflated": lambda d: _write_npz(d, True), "npy": _write_npy, "gguf": _write_gguf}


@pytest.mark.parametrize("kind", list(WRITERS))
def test_remote_report_equals_local(server, tmp_path, kind):
    """Every format paramkit reads: the header-only report of the URL is the local one; each file smaller than
    the first window (100,000 bytes) costs one request, and the report's transfer counts what the server saw."""
    d = tmp_path / kind
    name = WRITERS[kind](d)
    report, transfer = _scan_both(server, d, name)
    assert report["total_params"] > 0
    seen = server.requests()
    assert transfer["requests"] == len(seen)
    assert transfer["bytes"] == sum(r.nbytes for r in seen if 200 <= r.status < 300)   # bodies of answers used
    assert transfer["retries"] == 0
    per_file: dict[str, int] = {}
    for r in seen:
        per_file[r.path] = per_file.get(r.path, 0) + 1
    assert all(n == 1 for n in per_file.values()), per_file
    assert transfer["files"] == len(per_file)
    assert all(r.headers.get("range", "").startswith("bytes=0-") for r in seen)


def test_safetensors_header_only_at_most_two_requests_per_file(server, tmp_path):
    """A header longer than the first window: two requests for the weight file, none of its data beyond it."""
    from safetensors.numpy import save_file
    d = tmp_path / "long"
    d.mkdir()
    state = {f"model.layers.{i}.mlp.experts.{j}.w": np.zeros(2, np.float32) for i in range(40) for j in range(60)}
    save_file(state, str(d / "model.safetensors"))
    _, transfer = _scan_both(server, d, "model.safetensors")
    header = 8 + int.from_bytes((d / "model.safetensors").read_bytes()[:8], "little")
    assert header > 100_000
    weights = server.requests("long/model.safetensors")
    assert len(weights) == 2 and weights[0].headers["range"] == "bytes=0-99999"
    assert weights[1].headers["range"] == f"bytes=100000-{header - 1}"


def test_gguf_header_in_growing_ranges(server, tmp_path):
    """A GGUF whose tokenizer makes the header megabytes long: a few requests of growing size, not one per
    read of its sequential reader."""
    d = tmp_path / "gg"
    name = _write_gguf(d, tokens=200_000)
    size = (d / name).stat().st_size
    assert size > 2_000_000
    _scan_both(server, d, name)
    got = server.requests(f"gg/{name}")
    assert len(got) <= 1 + math.ceil(math.log2(size / 100_000))
    assert sum(r.nbytes for r in got) <= size


def test_shards_fetched_concurrently(server, tmp_path):
    d = tmp_path / "sh"
    name = _write_safetensors(d, 4)
    server.delay = 0.2
    _scan_both(server, d, name)
    assert server.max_inflight >= 2


@pytest.mark.parametrize("value", ["../other/model.safetensors", "/abs/model.safetensors", "sub/../../x.safetensors",
                                   "EVIL", "//EVILHOST/x.safetensors", "a\\..\\..\\x.safetensors",
                                   "./model.safetensors"])
def test_index_names_leaving_the_directory_refused(server, tmp_path, value):
    """A crafted remote index must not send a request (or a token) elsewhere: FormatError shard_outside_model,
    and no request for any shard."""
    evil = RangeServer()
    try:
        value = value.replace("EVILHOST", f"127.0.0.1:{evil.port}").replace("EVIL", evil.url("model.safetensors"))
        d = tmp_path / "bad"
        _write_safetensors(d)
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "model.norm.weight": "model.safetensors", "model.embed_tokens.weight": value}}))
        base = _serve(server, d)
        with pytest.raises(FormatError) as e:
            paramkit.scan(f"{base}/model.safetensors.index.json", stats=False)
        assert e.value.code == "shard_outside_model" and e.value.tensor == "model.embed_tokens.weight"
        assert [r.path for r in server.requests()] == ["/bad/model.safetensors.index.json"]
        assert evil.requests() == []
    finally:
        evil.close()


def test_remote_shard_missing(server, tmp_path):
    d = tmp_path / "miss"
    name = _write_safetensors(d, 2)
    (d / "model-00002-of-00002.safetensors").unlink()
    base = _serve(server, d)
    with pytest.raises(FormatError) as e:
        paramkit.scan(f"{base}/{name}", stats=False)
    assert e.value.code == "shard_missing" and e.value.path == f"{base}/model-00002-of-00002.safetensors"


def test_missing_file_and_directory_urls(server, tmp_path):
    with pytest.raises(FileNotFoundError):
        paramkit.scan(server.url("nothing/model.safetensors"), stats=False)
    with pytest.raises(FormatError) as e:
        paramkit.scan(server.url("nothing") + "/", stats=False)
    assert e.value.code == "url_not_a_file"


def test_signed_url_has_no_sibling_config(server, tmp_path):
    """A URL with a query string (a signed URL) has no address for a config.json beside it: none is asked for."""
    d = tmp_path / "signed"
    _write_safetensors(d)
    base = _serve(server, d)
    r = paramkit.scan(f"{base}/model.safetensors?X-Signature=1", stats=False)
    assert r.config is None and [q.path for q in server.requests()] == ["/signed/model.safetensors"]


def test_plan_of_a_url(server, tmp_path):
    d = tmp_path / "pl"
    name = _write_safetensors(d)
    base = _serve(server, d)
    remote = paramkit.plan(f"{base}/{name}").to_dict()
    assert remote == paramkit.plan(str(d / name)).to_dict()


def test_cli_scan_and_plan_of_a_url(server, tmp_path, capsys):
    from paramkit.cli import main
    d = tmp_path / "cli"
    name = _write_safetensors(d, 2)
    base = _serve(server, d)
    assert main(["scan", f"{base}/{name}", "--no-stats", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["transfer"]["requests"] == len(server.requests()) == 4
    assert out["total_params"] == paramkit.scan(str(d / name), stats=False).total_params
    assert main(["scan", f"{base}/{name}", "--no-stats"]) == 0
    assert "parameters" in capsys.readouterr().out
    assert main(["plan", f"{base}/{name}"]) == 0
    assert capsys.readouterr().out
    server.clear_log()
    assert main(["scan", f"{base}/{name}"]) == 0      # statistics over the network (test_remote_stats.py)
    assert "parameters" in capsys.readouterr().out
    assert len(server.requests()) > 4


@pytest.mark.parametrize("kind", ["pytorch", "npz"])
def test_zip_headers_without_the_data(server, tmp_path, kind):
    """A zip (torch.save, np.savez) whose members lie far apart: its directory from the end, the local headers
    (and .npy headers) fetched together ahead of their reads, never the tensor data between them."""
    d = tmp_path / f"zip-{kind}"
    d.mkdir()
    arrays = {f"layer.{i}.w": np.full((128, 256), i, np.float32) for i in range(30)}   # 128 KiB each
    if kind == "pytorch":
        import torch
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, str(d / "pytorch_model.bin"))
        name = "pytorch_model.bin"
    else:
        np.savez(str(d / "w.npz"), **arrays)
        name = "w.npz"
    size = (d / name).stat().st_size
    _, transfer = _scan_both(server, d, name)
    got = server.requests(f"zip-{kind}/{name}")
    assert len(got) <= 2 + len(arrays) + 8          # first bytes, the end, the members' headers
    assert sum(r.nbytes for r in got) < size // 10   # not the data
