"""End-to-end tests of the public API: scan() on real safetensors files, the report schema,
header-only scans, reproducibility across thread counts, tensor_stats, backend selection."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import paramkit
from paramkit.stats import QUANTILE_KEYS, STATS_KEYS

from conftest import available_backends, cpu_engine_built

REQUIRED_KEYS = {"schema_version", "path", "format", "backend", "total_params", "total_elements",
                 "buffer_elements", "elements_by_dtype", "bytes_total", "groups", "metadata", "tensors",
                 "aggregates"}


def test_scan_report_schema(small_checkpoint):
    r = paramkit.scan(small_checkpoint)
    d = r.to_dict()
    assert REQUIRED_KEYS <= set(d)
    assert d["schema_version"] == 1 and d["format"] == "safetensors"
    names = [t["name"] for t in d["tensors"]]
    assert len(names) == 8
    # file order = byte-offset order
    from paramkit.formats import open_table
    offs = [t.offset for t in open_table(small_checkpoint).tensors]
    assert offs == sorted(offs)
    for t in d["tensors"]:
        assert set(t) >= {"name", "dtype", "shape", "numel", "nbytes", "role", "stats"}
        assert t["role"] in ("parameter", "buffer")
        assert set(t["stats"]) == set(STATS_KEYS)
        assert set(t["stats"]["quantiles"]) == set(QUANTILE_KEYS)
    roles = {t["name"]: t["role"] for t in d["tensors"]}
    assert roles["position_ids"] == "buffer" and roles["mask"] == "buffer"
    assert roles["model.embed_tokens.weight"] == "parameter"
    assert d["total_params"] == 300 * 64 + 128 * 64 + 64 + 128 * 64 + 1 + 0
    assert d["buffer_elements"] == 77 + 3
    assert d["elements_by_dtype"] == {"BF16": 19200, "F16": 8192, "F32": 65, "F64": 8192, "I64": 77, "BOOL": 3}
    assert d["bytes_total"] == os.path.getsize(small_checkpoint) - 8 - int.from_bytes(
        open(small_checkpoint, "rb").read(8), "little")
    assert d["metadata"]["file"] == {"format": "pt"}
    # groups: per top-level module and per layer
    assert d["groups"]["layers"]["model.layers.0"]["params"] == 128 * 64 + 64
    json.loads(r.to_json())  # strict JSON


def test_scan_stats_values_match_float64(small_checkpoint):
    from safetensors.numpy import load_file
    import torch
    from safetensors.torch import load_file as tload
    ref = tload(small_checkpoint)
    r = paramkit.scan(small_checkpoint)
    for t in r.tensors:
        x = ref[t.name]
        x = x.to(torch.float64).numpy().ravel() if x.dtype != torch.bool else x.numpy().astype(np.float64).ravel()
        s = t.stats
        if x.size == 0:
            assert s["min"] is None and s["mean"] is None and s["l2"] == 0.0
            continue
        assert s["min"] == x.min() and s["max"] == x.max() and s["absmax"] == np.abs(x).max()
        assert math.isclose(s["mean"], x.mean(), rel_tol=1e-6, abs_tol=1e-12)
        assert math.isclose(s["std"], x.std(), rel_tol=1e-6, abs_tol=1e-12)
        assert math.isclose(s["l2"], np.sqrt((x * x).sum()), rel_tol=1e-6)
        assert s["zeros"] == int((x == 0).sum())


def test_header_only_reads_no_tensor_data(tmp_path):
    """stats=False must not touch the data region: a 4 GB sparse file whose data is a hole scans
    instantly, and the engines are never asked for anything."""
    hdr = json.dumps({"w": {"dtype": "BF16", "shape": [65536, 32768], "data_offsets": [0, 65536 * 32768 * 2]}}).encode()
    p = tmp_path / "big.safetensors"
    with open(p, "wb") as f:
        f.write(len(hdr).to_bytes(8, "little") + hdr)
    os.truncate(p, 8 + len(hdr) + 65536 * 32768 * 2)
    r = paramkit.scan(str(p), stats=False)
    assert r.total_params == 65536 * 32768
    assert r.backend is None and r.tensors[0].stats is None
    assert r.to_dict()["tensors"][0]["stats"] is None


@pytest.mark.parametrize("backend", available_backends())
def test_thread_count_reproducible(small_checkpoint, backend):
    a = paramkit.scan(small_checkpoint, backend=backend, threads=1).to_dict()
    b = paramkit.scan(small_checkpoint, backend=backend, threads=3).to_dict()
    c = paramkit.scan(small_checkpoint, backend=backend, threads=3).to_dict()
    for d in (a, b, c):
        d.pop("timing"); d.pop("engine"); d["options"].pop("threads")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) == json.dumps(c, sort_keys=True)


def test_reproducible_across_pieces_and_threads_on_multi_piece_tensors(tmp_path, monkeypatch):
    """Tensors larger than the engine's piece size are split into several pieces; the result must
    not depend on how many threads processed them."""
    if not cpu_engine_built():
        pytest.fail("cpu backend missing: the C++ extension must be built for this test")
    from paramkit.backends import cpu_backend
    from safetensors.numpy import save_file
    monkeypatch.setattr(cpu_backend, "CHUNK_BYTES", 4096)
    rng = np.random.default_rng(1)
    path = str(tmp_path / "m.safetensors")
    save_file({"a": rng.normal(size=50_001).astype(np.float32), "b": rng.normal(size=30_000).astype(np.float16),
               "c": rng.integers(-2**40, 2**40, size=9_999, dtype=np.int64)}, path)
    outs = []
    for th in (1, 2, 5):
        d = paramkit.scan(path, backend="cpu", threads=th).to_dict()
        outs.append(json.dumps(d["tensors"], sort_keys=True))
    assert outs[0] == outs[1] == outs[2]
    ref = paramkit.scan(path, backend="numpy").to_dict()["tensors"]
    got = json.loads(outs[0])
    for g, r in zip(got, ref):
        for k in ("min", "max", "absmax", "zeros", "nan", "quantiles"):
            assert g["stats"][k] == r["stats"][k], (g["name"], k)
        for k in ("mean", "std", "l2"):
            assert math.isclose(g["stats"][k], r["stats"][k], rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("backend", available_backends())
def test_tensor_stats_numpy_and_torch(backend):
    import ml_dtypes
    import torch
    x = np.random.default_rng(0).normal(size=1001).astype(np.float32)
    s = paramkit.tensor_stats(x, backend=backend)
    assert s["min"] == float(x.min()) and s["max"] == float(x.max())
    b = x.astype(ml_dtypes.bfloat16)
    sb = paramkit.tensor_stats(b, backend=backend)
    st = paramkit.tensor_stats(torch.from_numpy(x).to(torch.bfloat16), backend=backend)
    sr = paramkit.tensor_stats(b.view(np.uint16), dtype="BF16", backend=backend)
    assert sb == st == sr
    assert sb["max"] == float(b.astype(np.float64).max())
    with pytest.raises(TypeError):
        paramkit.tensor_stats(np.zeros(3, dtype=np.complex64), backend=backend)


def test_backend_selection_and_errors(monkeypatch):
    names = {b.name: b for b in paramkit.backends()}
    assert set(names) == {"cuda", "cpu", "numpy"}
    assert names["numpy"].available
    for b in names.values():
        assert b.reason
    if not names["cuda"].available:
        with pytest.raises(paramkit.BackendUnavailable, match="cuda"):
            paramkit.tensor_stats(np.zeros(3, np.float32), backend="cuda")
    with pytest.raises(paramkit.BackendUnavailable, match="unknown backend"):
        paramkit.tensor_stats(np.zeros(3, np.float32), backend="tpu")
    monkeypatch.setenv("PARAMKIT_BACKEND", "numpy")
    from paramkit.backends import get_engine
    assert get_engine("auto").name == "numpy"


def test_to_dataframe(small_checkpoint):
    df = paramkit.scan(small_checkpoint).to_dataframe()
    assert len(df) == 8 and {"name", "min", "q0.5", "role"} <= set(df.columns)


def test_progress_callable_and_total(small_checkpoint):
    seen = []
    paramkit.scan(small_checkpoint, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1]


def test_scan_many_keeps_going(tmp_path, small_checkpoint):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    out = list(paramkit.scan_many([small_checkpoint, str(bad), str(tmp_path / "missing.safetensors")], stats=False))
    assert out[0][1] is not None and out[0][2] is None
    assert out[1][1] is None and out[1][2]["code"] == "header_not_json"
    assert out[2][2]["code"] == "os_error"


def test_scan_many_takes_one_path_as_one_path(small_checkpoint):
    """A str or os.PathLike is one path (a str was iterated character by character, '/' scanned first)."""
    import pathlib
    for one in (small_checkpoint, pathlib.Path(small_checkpoint)):
        out = list(paramkit.scan_many(one, stats=False))
        assert [(p, e) for p, _, e in out] == [(small_checkpoint, None)]
        assert out[0][1].total_params == paramkit.scan(small_checkpoint, stats=False).total_params
    with pytest.raises(TypeError, match="stat"):   # a keyword scan() does not take: at once, not once per file
        next(paramkit.scan_many([small_checkpoint], stat=False))


def test_scan_many_survives_any_exception(monkeypatch, small_checkpoint, tmp_path):
    """An exception of any type from one file (here an OverflowError, as from a bug) is that file's error dict
    (code "error", its type and message) and the batch goes on; so is an item that is not a path.
    KeyboardInterrupt still stops the batch."""
    from paramkit import api
    real_scan = api.scan

    def scan_or_overflow(path, **kw):
        if os.fspath(path).endswith("overflow.safetensors"):
            raise OverflowError("int too large to convert")
        if os.fspath(path).endswith("interrupt.safetensors"):
            raise KeyboardInterrupt
        return real_scan(path, **kw)
    monkeypatch.setattr(api, "scan", scan_or_overflow)
    overflow = str(tmp_path / "overflow.safetensors")
    out = list(paramkit.scan_many([overflow, 42, small_checkpoint], stats=False))
    assert out[0] == (overflow, None, {"code": "error", "type": "OverflowError", "message": "int too large to convert",
                                       "path": overflow, "tensor": None})
    assert out[1][0] == "42" and out[1][1] is None
    assert out[1][2]["code"] == "error" and out[1][2]["type"] == "TypeError"
    assert out[2][0] == small_checkpoint and out[2][1] is not None and out[2][2] is None
    with pytest.raises(KeyboardInterrupt):
        list(paramkit.scan_many([small_checkpoint, str(tmp_path / "interrupt.safetensors")], stats=False))


def test_scan_many_error_dicts(tmp_path):
    """Every error dict has code, type, message, path and tensor; OSError adds its errno."""
    import errno
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x01")
    missing = str(tmp_path / "missing.safetensors")
    (_, _, fe), (_, _, oe) = paramkit.scan_many([bad, missing])
    assert fe == {"code": "file_too_short", "type": "FormatError", "message": fe["message"], "path": str(bad),
                  "tensor": None}
    assert oe["code"] == "os_error" and oe["type"] == "FileNotFoundError" and oe["errno"] == errno.ENOENT
    assert oe["path"] == missing and oe["tensor"] is None and missing in oe["message"]


class _StopScan(Exception):
    pass


def test_progress_exception_stops_the_scan(tmp_path):
    """An exception raised by the progress callable (or Ctrl-C) cancels the native pass and comes
    out of scan() unchanged; the engine is usable again afterwards."""
    from safetensors.numpy import save_file
    path = str(tmp_path / "p.safetensors")
    save_file({f"w{i}": np.full((512, 1024), i, dtype=np.float32) for i in range(24)}, path)   # 48 MiB

    def boom(done, total):   # the engine reports every 100 ms and at the end: this small file, at the end
        raise _StopScan(done)
    for backend in [b.name for b in paramkit.backends() if b.available]:
        with pytest.raises(_StopScan):
            paramkit.scan(path, backend=backend, progress=boom)
        assert paramkit.scan(path, backend=backend).total_params == 24 * 512 * 1024


def test_dir_shows_only_the_public_api(small_checkpoint):
    """dir(paramkit) lists __all__ and the submodules README documents as paramkit.<name>, even after a scan
    and a plan imported the internal ones (and no 'annotations' from a __future__ import)."""
    import importlib.util
    import re
    paramkit.scan(small_checkpoint, quant="q8_0")
    paramkit.plan(small_checkpoint)
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    documented = set(re.findall(r"paramkit\.([a-z][a-z_]*)", readme))
    names = [n for n in dir(paramkit) if not n.startswith("_")]
    assert "annotations" not in names
    for n in names:
        assert n in paramkit.__all__ or (n in documented and importlib.util.find_spec(f"paramkit.{n}")), n
    for n in paramkit.__all__:
        assert getattr(paramkit, n) is not None, n
    assert set(paramkit.__all__) <= set(dir(paramkit))
    assert paramkit.planning.Plan is type(paramkit.plan(small_checkpoint))


@pytest.mark.parametrize("backend", available_backends())
def test_scan_reads_only_the_chosen_tensors(small_checkpoint, backend):
    """scan(tensors=REGEX): only the matching tensors are read (the progress total is their bytes), they get
    the statistics a full scan gives them, the others none; aggregates are of the chosen parameters (checked
    against the values loaded here); counting is the whole model's."""
    import torch
    from safetensors.torch import load_file as tload
    ref = tload(small_checkpoint)
    full = paramkit.scan(small_checkpoint, backend=backend)
    seen = []
    r = paramkit.scan(small_checkpoint, backend=backend, tensors=r"layers\.\d\.mlp",
                      progress=lambda done, total: seen.append((done, total)))
    chosen = {"model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"}
    assert seen[-1] == (128 * 64 * 2 + 128 * 64 * 8,) * 2
    assert r.timing["data_bytes"] == 128 * 64 * 2 + 128 * 64 * 8
    for t, f in zip(r.tensors, full.tensors):
        assert t.name == f.name
        assert (t.stats == f.stats) if t.name in chosen else t.stats is None
    vals = np.concatenate([ref[n].to(torch.float64).numpy().ravel() for n in sorted(chosen)])
    a = r.aggregates
    assert a["tensors"] == 2 and a["numel"] == vals.size
    assert a["min"] == vals.min() and a["max"] == vals.max() and a["absmax"] == np.abs(vals).max()
    assert math.isclose(a["mean"], vals.mean(), rel_tol=1e-9, abs_tol=1e-12)
    assert r.counting.to_dict() == full.counting.to_dict()
    assert r.options["tensors"] == r"layers\.\d\.mlp" and "tensors" not in full.options


@pytest.mark.parametrize("backend", available_backends())
def test_scan_chosen_tensors_with_quant(small_checkpoint, backend):
    """With quant: error records for the chosen tensors equal the full scan's, none for the others; a callable
    chooses by (name, dtype, shape, role)."""
    full = paramkit.scan(small_checkpoint, backend=backend, quant="int8_channel,int4_g32", quant_tensors="mlp")
    pick = lambda name, dtype, shape, role: dtype == "F16" and role == "parameter"   # noqa: E731
    r = paramkit.scan(small_checkpoint, backend=backend, quant="int8_channel,int4_g32", quant_tensors="mlp",
                      tensors=pick)
    for t, f in zip(r.tensors, full.tensors):
        if t.name == "model.layers.0.mlp.up_proj.weight":
            assert t.quant is not None and t.quant == f.quant and t.stats == f.stats
        else:
            assert t.stats is None and t.quant is None
    assert r.options["tensors"].startswith("custom: ")


def test_scan_chosen_tensors_errors(small_checkpoint):
    with pytest.raises(ValueError, match="matches none of the 8 tensors"):
        paramkit.scan(small_checkpoint, tensors="nothing-like-this")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        paramkit.scan(small_checkpoint, tensors="(")
    with pytest.raises(TypeError):
        paramkit.scan(small_checkpoint, tensors=3)
