"""The format-independent resolver and the data pass over PyTorch and NumPy files: scan() of a torch.save / np.save
file gives the counts and statistics of the same tensors in safetensors, views and byte orders are read as their
values, directories pick one format by precedence and list what they ignore, unsupported formats say so."""
from __future__ import annotations

import json
import math
import os
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import paramkit
from paramkit.formats import open_table

from conftest import available_backends

BACKENDS = available_backends()


def _ref_stats(a: np.ndarray) -> dict:
    x = np.asarray(a, dtype=np.float64).ravel()
    return {"min": float(x.min()), "max": float(x.max()), "mean": float(x.mean()), "std": float(x.std()),
            "zeros": int(np.count_nonzero(x == 0)), "numel": x.size}


def _check(stats: dict, a: np.ndarray, what: str) -> None:
    ref = _ref_stats(a)
    assert stats["min"] == ref["min"] and stats["max"] == ref["max"], what
    assert stats["zeros"] == ref["zeros"], what
    assert stats["mean"] == pytest.approx(ref["mean"], rel=1e-6, abs=1e-12), what
    assert stats["std"] == pytest.approx(ref["std"], rel=1e-6, abs=1e-12), what


def _deflated_copy(src: str, dst: str) -> str:
    """The same zip archive with every member deflated (some tools write torch checkpoints so)."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zo:
        for n in zi.namelist():
            zo.writestr(n, zi.read(n))
    return dst


@pytest.fixture(scope="module")
def minilm_bin(minilm_path, tmp_path_factory) -> str:
    """The real all-MiniLM-L6-v2 weights saved through torch.save."""
    p = str(tmp_path_factory.mktemp("minilm_bin") / "pytorch_model.bin")
    torch.save(load_file(minilm_path), p)
    return p


@pytest.mark.parametrize("backend", BACKENDS)
def test_minilm_bin_equals_the_safetensors_scan(minilm_path, minilm_bin, backend):
    a = paramkit.scan(minilm_path, backend=backend)
    b = paramkit.scan(minilm_bin, backend=backend)
    assert b.format == "pytorch" and a.format == "safetensors"
    assert b.total_params == a.total_params == 22_713_216
    assert b.buffer_elements == a.buffer_elements == 512
    assert b.elements_by_dtype == a.elements_by_dtype
    ta = {t.name: t for t in a.tensors}
    assert {t.name for t in b.tensors} == set(ta)
    for t in b.tensors:
        assert (t.dtype, t.shape, t.role) == (ta[t.name].dtype, ta[t.name].shape, ta[t.name].role), t.name
        assert t.stats == ta[t.name].stats, t.name          # the same bytes, so the same bits
    assert b.aggregates == a.aggregates


@pytest.mark.parametrize("backend", BACKENDS)
def test_minilm_bin_quant_equals_the_safetensors_scan(minilm_path, minilm_bin, backend):
    a = paramkit.scan(minilm_path, stats=False, quant="q8_0,int8_channel", backend=backend)
    b = paramkit.scan(minilm_bin, stats=False, quant="q8_0,int8_channel", backend=backend)
    qa = {t.name: t.quant for t in a.tensors}
    for t in b.tensors:
        assert t.quant == qa[t.name], t.name


VIEWS_BASE = torch.arange(6 * 8, dtype=torch.float32).reshape(6, 8) / 7 - 3


def _views_checkpoint(path: str) -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(1)
    sd = {
        "plain": torch.randn(5, 7, generator=g),
        "transposed": VIEWS_BASE.t(),                       # strides (1, 8)
        "even_rows": VIEWS_BASE[::2],                       # a strided slice
        "odd_rows": VIEWS_BASE[1::2],                       # another view of the same storage
        "column": VIEWS_BASE[:, 3],                         # stride 8
        "tail": VIEWS_BASE.reshape(-1)[5:29],               # contiguous, at an element offset
        "bf16_t": torch.randn(4, 6, generator=g).to(torch.bfloat16).t(),
        "f16": torch.randn(3, 9, generator=g).to(torch.float16),
        "ints": torch.arange(-10, 14, dtype=torch.int64).reshape(4, 6)[:, ::2],
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
        "mask": torch.tensor([True, False, True, True]),
    }
    torch.save(sd, path)
    return {k: (v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()) for k, v in sd.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("deflated", [False, True], ids=["stored", "deflated"])
def test_torch_views_are_read_as_their_values(tmp_path, backend, deflated):
    p = str(tmp_path / "views.pt")
    ref = _views_checkpoint(p)
    if deflated:
        p = _deflated_copy(p, str(tmp_path / "views_deflated.pt"))
    r = paramkit.scan(p, backend=backend)
    assert r.format == "pytorch"
    for name, a in ref.items():
        t = r.tensor(name)
        assert t.shape == a.shape and t.numel == a.size, name
        if a.size:
            _check(t.stats, a, name)
    layouts = {t.name: t.layout is not None for t in open_table(p).tensors}
    assert layouts["transposed"] and layouts["even_rows"] and layouts["column"]
    assert layouts["plain"] is deflated and layouts["tail"] is deflated   # stored contiguous: read in place


def test_contiguous_views_of_a_deflated_storage_stream_with_bounded_memory(tmp_path):
    """Four contiguous views of one 64 MiB deflated storage are made plain with a few MiB of memory (the member
    is inflated as it is read, once for all four, not held whole), and their bytes are the views' values."""
    import tracemalloc
    from paramkit.materialize import plain_tensors
    base = torch.arange(16 << 20, dtype=torch.float32) % 1013
    parts = {f"part{k}": base[k * (4 << 20):(k + 1) * (4 << 20)] for k in range(4)}
    p = str(tmp_path / "quarters.pt")
    torch.save(parts, p)
    p = _deflated_copy(p, str(tmp_path / "quarters_deflated.pt"))
    table = open_table(p)
    assert all(t.layout is not None and t.layout.blob.compression == "deflate" for t in table.tensors)
    tracemalloc.start()
    try:
        with plain_tensors(table.tensors) as plain:
            peak = tracemalloc.get_traced_memory()[1]
            for t in plain:
                with open(t.file, "rb") as f:
                    f.seek(t.offset)
                    got = np.frombuffer(f.read(t.nbytes), "<f4")
                assert np.array_equal(got, parts[t.name].numpy()), t.name
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, f"{peak / 2**20:.1f} MiB"


def test_torch_views_quantize_as_their_values(tmp_path):
    p = str(tmp_path / "views.pt")
    ref = _views_checkpoint(p)
    r = paramkit.scan(p, stats=False, quant="int8_channel,q8_0", quant_tensors=r"^(transposed|even_rows|plain)$")
    for name in ("transposed", "even_rows", "plain"):
        want = paramkit.quant_error(np.ascontiguousarray(ref[name]), "int8_channel", backend="numpy")
        got = r.tensor(name).quant["int8_channel"]
        assert got["n"] == want["n"] and got["sse"] == pytest.approx(want["sse"], rel=1e-9, abs=1e-30), name
        assert got["max_abs_err"] == want["max_abs_err"], name


def test_export_of_a_torch_file_with_views(tmp_path):
    p = str(tmp_path / "views.pt")
    ref = _views_checkpoint(p)
    out = tmp_path / "q.safetensors"
    s = paramkit.fake_quantize_file(p, "int8_channel", out, quant_tensors=r"^(transposed|plain)$")
    got = load_file(str(out))
    assert set(got) == set(ref)
    np.testing.assert_array_equal(got["transposed"].numpy(),
                                  paramkit.fake_quantize(np.ascontiguousarray(ref["transposed"]), "int8_channel"))
    for name in ("even_rows", "column", "ints", "f16", "mask", "scalar"):
        np.testing.assert_array_equal(got[name].numpy(), ref[name], err_msg=name)   # copied as their values
    assert s["n_quantized"] == 2 and s["path"] == p


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_files_byte_order_and_fortran(tmp_path, backend):
    rng = np.random.default_rng(2)
    arrays = {"be": rng.normal(size=(5, 6)).astype(">f4"), "be64": rng.normal(size=7).astype(">f8"),
              "fortran": np.asfortranarray(rng.normal(size=(4, 9)).astype(np.float32)),
              "i16": rng.integers(-300, 300, size=(3, 5)).astype(">i2"), "u8": np.arange(10, dtype=np.uint8),
              "b": np.array([True, False])}
    for kind in ("savez", "savez_compressed"):
        p = str(tmp_path / f"{kind}.npz")
        getattr(np, kind)(p, **arrays)
        r = paramkit.scan(p, backend=backend)
        assert r.format == "numpy" and {t.name for t in r.tensors} == set(arrays)
        for name, a in arrays.items():
            _check(r.tensor(name).stats, a, f"{kind} {name}")
    np.save(tmp_path / "one.npy", arrays["be"])
    r = paramkit.scan(tmp_path / "one.npy", backend=backend)
    assert [t.name for t in r.tensors] == ["tensor"]
    _check(r.tensors[0].stats, arrays["be"], "npy")


def test_directory_precedence_and_ignored_files(tmp_path):
    sd = {"a.weight": torch.randn(4, 8), "b.bias": torch.randn(8)}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    torch.save({"learning_rate": 1e-4}, tmp_path / "training_args.bin")
    r = paramkit.scan(tmp_path, stats=False)
    assert r.format == "pytorch" and [os.path.basename(f) for f in r.files] == ["pytorch_model.bin"]
    assert r.total_params == 40
    assert [(os.path.basename(f["file"]), "pytorch_model" in f["reason"]) for f in r.ignored_files] == \
        [("training_args.bin", True)]
    save_file(sd, str(tmp_path / "model.safetensors"))
    r = paramkit.scan(tmp_path, stats=False)
    assert r.format == "safetensors" and [os.path.basename(f) for f in r.files] == ["model.safetensors"]
    ignored = {os.path.basename(f["file"]): f["reason"] for f in r.ignored_files}
    assert set(ignored) == {"pytorch_model.bin", "training_args.bin"}
    assert all("take precedence" in why for why in ignored.values())
    assert r.to_dict()["ignored_files"] == [dict(f) for f in r.ignored_files]
    from paramkit.cli import main
    import io
    import contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["scan", str(tmp_path), "--no-stats"]) == 0
    assert "pytorch_model.bin ignored" in buf.getvalue()


def test_training_state_is_not_the_model(tmp_path):
    """Without pytorch_model*.bin, every torch file but the Trainer's training state is the model."""
    torch.save({"w": torch.ones(3, 3)}, tmp_path / "model.pt")
    torch.save({"lr": 0.1}, tmp_path / "scheduler.pt")
    torch.save({"step": torch.tensor(3)}, tmp_path / "rng_state_0.pth")
    r = paramkit.scan(tmp_path, stats=False)
    assert [os.path.basename(f) for f in r.files] == ["model.pt"] and r.total_params == 9
    assert sorted(os.path.basename(f["file"]) for f in r.ignored_files) == ["rng_state_0.pth", "scheduler.pt"]


def test_sharded_pytorch_index(tmp_path):
    a = {"model.layers.0.w": torch.randn(4, 4), "model.embed.weight": torch.randn(10, 4)}
    b = {"model.layers.1.w": torch.randn(4, 4)}
    torch.save(a, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save(b, tmp_path / "pytorch_model-00002-of-00002.bin")
    wm = {k: "pytorch_model-00001-of-00002.bin" for k in a} | {k: "pytorch_model-00002-of-00002.bin" for k in b}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": 0},
                                                                       "weight_map": wm}))
    r = paramkit.scan(tmp_path)
    assert r.format == "pytorch" and len(r.files) == 2 and r.total_params == 16 + 40 + 16
    _check(r.tensor("model.layers.1.w").stats, b["model.layers.1.w"].numpy(), "shard 2")
    wm["model.layers.2.w"] = "pytorch_model-00002-of-00002.bin"
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": wm}))
    with pytest.raises(paramkit.FormatError) as e:
        paramkit.scan(tmp_path)
    assert e.value.code == "tensor_missing_from_shard"


def test_shards_of_one_index_are_of_one_format(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "part1.bin")
    save_file({"b": torch.ones(2)}, str(tmp_path / "part2.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "part1.bin", "b": "part2.safetensors"}}))
    with pytest.raises(paramkit.FormatError) as e:
        paramkit.scan(tmp_path / "model.safetensors.index.json")
    assert e.value.code == "shards_mixed"


def test_unsupported_formats_say_what_they_are(tmp_path):
    g = tmp_path / "model.h5"
    g.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(120))
    legacy = tmp_path / "legacy.bin"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    for path, what in ((g, "HDF5"), (legacy, "legacy PyTorch")):
        with pytest.raises(paramkit.FormatError) as e:
            paramkit.scan(path)
        assert e.value.code == "unsupported_format" and what in e.value.message
        assert "not a safetensors file" not in str(e.value)
    d = tmp_path / "only_h5"
    d.mkdir()
    os.replace(g, d / "model.h5")
    with pytest.raises(paramkit.FormatError) as e:
        paramkit.scan(d)
    assert e.value.code == "no_weights" and "HDF5" in e.value.message
    junk = tmp_path / "weights.dat"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(paramkit.FormatError) as e:
        paramkit.scan(junk)
    assert e.value.code == "unknown_format"


def test_a_misnamed_file_is_read_by_its_bytes(tmp_path, minilm_bin):
    p = tmp_path / "weights.safetensors"            # a torch zip under a safetensors name
    p.write_bytes(open(minilm_bin, "rb").read())
    assert paramkit.scan(p, stats=False).format == "pytorch"
    q = tmp_path / "model.bin"                      # a safetensors file under a torch name
    save_file({"w": torch.ones(3)}, str(q))
    assert paramkit.scan(q, stats=False).format == "safetensors"


def test_unsafe_pickle_never_runs(tmp_path):
    """A checkpoint whose data.pkl would create a file: unsafe_pickle, and the file never appears."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.bin"
    torch.save({"w": torch.ones(2), "x": Evil()}, p)
    assert not marker.exists()
    with pytest.raises(paramkit.FormatError) as e:
        paramkit.scan(p)
    assert e.value.code == "unsafe_pickle" and "system" in e.value.message
    assert not marker.exists()


def test_training_checkpoint_counts_the_model_and_keeps_optimizer_state_apart(tmp_path):
    """A {"model", "optimizer", "epoch"} checkpoint with tied modules: the tied weight is one view saved under
    two names (counted once, flagged), Adam's state is the optimizer role (never parameters), the epoch is
    metadata. Expected numbers from the module's own sizes."""
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight                           # tied: one storage, the same view
    norm = torch.nn.LayerNorm(4)
    m = torch.nn.ModuleDict({"emb": emb, "norm": norm, "head": head})
    opt = torch.optim.Adam(m.parameters())
    x = m["head"](m["norm"](m["emb"](torch.tensor([1, 2]))))
    x.sum().backward()
    opt.step()
    p = tmp_path / "ckpt.pt"
    torch.save({"model": m.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, p)
    r = paramkit.scan(p)
    n_params = 10 * 4 + 4 + 4                           # embedding (= head) + LayerNorm weight and bias
    n_state = sum(v.numel() for s in opt.state_dict()["state"].values() for v in s.values())
    assert r.total_params == n_params
    assert r.counting.optimizer_elements == n_state
    roles = {t.name: t.role for t in r.tensors}
    assert roles["emb.weight"] == roles["head.weight"] == "parameter"
    assert {n for n, role in roles.items() if role == "optimizer"} == \
        {n for n in roles if n.startswith("optimizer.state.")}
    by_name = {x.name: x for x in r.counting.roles}
    assert "tied_duplicate" in by_name["head.weight"].flags and not by_name["head.weight"].counted
    assert "tied" in by_name["emb.weight"].flags
    assert r.counting.ties["same_view"] == ["head.weight"]
    assert r.metadata["epoch"] == "3" and "optimizer.param_groups" in r.metadata
    assert r.aggregates["numel"] == 10 * 4 + 8     # statistics: the parameter tensors, the tied duplicate once
    assert r.to_dict()["optimizer_elements"] == n_state


def test_different_views_of_one_storage_are_each_counted(tmp_path):
    base = torch.randn(6, 8)
    torch.save({"even": base[::2], "odd": base[1::2], "all": base}, tmp_path / "v.pt")
    r = paramkit.scan(tmp_path / "v.pt", stats=False)
    assert r.total_params == 24 + 24 + 48 and "same_view" not in r.counting.ties
