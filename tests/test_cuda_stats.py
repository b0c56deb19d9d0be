"""The CUDA engine (backend "cuda" on a GPU, and "cuda-emu": the same engine code run by CPU threads,
built with PARAMKIT_CUDA_EMU=ON) against the cpu engine and the numpy oracle on real safetensors
files: statistics, the quantization pass with its held second pass, pipeline edge cases, errors."""
from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import paramkit
from paramkit.backends import get_engine, numpy_backend
from paramkit.table import TensorInfo

from conftest import (GPU_FLOATS, GPU_INTS, GPU_SIZES, QCOUNTS, available_backends, compare_stats, emu_read_error,
                      float_data, histogram_bits, tensor_infos)

GPU_ENGINES = [b for b in available_backends() if b in ("cuda", "cuda-emu")]
if not GPU_ENGINES:
    pytest.skip("neither a CUDA device nor the CUDA emulator (PARAMKIT_CUDA_EMU=ON) is available: "
                + {b.name: b for b in paramkit.backends()}["cuda"].reason, allow_module_level=True)


# The emulator runs queued stream work in two orders: "lazy" (a stream's work runs when something waits for
# it) and "others-first" (before a stream runs, every other stream's queued work does: later batches ahead of
# earlier ones). A missing event wait or synchronize gives stale data in one of them, as it can on a GPU.
GPU_VARIANTS = [(g, sched) for g in GPU_ENGINES for sched in ((None,) if g == "cuda" else ("lazy", "others-first"))]


@pytest.fixture(params=GPU_VARIANTS, ids=lambda v: v[0] if v[1] is None else f"{v[0]}-{v[1]}")
def gpu(request) -> str:
    engine, schedule = request.param
    if schedule is None:
        yield engine
        return
    from paramkit import _cuda_emu
    _cuda_emu.set_schedule(schedule)
    try:
        yield engine
    finally:
        _cuda_emu.set_schedule("lazy")


def _run_all(gpu: str, path: str, quantiles: bool = True):
    infos = tensor_infos(path)
    cu = get_engine(gpu).run_stats(infos, quantiles=quantiles, histograms=True)
    cpu = get_engine("cpu").run_stats(infos, quantiles=quantiles, histograms=True)
    ref = numpy_backend.ENGINE.run_stats(infos, quantiles=quantiles, histograms=True)
    return infos, cu, cpu, ref


@pytest.mark.parametrize("dtype", list(GPU_FLOATS) + list(GPU_INTS))
@pytest.mark.parametrize("quantiles", [True, False])
def test_cuda_matches_cpu_and_oracle(gpu, tmp_path, dtype, quantiles):
    rng = np.random.default_rng(len(dtype) * 7 + quantiles)
    tensors = {}
    for n in GPU_SIZES:
        if dtype in GPU_FLOATS:
            a = float_data(GPU_FLOATS[dtype], n, rng)
        else:
            info = np.iinfo(GPU_INTS[dtype])
            a = rng.integers(info.min, info.max, size=n, dtype=GPU_INTS[dtype], endpoint=True)
            if n >= 3:
                a[:3] = [0, info.min, info.max]
        tensors[f"t{n}"] = a
    tensors["scalar"] = np.array(tensors["t7"][1] if "t7" in tensors else 0).reshape(())
    path = str(tmp_path / "m.safetensors")
    save_file(tensors, path)
    infos, cu, cpu, ref = _run_all(gpu, path, quantiles)
    for t, a, b, c in zip(infos, cu, cpu, ref):
        try:
            compare_stats(a, b, c)
        except AssertionError as e:
            raise AssertionError(f"{dtype} tensor {t.name}: {e}") from None


@pytest.mark.parametrize("dtype", ["BF16", "F32", "F64", "U8"])
def test_cuda_multi_piece_and_many_tensors(gpu, tmp_path, monkeypatch, dtype):
    # a 1 MiB ring forces tensors across several batches; 100 tiny tensors exercise the histogram slots
    monkeypatch.setenv("PARAMKIT_CUDA_RING_MB", "1")
    rng = np.random.default_rng(5)
    tensors = {"big": (float_data(GPU_FLOATS[dtype], 3_000_001, rng) if dtype in GPU_FLOATS
                       else rng.integers(0, 255, size=3_000_001, dtype=np.uint8))}
    for i in range(100):
        tensors[f"small{i:03d}"] = (float_data(GPU_FLOATS[dtype], 5 + i, rng) if dtype in GPU_FLOATS
                                    else rng.integers(0, 255, size=5 + i, dtype=np.uint8))
    path = str(tmp_path / "big.safetensors")
    save_file(tensors, path)
    infos, cu, cpu, ref = _run_all(gpu, path)
    for t, a, b, c in zip(infos, cu, cpu, ref):
        compare_stats(a, b, c)
    again = get_engine(gpu).run_stats(infos, quantiles=True, histograms=True)
    assert [histogram_bits(s.pop("histogram")) for s in again] == [histogram_bits(s.pop("histogram")) for s in cu]
    assert json.dumps(again) == json.dumps(cu)      # bit-identical run to run


def test_cuda_scan_end_to_end(gpu, tmp_path):
    rng = np.random.default_rng(1)
    path = str(tmp_path / "s.safetensors")
    save_file({"w": float_data(ml_dtypes.bfloat16, 1000, rng), "b": float_data(np.float32, 33, rng)}, path)
    a = paramkit.scan(path, backend=gpu).to_dict()
    b = paramkit.scan(path, backend="cpu").to_dict()
    assert a["backend"] == gpu and a["engine"]["isa"].startswith("cuda:")
    for d in (a, b):
        d.pop("engine"), d.pop("timing"), d.pop("backend")
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def test_cuda_array_stats_and_errors(gpu, tmp_path):
    eng = get_engine(gpu)
    x = np.array([1.0, -2.0, np.nan, np.inf, 0.0], dtype=np.float32)
    s = eng.array_stats(x, "F32")
    assert s["min"] == -2.0 and s["max"] == math.inf and s["nan"] == 1 and s["posinf"] == 1
    missing = TensorInfo("x", "F32", (4,), str(tmp_path / "nope.safetensors"), 0, 16, 4)
    with pytest.raises(OSError):
        eng.run_stats([missing])


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_cuda_reader_threads(gpu, tmp_path, monkeypatch, threads):
    """threads= sets how many threads read the file into the pinned ring (cuda backend); the bytes land in the
    same places whatever the count, so the statistics equal the cpu engine's and one another's bit for bit.
    7 MB across 3 tensors and a 4 MiB ring: batches read in 1 MiB pieces by all the readers, a tensor split
    between two batches."""
    monkeypatch.setenv("PARAMKIT_CUDA_RING_MB", "4")
    rng = np.random.default_rng(threads)
    path = str(tmp_path / "r.safetensors")
    save_file({"a": float_data(np.float32, 700_001, rng), "b": float_data(ml_dtypes.bfloat16, 1_500_003, rng),
               "c": float_data(np.float32, 300_007, rng)}, path)
    infos = tensor_infos(path)
    eng = get_engine(gpu)
    got = eng.run(infos, threads=threads)[0]
    assert eng.last_run["threads"] == threads
    assert json.dumps(got) == json.dumps(eng.run(infos, threads=1)[0])
    for a, b, c in zip(got, get_engine("cpu").run_stats(infos), numpy_backend.ENGINE.run_stats(infos)):
        compare_stats(a, b, c)
    rep = paramkit.scan(path, backend=gpu, threads=threads)
    assert rep.to_dict()["engine"]["threads"] == threads


def test_cuda_emulated_read_failure_is_an_oserror(tmp_path, monkeypatch):
    """A read that fails in any of the reader threads raises OSError (EIO) from the run, after the other
    readers have stopped; nothing stays allocated and the next run works."""
    if "cuda-emu" not in GPU_ENGINES:
        pytest.skip("needs the CUDA emulator (PARAMKIT_CUDA_EMU=ON) to inject the failure")
    import errno
    from paramkit import _cuda_emu
    monkeypatch.setenv("PARAMKIT_CUDA_RING_MB", "4")
    path = str(tmp_path / "r.safetensors")
    save_file({"w": np.arange(2_500_000, dtype=np.float32), "v": np.ones(7, dtype=np.float32)}, path)
    infos = tensor_infos(path)
    eng = get_engine("cuda-emu")
    want = eng.run(infos, threads=3)[0]
    live = _cuda_emu.live_allocations()
    # 10 MB in 3 batches of at most 4 MiB, each read in 1 MiB pieces (11 reads) by 3 readers: whichever
    # thread makes the failing read, the run raises
    for k in range(1, 12):
        err = emu_read_error(lambda: eng.run(infos, threads=3), k)
        assert err.errno == errno.EIO, err
        assert _cuda_emu.live_allocations() == live, f"read {k} failed: allocations were not freed"
        assert eng.run(infos, threads=3)[0] == want


# ---------------------------------------------------------------- the quantization pass on the GPU


def _live_allocations(gpu: str) -> int | None:
    """Device + pinned allocations not yet freed (the emulator counts them; None on a real GPU)."""
    if gpu != "cuda-emu":
        return None
    from paramkit import _cuda_emu
    return _cuda_emu.live_allocations()


def _quant_scan(path: str, backend: str, progress=None):
    r = paramkit.scan(path, backend=backend, quant="default", progress=progress)
    return r, {t.name: t.quant for t in r.tensors}


def _same_quant(a: dict, b: dict) -> None:
    """Per tensor and scheme: counts, max error and quantized sizes equal; float64 sums within 1e-9
    (the engines add the same terms in other orders)."""
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] is None) == (b[name] is None), name
        if a[name] is None:
            continue
        assert a[name].keys() == b[name].keys(), name
        for sid, ra in a[name].items():
            rb = b[name][sid]
            if "not_applicable" in rb:
                assert ra == rb
                continue
            for k in QCOUNTS + ("quantized_nbytes",):
                assert ra[k] == rb[k], (name, sid, k, ra[k], rb[k])
            assert ra["max_abs_err"] == rb["max_abs_err"] or (math.isnan(ra["max_abs_err"]) and math.isnan(rb["max_abs_err"]))
            for k in ("sse", "sum_w2", "sum_q2", "sum_wq"):
                assert (math.isnan(ra[k]) and math.isnan(rb[k])) or math.isclose(ra[k], rb[k], rel_tol=1e-9, abs_tol=1e-300), \
                    (name, sid, k, ra[k], rb[k])


@pytest.mark.parametrize("hold_mb, ring_mb", [(None, None), (0, None), (17, 1), (None, 1)])
def test_cuda_quant_held_second_pass(gpu, quant_checkpoint, monkeypatch, hold_mb, ring_mb):
    """int8_tensor / fp8_e4m3 need each tensor's absmax before they can run: the cuda engine keeps
    such tensors on the device for that second pass (hold_mb None: the default budget), re-reads
    them when nothing may be held (0), and with room for one tensor at a time (17 MiB, the f64
    tensor is 16.8 MB) it waits for earlier second passes and reuses the space. A 1 MiB ring
    spreads tensors over many batches. Every variant equals the numpy reference."""
    from paramkit.backends import cuda_backend
    if hold_mb is not None:
        monkeypatch.setattr(cuda_backend, "HOLD_BYTES", hold_mb << 20)
    if ring_mb is not None:
        monkeypatch.setenv("PARAMKIT_CUDA_RING_MB", str(ring_mb))
    seen = []
    live = _live_allocations(gpu)
    rep, got = _quant_scan(quant_checkpoint, gpu, progress=lambda done, total: seen.append((done, total)))
    assert _live_allocations(gpu) == live   # ring, scratch and hold arena all freed
    ref_rep, ref = _quant_scan(quant_checkpoint, "numpy")
    _same_quant(got, ref)
    cpu = {x.name: x.stats for x in paramkit.scan(quant_checkpoint, backend="cpu").tensors}
    for x, r in zip(rep.tensors, ref_rep.tensors):   # statistics too: the held pass must not disturb them
        compare_stats(x.stats, cpu[x.name], r.stats)
    second = [t for t in rep.tensors if t.quant and "int8_tensor" in t.quant and "not_applicable" not in t.quant["int8_tensor"]]
    held = rep.to_dict()["engine"]["held_tensors"]
    assert held == (0 if hold_mb == 0 else len(second)), held
    assert seen and seen[-1][0] == seen[-1][1] and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    if rep.tensors:   # bit-identical run to run
        _, again = _quant_scan(quant_checkpoint, gpu)
        assert json.dumps(again, sort_keys=True) == json.dumps(got, sort_keys=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cuda_arena_wrap_merges_pieces_in_order(gpu, tmp_path, monkeypatch, seed):
    """When the hold arena is full the engine collects every batch still in flight before reusing it; it must
    collect them oldest first, or a tensor split over two of them is finalized before its first pieces are
    merged (wrong counts, moments and quantiles, found by review; these seeds failed before the fix). A 1 MiB
    ring, a 0.5-4 MiB arena, and weights (held for int8_tensor) mixed with biases larger than one slot."""
    rng = np.random.default_rng(seed)
    nt = int(rng.integers(3, 9))
    sizes = (rng.uniform(0.1, 2.5, nt) * (1 << 20) / 4 / 256).astype(int) * 256
    weight = rng.integers(0, 2, nt)
    t = {(f"l{i}.weight" if w else f"l{i}.bias"): rng.standard_normal(n).astype(np.float32).reshape(-1, 256)
         for i, (n, w) in enumerate(zip(sizes, weight))}
    path = str(tmp_path / "wrap.safetensors")
    save_file(t, path)
    from paramkit.backends import cuda_backend
    monkeypatch.setattr(cuda_backend, "HOLD_BYTES", int(rng.uniform(0.5, 4) * (1 << 20)))
    monkeypatch.setenv("PARAMKIT_CUDA_RING_MB", "1")
    rep = paramkit.scan(path, backend=gpu, quant="int8_tensor")
    assert rep.to_dict()["engine"]["held_tensors"] > 0
    cpu = {x.name: x.stats for x in paramkit.scan(path, backend="cpu", quant="int8_tensor").tensors}
    ref = {x.name: x.stats for x in paramkit.scan(path, backend="numpy", quant="int8_tensor").tensors}
    for x in rep.tensors:
        compare_stats(x.stats, cpu[x.name], ref[x.name])


def test_cuda_quant_unit_larger_than_the_ring_falls_back(gpu, tmp_path, monkeypatch):
    # int8_channel keeps a whole output channel in one piece: a 1 x 600,000 f32 tensor (2.4 MB per
    # channel) cannot fit a 1 MiB ring slot, so the run goes to the cpu engine and says so
    monkeypatch.setenv("PARAMKIT_CUDA_RING_MB", "1")
    path = str(tmp_path / "wide.safetensors")
    save_file({"w": np.random.default_rng(0).standard_normal((1, 600_000)).astype(np.float32)}, path)
    rep = paramkit.scan(path, backend=gpu, quant="int8_channel")
    assert "ring slot" in rep.to_dict()["engine"]["fallback"]
    ref = paramkit.scan(path, backend="numpy", quant="int8_channel")
    _same_quant({t.name: t.quant for t in rep.tensors}, {t.name: t.quant for t in ref.tensors})


def test_cuda_emulated_allocation_failure_is_an_exception(tmp_path):
    """Every CUDA call is checked: an allocation that fails part way through setting up the ring
    raises RuntimeError naming the call, frees what was allocated, and the next run works."""
    if "cuda-emu" not in GPU_ENGINES:
        pytest.skip("needs the CUDA emulator (PARAMKIT_CUDA_EMU=ON) to inject the failure")
    from paramkit import _cuda_emu
    path = str(tmp_path / "a.safetensors")
    save_file({"w": np.arange(1000, dtype=np.float32)}, path)
    infos = tensor_infos(path)
    eng = get_engine("cuda-emu")
    want = eng.run_stats(infos)
    live = _cuda_emu.live_allocations()
    for k in (1, 2, 5, 9):
        _cuda_emu.fail_allocation(k)
        try:
            with pytest.raises(RuntimeError, match="cudaErrorMemoryAllocation"):
                eng.run_stats(infos)
        finally:
            _cuda_emu.fail_allocation(0)
        assert _cuda_emu.live_allocations() == live, f"allocation {k} failed: the ones before it were not freed"
        assert eng.run_stats(infos) == want
    assert _cuda_emu.live_allocations() == live
