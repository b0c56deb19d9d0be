"""The native engines read strided torch views and big-endian tensors of stored zip members themselves
(cpp/include/paramkit/read_plan.hpp), without writing them to a temporary file: their statistics, quantiles
and quantization sums equal, bit for bit, those of the same values saved contiguous, and the numpy oracle's;
piece boundaries inside views, thread counts, and malformed layouts (an exception, never a crash)."""
from __future__ import annotations

import errno
import json
import math
import os

import numpy as np
import pytest
import torch

import paramkit
from paramkit import materialize
from paramkit.backends import get_engine
from paramkit.formats import open_table

import stats_reference as R
from conftest import NATIVE_BACKENDS, emu_read_error
from test_format_torch import big_endian_copy

COUNTS = ("n", "nonfinite", "clipped", "scale_clamped")
TORCH_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn,
                torch.float8_e5m2, torch.int8, torch.uint8, torch.int16, torch.uint16, torch.int32, torch.uint32,
                torch.int64, torch.uint64, torch.bool)
SIGNED = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
TORCH_SIGNED = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _base(dtype: torch.dtype, shape, seed: int) -> torch.Tensor:
    """A tensor of `dtype`: normal values for floats, random bits for integers, 0/1 for bool."""
    rng = np.random.default_rng(seed)
    if dtype.is_floating_point:
        return torch.from_numpy(rng.normal(scale=3.0, size=shape).astype(np.float32)).to(dtype)
    if dtype == torch.bool:
        return torch.from_numpy(rng.integers(0, 2, size=shape).astype(np.bool_))
    size = torch.empty(0, dtype=dtype).element_size()
    bits = rng.integers(0, 256, size=(*shape, size), dtype=np.uint8).view(SIGNED[size]).reshape(shape)
    return torch.from_numpy(bits.copy()).view(dtype)


def _views(b: torch.Tensor, tag: str) -> dict[str, torch.Tensor]:
    """Views of the 2-D tensor b (rows x cols) of every kind the read layer distinguishes."""
    return {
        f"{tag}.transposed": b.t(),                          # strided innermost dimension: gathered
        f"{tag}.every_other_row": b[::2],                    # short runs with gaps
        f"{tag}.cols": b[:, :5],                             # short contiguous runs
        f"{tag}.expand": b[:, :1].expand(-1, 7),             # stride 0
        f"{tag}.narrow": b[2:, 3:7],                         # element offset and runs
        f"{tag}.rows": b[3:],                                # contiguous at an element offset
        f"{tag}.permuted": b.reshape(2, -1, b.shape[1]).permute(1, 0, 2) if b.shape[0] % 2 == 0 else b.t(),
        f"{tag}.scalar": b[1, 2],                            # a 0-d view
        f"{tag}.empty": b[:0],
    }


def views_state(big: bool = True) -> dict[str, torch.Tensor]:
    """Views of every dtype, plus views bigger than one piece of the cpu engine (4 MiB) and one ring slot of
    the cuda engine: a transpose (gathered), long-run column slices and a 3-D permute keeping the last dim
    (read run by run)."""
    sd = {}
    for k, dt in enumerate(TORCH_DTYPES):
        sd.update(_views(_base(dt, (12, 10), seed=k), str(dt).replace("torch.", "")))
    if big:
        w = _base(torch.float32, (1100, 1100), seed=99)
        sd["big.transposed"] = w.t()                                        # 4.8 MB, gathered
        wide = _base(torch.float32, (40, 20000), seed=98)
        sd["big.long_runs"] = wide[:, :17000]                              # 68 kB runs, pread each
        sd["big.permuted"] = wide.reshape(4, 10, 20000).permute(1, 0, 2)   # 80 kB runs
        sd["big.bf16_t"] = _base(torch.bfloat16, (1500, 1400), seed=97).t()
    return sd


def save_pair(tmp_path, sd: dict[str, torch.Tensor]) -> tuple[str, str]:
    """The views saved by torch.save, and the same values saved as contiguous tensors of their own."""
    views, plain = str(tmp_path / "views.pt"), str(tmp_path / "plain.pt")
    torch.save(sd, views)
    torch.save({k: v.contiguous().clone() for k, v in sd.items()}, plain)
    return views, plain


def same_bits(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def assert_quant_close(got: dict | None, want: dict | None, what: str) -> None:
    """Quantization records of a native backend against the numpy oracle (test_quant_scan's tolerance)."""
    assert (got is None) == (want is None), what
    if got is None:
        return
    assert got.keys() == want.keys(), what
    for sid, ra in got.items():
        rb = want[sid]
        if "not_applicable" in rb:
            assert ra == rb, (what, sid)
            continue
        for k in COUNTS + ("quantized_nbytes",):
            assert ra[k] == rb[k], (what, sid, k)
        for k in ("sse", "sum_w2", "sum_q2", "sum_wq", "max_abs_err"):
            both_nan = math.isnan(ra[k]) and math.isnan(rb[k])
            assert both_nan or math.isclose(ra[k], rb[k], rel_tol=1e-9, abs_tol=1e-300), (what, sid, k)


@pytest.fixture(scope="module")
def views_pair(tmp_path_factory):
    return save_pair(tmp_path_factory.mktemp("views"), views_state())


@pytest.fixture(scope="module")
def oracle(views_pair):
    return paramkit.scan(views_pair[0], backend="numpy", quant="default", quant_tensors=r".")


def no_materialize(monkeypatch):
    """Makes writing a stored member's view to the temporary plain file an error."""
    write = materialize._write_plain

    def refuse(f, src, t, storages, whole):
        assert not materialize.reads_in_place(t), f"{t.name} was written to a temporary file"
        return write(f, src, t, storages, whole)
    monkeypatch.setattr(materialize, "_write_plain", refuse)


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_views_equal_their_contiguous_copies_and_the_oracle(views_pair, oracle, backend, threads, monkeypatch):
    from paramkit.backends import cpu_backend
    views, plain = views_pair
    table = open_table(views)
    assert {t.name for t in table.tensors if t.layout is not None} >= {"float32.transposed", "big.long_runs",
                                                                      "big.permuted", "big.transposed"}
    monkeypatch.setattr(cpu_backend, "CHUNK_BYTES", 1 << 16)   # many pieces per tensor, boundaries inside runs
    monkeypatch.setenv("PARAMKIT_CUDA_RING_MB", "1")           # and many batches
    want = paramkit.scan(plain, backend=backend, quant="default", quant_tensors=r".", threads=threads)
    no_materialize(monkeypatch)
    got = paramkit.scan(views, backend=backend, quant="default", quant_tensors=r".", threads=threads)
    ref = {t.name: t for t in oracle.tensors}
    for a, b in zip(got.tensors, want.tensors):
        assert (a.name, a.shape, a.dtype) == (b.name, b.shape, b.dtype)
        assert same_bits(a.stats, b.stats), a.name        # the same values: the same bits
        assert same_bits(a.quant, b.quant), a.name
        R.assert_stats_match(a.stats, ref[a.name].stats, what=f"{backend} vs numpy {a.name}")
        assert_quant_close(a.quant, ref[a.name].quant, f"{backend} vs numpy {a.name}")


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
def test_views_at_the_default_piece_size(views_pair, backend, monkeypatch):
    views, plain = views_pair
    want = paramkit.scan(plain, backend=backend)
    no_materialize(monkeypatch)
    got = paramkit.scan(views, backend=backend, threads=2)
    for a, b in zip(got.tensors, want.tensors):
        assert same_bits(a.stats, b.stats), a.name


def test_numpy_oracle_still_reads_plain_copies(views_pair, monkeypatch):
    """The numpy engine has no reads_views: its views come through materialize (the independent path)."""
    calls = []
    write = materialize._write_plain
    monkeypatch.setattr(materialize, "_write_plain", lambda *a: (calls.append(a[2].name), write(*a))[1])
    assert get_engine("numpy").reads_views is False
    paramkit.scan(views_pair[0], backend="numpy", stats=True, quantiles=False)
    assert "float32.transposed" in calls


BIG_ENDIAN = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int16, torch.int32, torch.int64,
              torch.uint8]


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
@pytest.mark.parametrize("dtype", BIG_ENDIAN, ids=str)
def test_big_endian_torch_views(tmp_path, backend, dtype, monkeypatch):
    sd = _views(_base(dtype, (12, 10), seed=5), "w")
    sd["contiguous"] = _base(dtype, (6, 5), seed=6)
    little, plain = save_pair(tmp_path, sd)
    size = sd["contiguous"].element_size()
    big = big_endian_copy(little, tmp_path / "big.pt", size)
    if size > 1:
        assert all(t.layout is not None and t.layout.byteorder == ">" for t in open_table(big).tensors if t.nbytes)
    want = paramkit.scan(plain, backend=backend, quant="default", quant_tensors=r".")
    ref = paramkit.scan(big, backend="numpy", quant="default", quant_tensors=r".")
    no_materialize(monkeypatch)
    got = paramkit.scan(big, backend=backend, quant="default", quant_tensors=r".", threads=2)
    for a, b, c in zip(got.tensors, want.tensors, ref.tensors):
        assert same_bits(a.stats, b.stats) and same_bits(a.quant, b.quant), a.name
        R.assert_stats_match(a.stats, c.stats, what=a.name)


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
def test_big_endian_and_fortran_npz(tmp_path, backend, monkeypatch):
    rng = np.random.default_rng(3)
    arrays = {"f4": rng.normal(size=(70, 300)).astype(">f4"), "f2": rng.normal(size=(9, 11)).astype(">f2"),
              "i8": rng.integers(-2**62, 2**62, size=(5, 7)).astype(">i8"),
              "u4": rng.integers(0, 2**32, size=13).astype(">u4"),
              "fortran": np.asfortranarray(rng.normal(size=(200, 90)).astype(">f8")),
              "fortran_le": np.asfortranarray(rng.normal(size=(33, 41)).astype("<f4")),
              "scalar": np.array(2.5, dtype=">f4")}
    p, q = str(tmp_path / "be.npz"), str(tmp_path / "le.npz")
    np.savez(p, **arrays)
    np.savez(q, **{k: np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<")) for k, v in arrays.items()})
    assert {t.name for t in open_table(p).tensors if t.layout is not None} == set(arrays)
    want = paramkit.scan(q, backend=backend)
    no_materialize(monkeypatch)
    got = paramkit.scan(p, backend=backend, threads=3)
    for a, b in zip(got.tensors, want.tensors):
        assert a.name == b.name and same_bits(a.stats, b.stats), a.name


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
def test_deflated_views_are_still_made_plain(tmp_path, backend):
    import zipfile
    from test_formats_resolver import _deflated_copy
    views, plain = save_pair(tmp_path, _views(_base(torch.float32, (12, 10), seed=1), "w"))
    deflated = _deflated_copy(views, str(tmp_path / "deflated.pt"))
    with zipfile.ZipFile(deflated) as z:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    got, want = paramkit.scan(deflated, backend=backend), paramkit.scan(plain, backend=backend)
    for a, b in zip(got.tensors, want.tensors):
        assert same_bits(a.stats, b.stats), a.name


# ---------------------------------------------------------------- malformed layouts and files


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
def test_storage_truncated_after_the_header_is_eio(tmp_path, backend):
    sd = {"w": _base(torch.float32, (300, 200), seed=2).t()}
    p = str(tmp_path / "t.pt")
    torch.save(sd, p)
    tensors = open_table(p).tensors
    assert tensors[0].layout is not None
    os.truncate(p, tensors[0].layout.blob.offset + 1000)
    with pytest.raises(OSError) as e:
        get_engine(backend).run(tensors)
    assert e.value.errno == errno.EIO and "beyond the end of the file" in str(e.value)


def _module(backend: str):
    from paramkit import _core
    if backend == "cpu":
        return _core
    from paramkit import _cuda_emu
    return _cuda_emu


def _run_one(mod, path: str, spec_row, view):
    spec = np.array([spec_row], dtype=np.int64)
    return mod.run([path], spec, np.full(1, np.nan), True, True, 1, 1 << 16, [0.5], [], None, views=[view])


@pytest.mark.parametrize("backend", [b for b in NATIVE_BACKENDS if b in ("cpu", "cuda-emu")])
def test_engine_rejects_bad_layouts(tmp_path, backend):
    """_core.run / _cuda_emu.run with layouts that reach outside their storage or file: exceptions."""
    mod = _module(backend)
    p = str(tmp_path / "s.bin")
    data = np.arange(100, dtype="<f4")
    with open(p, "wb") as f:
        f.write(b"\0" * 64 + data.tobytes())
    from paramkit.dtypes import DTYPES
    f32 = DTYPES["F32"].engine_id
    row = [0, 64, 40 * 4, 40, f32, 0, 1, 1, 1]
    good = (0, 64, 400, 0, False, [4, 10], [1, 4])          # the transpose of a (10, 4) tensor
    rec = _run_one(mod, p, row, good)
    assert rec["counts"][0][0] == 40 and rec["fext"][0][1] == float(data[:40].max())
    bad = {
        "past the storage": (0, 64, 400, 0, False, [4, 10], [1, 11]),
        "negative offset": (0, 64, 400, -1, False, [4, 10], [1, 4]),
        "offset past the storage": (0, 64, 400, 90, False, [4, 10], [1, 4]),
        "shape vs numel": (0, 64, 400, 0, False, [4, 11], [1, 4]),
        "rank": (0, 64, 400, 0, False, [4, 10], [1]),
        "huge stride": (0, 64, 400, 0, False, [4, 10], [1, 2**62]),
        "overflowing stride": (0, 64, 400, 0, False, [4, 10], [2**63 - 1, 1]),
        "negative dim": (0, 64, 400, 0, False, [-4, -10], [1, 4]),
        "missing task": (3, 64, 400, 0, False, [4, 10], [1, 4]),
    }
    for why, v in bad.items():
        with pytest.raises(ValueError, match=".") as e:
            _run_one(mod, p, row, v)
        assert e.type is ValueError, why
    # a storage larger than the file: EIO before any read
    with pytest.raises(OSError) as e:
        _run_one(mod, p, row, (0, 64, 4000, 900, False, [4, 10], [1, 4]))
    assert e.value.errno == errno.EIO


def test_emulated_read_failure_in_a_view_is_eio(tmp_path, monkeypatch):
    pytest.importorskip("paramkit._cuda_emu")
    monkeypatch.setenv("PARAMKIT_CUDA_RING_MB", "1")
    p = str(tmp_path / "v.pt")
    torch.save({"w": _base(torch.float32, (900, 700), seed=4).t(), "l": _base(torch.float32, (30, 20000), seed=5)[:, :17000]}, p)
    tensors = open_table(p).tensors
    eng = get_engine("cuda-emu")
    want = eng.run(tensors, threads=2)[0]
    for k in (1, 2, 5):
        err = emu_read_error(lambda: eng.run(tensors, threads=2), k)
        assert err.errno == errno.EIO
        assert eng.run(tensors, threads=2)[0] == want
