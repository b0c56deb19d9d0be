"""Full statistics over the network (paramkit.remote.stream) against a loopback range server: for safetensors, a
PyTorch zip (shared storages, strided views), NumPy archives (stored and deflated) and GGUF block types, every
backend's statistics and quantization errors over a URL equal the local scan of the same file exactly, with a
window small enough to need many batches and requests; the bounds (requests in flight, request sizes, the window)
hold, progress counts the bytes fetched, and faults in the middle of the stream are retried or reported."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("urllib3")   # the remote extra; listed in the test extra, so CI runs these

import paramkit                                                   # noqa: E402
import paramkit.remote.http as rh                                 # noqa: E402
from conftest import NATIVE_BACKENDS                              # noqa: E402
from http_server import FakeHub, Fault                            # noqa: E402
from paramkit.remote import stream                                # noqa: E402

BACKENDS = ["numpy", *NATIVE_BACKENDS]
SMALL = stream.StreamOptions(window=256 << 10, max_window=8 << 20, chunk=64 << 10, in_flight=3, merge_gap=4 << 10)


@pytest.fixture
def small(monkeypatch):
    """A 256 KiB window, 64 KiB requests, 3 in flight: the test files need many batches and requests."""
    monkeypatch.setattr(stream, "DEFAULTS", SMALL)
    return SMALL


def _rng(seed=0):
    return np.random.default_rng(seed)


def _write_safetensors(d) -> str:
    import torch
    from safetensors.torch import save_file
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    state = {"embed.weight": torch.randn(300, 500, generator=g)}          # 600,000 bytes: more than the window
    for i in range(12):
        state[f"layers.{i}.w"] = torch.randn(64, 96, generator=g).to(torch.bfloat16)
        state[f"layers.{i}.h"] = torch.randn(40, 64, generator=g).to(torch.float16)
        state[f"layers.{i}.norm"] = torch.ones(64)
    special = torch.randn(32, 32, generator=g)
    special[0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e-42])
    state["special"] = special
    state["ids"] = torch.arange(1000, dtype=torch.int32)
    state["mask"] = torch.tensor([True, False] * 50)
    state["empty"] = torch.zeros(0, 8)
    save_file(state, str(d / "model.safetensors"))
    return "model.safetensors"


def _write_torch(d) -> str:
    import torch
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    base = torch.randn(200, 300, generator=g)
    state = {"w": base, "w_tail": base[50:],                     # one storage, two tensors
             "w_t": torch.randn(120, 80, generator=g).t(),        # a strided view: its whole storage is read
             "tied_a": torch.randn(64, 64, generator=g).to(torch.bfloat16)}
    state["tied_b"] = state["tied_a"]
    for i in range(6):
        state[f"blk.{i}"] = torch.randn(48, 64, generator=g).to(torch.float16)
    torch.save(state, str(d / "pytorch_model.bin"))
    return "pytorch_model.bin"


def _write_npz(d, compressed: bool) -> str:
    d.mkdir(parents=True, exist_ok=True)
    arrays = {f"a{i}": _rng(i).standard_normal((100, 120)).astype(np.float32) for i in range(8)}
    arrays["big_endian"] = _rng(9).standard_normal((50, 60)).astype(">f4")
    (np.savez_compressed if compressed else np.savez)(str(d / "w.npz"), **arrays)
    return "w.npz"


def _write_gguf(d) -> str:
    import gguf
    from paramkit.ggml_types import GGML_TYPES
    size = {g.name: g.type_size for g in GGML_TYPES.values()}
    d.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(d / "model.gguf"), "llama")
    rng = _rng(5)
    for name, qtype, rows, blocks in [("q8", "Q8_0", 64, 16), ("q4", "Q4_0", 64, 16), ("q4k", "Q4_K", 16, 4),
                                      ("q6k", "Q6_K", 16, 4), ("iq2", "IQ2_XXS", 8, 2)]:
        raw = rng.integers(0, 256, size=(rows, blocks * size[qtype]), dtype=np.uint8)
        if qtype in ("Q8_0", "Q4_0"):   # finite f16 scales
            raw.reshape(rows, blocks, size[qtype])[..., :2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType[qtype])
    w.add_tensor("token_embd.weight", rng.standard_normal((256, 128)).astype(np.float32))
    w.add_tensor("norm", np.ones(128, np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return "model.gguf"


WRITERS = {"safetensors": _write_safetensors, "pytorch": _write_torch, "npz": lambda d: _write_npz(d, False),
           "npz-deflated": lambda d: _write_npz(d, True), "gguf": _write_gguf}


def _doc(report, local_dir=None, base=None) -> dict:
    """The report as strict JSON with its histograms (NaN as strings, so equal reports compare equal), timing
    dropped, the local directory written as the URL's."""
    text = report.to_json(histograms=True)
    if local_dir is not None:
        text = text.replace(str(local_dir), base)
    d = json.loads(text)
    d.pop("timing")
    return d


def _remote_equals_local(server, d, name, **kw) -> tuple[dict, dict]:
    """(remote report dict, its transfer) after checking it equals the local one but for transfer and the engine's
    counts of how it ran (units, threads, device memory held: per batch); its ISA, block types and fallback equal."""
    base = server.add_dir(d.name, str(d))
    remote = _doc(paramkit.scan(f"{base}/{name}", **kw))
    local = _doc(paramkit.scan(str(d / name), **kw), d, base)
    transfer = remote.pop("transfer")
    info = remote["engine"].pop("remote")
    for doc in (remote, local):
        doc["engine"] = {k: v for k, v in doc["engine"].items() if k in ("isa", "block_types", "fallback")}
    assert remote == local
    return remote, {**transfer, "window": info}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(WRITERS))
def test_remote_statistics_equal_local(server, small, tmp_path, kind, backend):
    """Statistics and the default quantization schemes (int8_tensor's second pass included) bit for bit equal to
    the local scan's, fetched in many batches of at most 64 KiB requests, 3 at a time."""
    d = tmp_path / kind
    name = WRITERS[kind](d)
    report, transfer = _remote_equals_local(server, d, name, backend=backend, quant="default")
    assert any(t["stats"] for t in report["tensors"])
    assert any(t["histogram"] for t in report["tensors"])     # the histograms too
    assert any(t.get("quant") for t in report["tensors"])
    got = server.requests(f"{d.name}/{name}")
    data = transfer["data"]
    size = (d / name).stat().st_size
    assert data["requests"] > 2 and data["bytes"] <= size and transfer["window"]["batches"] > 1
    assert all(int(e) - int(s) + 1 <= 100_000 for s, e in (r.headers["range"][6:].split("-") for r in got))
    assert server.max_inflight <= SMALL.in_flight
    assert transfer["requests"] == len(server.requests())
    assert transfer["bytes"] == sum(r.nbytes for r in server.requests() if 200 <= r.status < 300)


def test_data_requests_are_the_tensor_bytes(server, small, tmp_path):
    """safetensors: the data pass asks for the data section only (after the 8 + N header bytes), in requests of
    at most the chunk size, each byte once; the window grew to the largest tensor (600,000 bytes)."""
    d = tmp_path / "st"
    name = _write_safetensors(d)
    _, transfer = _remote_equals_local(server, d, name, backend="numpy")
    raw = (d / name).read_bytes()
    header = 8 + int.from_bytes(raw[:8], "little")
    data = [r for r in server.requests(f"st/{name}")][1:]        # after the header's request
    spans = sorted(tuple(int(x) for x in r.headers["range"][6:].split("-")) for r in data)
    assert spans[0][0] >= header and spans[-1][1] == len(raw) - 1
    assert all(b - a + 1 <= SMALL.chunk for a, b in spans)
    assert all(spans[k][1] < spans[k + 1][0] for k in range(len(spans) - 1))        # no byte twice
    assert sum(b - a + 1 for a, b in spans) == transfer["data"]["bytes"] == len(raw) - header
    assert transfer["window"]["window_bytes"] == 300 * 500 * 4


def test_tensors_option_fetches_only_those(server, small, tmp_path):
    d = tmp_path / "sel"
    name = _write_safetensors(d)
    _, transfer = _remote_equals_local(server, d, name, backend="cpu" if "cpu" in BACKENDS else "numpy",
                                       tensors=r"layers\.3\.")
    assert transfer["data"]["bytes"] == 64 * 96 * 2 + 40 * 64 * 2 + 64 * 4


def test_quant_without_stats_reads_only_quantized_tensors(server, small, tmp_path):
    d = tmp_path / "q"
    name = _write_safetensors(d)
    _, transfer = _remote_equals_local(server, d, name, backend="numpy", stats=False, quant="int8_channel",
                                       quant_tensors=r"^layers\.0\.w$")
    assert transfer["data"]["bytes"] == 64 * 96 * 2


def test_progress_counts_bytes_fetched(server, small, tmp_path):
    d = tmp_path / "p"
    name = _write_safetensors(d)
    base = server.add_dir("p", str(d))
    calls = []
    rep = paramkit.scan(f"{base}/{name}", backend="numpy", progress=lambda done, total: calls.append((done, total)))
    total = rep.transfer["data"]["bytes"]
    assert len(calls) == rep.transfer["data"]["requests"]
    assert all(t == total for _, t in calls)
    assert [c for c, _ in calls] == sorted(c for c, _ in calls) and calls[-1][0] == total


def test_a_tensor_larger_than_the_window_limit_is_refused(server, monkeypatch, tmp_path):
    """The engines read a tensor whole: one larger than PARAMKIT_REMOTE_MAX_WINDOW_MB is a MemoryError naming it
    and the setting, before any of its bytes are fetched."""
    from safetensors.numpy import save_file
    d = tmp_path / "big"
    d.mkdir()
    save_file({"small": np.ones(10, np.float32), "huge": np.ones((1024, 300), np.float32)},
              str(d / "model.safetensors"))
    base = server.add_dir("big", str(d))
    monkeypatch.setattr(stream, "DEFAULTS", SMALL)
    monkeypatch.setenv("PARAMKIT_REMOTE_MAX_WINDOW_MB", "1")
    with pytest.raises(MemoryError, match=r"'huge' needs 1,228,800 bytes.*PARAMKIT_REMOTE_MAX_WINDOW_MB"):
        paramkit.scan(f"{base}/model.safetensors", backend="numpy")
    assert len(server.requests("big/model.safetensors")) == 1     # the header only


def test_environment_options(monkeypatch):
    monkeypatch.setenv("PARAMKIT_REMOTE_WINDOW_MB", "64")
    monkeypatch.setenv("PARAMKIT_REMOTE_IN_FLIGHT", "2")
    o = stream.StreamOptions.from_env()
    assert o.window == 64 << 20 and o.in_flight == 2 and o.chunk == 16 << 20
    monkeypatch.setenv("PARAMKIT_REMOTE_CHUNK_MB", "0")
    with pytest.raises(ValueError, match="PARAMKIT_REMOTE_CHUNK_MB"):
        stream.StreamOptions.from_env()


def _data_fault(server, path: str, *faults: Fault) -> None:
    """Faults for the data requests of `path`: its first request is the header read, answered as usual."""
    server.fault(path, Fault("pass"), *faults)


@pytest.mark.parametrize("fault", [Fault("truncate"), Fault("reset"), Fault("status", 500), Fault("status", 503)])
def test_faults_mid_stream_are_retried(server, small, sleeps, tmp_path, fault):
    """A body cut short, a reset connection, 500 and 503 answers on data requests, twice each: retried with
    backoff, and the statistics are still the local ones."""
    d = tmp_path / "f"
    name = _write_safetensors(d)
    _data_fault(server, f"f/{name}", Fault("pass"), fault, fault)
    _, transfer = _remote_equals_local(server, d, name, backend="numpy")
    assert transfer["retries"] == transfer["data"]["retries"] == 2 and len(sleeps) == 2


def test_object_changed_mid_stream(server, small, sleeps, tmp_path):
    """The ETag changes after a few data requests: RemoteChanged (an OSError) naming the URL, not statistics of
    a mix of two objects."""
    d = tmp_path / "c"
    name = _write_safetensors(d)
    base = server.add_dir("c", str(d))
    _data_fault(server, f"c/{name}", Fault("pass"), Fault("pass"), Fault("etag", headers={"ETag": '"other"'}))
    with pytest.raises(rh.RemoteChanged, match="changed while it was read") as e:
        paramkit.scan(f"{base}/{name}", backend="numpy")
    assert e.value.url == f"{base}/{name}"


def test_object_changed_between_header_and_data(server, small, sleeps, tmp_path):
    d = tmp_path / "c2"
    name = _write_safetensors(d)
    base = server.add_dir("c2", str(d))
    _data_fault(server, f"c2/{name}", Fault("etag", headers={"ETag": '"new"'}))
    with pytest.raises(rh.RemoteChanged):
        paramkit.scan(f"{base}/{name}", backend="numpy")


def test_short_body_mid_stream_is_an_error(server, small, sleeps, tmp_path):
    d = tmp_path / "s"
    name = _write_safetensors(d)
    base = server.add_dir("s", str(d))
    _data_fault(server, f"s/{name}", Fault("short"))
    with pytest.raises(rh.RemoteError, match="short body"):
        paramkit.scan(f"{base}/{name}", backend="numpy")


def test_persistent_failure_stops_the_scan(server, small, sleeps, tmp_path):
    d = tmp_path / "e"
    name = _write_safetensors(d)
    base = server.add_dir("e", str(d))
    _data_fault(server, f"e/{name}", *[Fault("status", 500)] * 50)
    with pytest.raises(rh.RemoteError, match="HTTP 500"):
        paramkit.scan(f"{base}/{name}", backend="numpy")


def test_hub_statistics_token_stays_on_the_hub(server, small, tmp_path, monkeypatch):
    """hf:// with stats: the data requests follow the resolve redirect to the CDN without the token."""
    hub = FakeHub(server)
    try:
        d = tmp_path / "hubsrc"
        name = _write_safetensors(d)
        hub.add_repo("org/gated", {name: (d / name).read_bytes()}, gated=True)
        monkeypatch.setenv("HF_ENDPOINT", hub.base)
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        remote = _doc(paramkit.scan("hf://org/gated", backend="numpy"))
        local = _doc(paramkit.scan(str(d / name), backend="numpy"))
        for t_r, t_l in zip(remote["tensors"], local["tensors"]):
            assert t_r["stats"] == t_l["stats"]
        assert remote["transfer"]["data"]["requests"] > 1
        assert all("authorization" not in r.headers for r in server.requests())
        assert all(r.headers.get("authorization") == "Bearer hf_secret" for r in hub.requests())
    finally:
        hub.close()


def test_cli_scan_and_quant_of_a_url(server, small, tmp_path, capsys):
    from paramkit.cli import main
    d = tmp_path / "cli"
    name = _write_safetensors(d)
    base = server.add_dir("cli", str(d))
    assert main(["scan", f"{base}/{name}", "--json", "--backend", "numpy"]) == 0
    out = json.loads(capsys.readouterr().out)
    local = _doc(paramkit.scan(str(d / name), backend="numpy"))
    assert [t["stats"] for t in out["tensors"]] == [t["stats"] for t in local["tensors"]]
    assert out["transfer"]["data"]["bytes"] > 0
    assert main(["quant", f"{base}/{name}", "--schemes", "q8_0", "--backend", "numpy"]) == 0
    assert "q8_0" in capsys.readouterr().out
