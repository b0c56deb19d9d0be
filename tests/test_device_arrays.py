"""Device arrays through DLPack: tensor_stats / fake_quantize / quant_error read a CUDA array where it lies (never a
host copy), against the host path and the numpy oracle. Parametrized over the producers that exist here: torch and
cupy arrays on a real GPU (backend "cuda"), and host memory labelled cuda:0 read by the CUDA emulator ("cuda-emu")."""
from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import math

import ml_dtypes
import numpy as np
import pytest

import paramkit
from paramkit._dlpack import DeviceResult

from conftest import GPU_FLOATS, QCOUNTS, available_backends, compare_stats, cpu_engine_built, float_data

SCHEMES = ("int8_tensor", "int8_channel", "q8_0", "nf4", "int4_g128_asym", "fp8_e4m3")


def _capsule_pointer(cap) -> int:
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get(cap, b"dltensor")


class _HostMemoryLabelledCuda:
    """A numpy array presented through DLPack as if it lived on cuda:0. Only the CUDA emulator can read it (its
    "device memory" is host memory): the device code path runs end to end without a GPU."""

    def __init__(self, a: np.ndarray):
        self.a = a

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        cap = self.a.__dlpack__()   # legacy "dltensor": DLManagedTensor starts with DLTensor
        ctypes.c_int32.from_address(_capsule_pointer(cap) + 8).value = 2   # DLTensor.device.device_type = kDLCUDA
        return cap


class EmulatedProducer:
    """Host memory labelled cuda:0, read by backend "cuda-emu"; results come back as DeviceResult (the test
    module has no from_dlpack) and are read back by relabelling their capsule as host memory."""
    name, backend, native_bf16 = "emulated", "cuda-emu", False

    def make(self, x: np.ndarray):
        return _HostMemoryLabelledCuda(x.view(np.uint16) if x.dtype == ml_dtypes.bfloat16 else x)

    def is_device_result(self, r) -> bool:
        return isinstance(r, DeviceResult) and r.__dlpack_device__() == (2, 0)

    def to_numpy(self, r) -> np.ndarray:
        cap = r.__dlpack__()
        ptr = _capsule_pointer(cap)
        assert ctypes.c_int32.from_address(ptr + 8).value == 2
        ctypes.c_int32.from_address(ptr + 8).value = 1

        class Host:
            def __dlpack_device__(self):
                return (1, 0)

            def __dlpack__(self, **kw):
                return cap
        return np.from_dlpack(Host()).copy()

    @contextlib.contextmanager
    def pending(self, x: np.ndarray):
        yield self.make(x)   # host memory: nothing of numpy's can be pending on a stream

    def memory_in_use(self) -> int:
        from paramkit import _cuda_emu
        return _cuda_emu.live_allocations()

    leak_slack = 0   # allocations, exact
    leak_rows, leak_calls = 64, 4   # the emulator is slow; it counts allocations exactly at any size


class TorchProducer:
    """torch tensors on cuda:0 (bfloat16 natively); results come back as torch tensors on the same device."""
    name, backend, native_bf16 = "torch", "cuda", True

    def __init__(self):
        import torch
        self.torch = torch

    def make(self, x: np.ndarray):
        t = self.torch
        if x.dtype == ml_dtypes.bfloat16:
            return t.from_numpy(x.view(np.int16).copy()).view(t.bfloat16).to("cuda")
        return t.from_numpy(x.copy()).to("cuda")

    def is_device_result(self, r) -> bool:
        return isinstance(r, self.torch.Tensor) and r.device.type == "cuda" and r.dtype == self.torch.float32

    def to_numpy(self, r) -> np.ndarray:
        return r.cpu().numpy()

    @contextlib.contextmanager
    def pending(self, x: np.ndarray):
        """The array's values are still being written on a side stream (behind ~0.1 s of spinning) when paramkit
        reads it: the DLPack stream handshake has to order that work before the engine's kernels."""
        t = self.torch
        src = self.make(x)
        t.cuda.synchronize()
        side = t.cuda.Stream()
        with t.cuda.stream(side):
            dev = t.empty_like(src)
            t.cuda._sleep(200_000_000)
            dev.copy_(src)
            yield dev
        t.cuda.synchronize()

    def memory_in_use(self) -> int:
        free, total = self.torch.cuda.mem_get_info()
        return total - free

    leak_slack = 64 << 20   # bytes; a leak in the loop below would be 10 x 64 MiB
    leak_rows, leak_calls = 4096, 10


class CupyProducer:
    """cupy arrays on cuda:0 (no bfloat16 in cupy: its bits as uint16, dtype="BF16"); results as cupy arrays."""
    name, backend, native_bf16 = "cupy", "cuda", False

    def __init__(self):
        import cupy
        self.cupy = cupy

    def make(self, x: np.ndarray):
        return self.cupy.asarray(x.view(np.uint16) if x.dtype == ml_dtypes.bfloat16 else x)

    def is_device_result(self, r) -> bool:
        return isinstance(r, self.cupy.ndarray) and r.dtype == np.float32

    def to_numpy(self, r) -> np.ndarray:
        return self.cupy.asnumpy(r)

    @contextlib.contextmanager
    def pending(self, x: np.ndarray):
        cp = self.cupy
        src = self.make(x)
        cp.cuda.Device().synchronize()
        with cp.cuda.Stream(non_blocking=True):
            dev = cp.empty_like(src)
            for _ in range(50):   # queued work on a non-blocking stream, unfinished when paramkit is called
                dev[...] = src
            yield dev
        cp.cuda.Device().synchronize()

    def memory_in_use(self) -> int:
        free, total = self.cupy.cuda.runtime.memGetInfo()
        return total - free

    leak_slack = 64 << 20
    leak_rows, leak_calls = 4096, 10


def _producers() -> list:
    out = []
    names = available_backends()
    if "cuda-emu" in names:
        out.append(EmulatedProducer())
    if "cuda" in names:
        if importlib.util.find_spec("torch") is not None:
            import torch
            if torch.cuda.is_available():
                out.append(TorchProducer())
        if importlib.util.find_spec("cupy") is not None:
            try:
                import cupy
                if cupy.cuda.runtime.getDeviceCount() > 0:
                    out.append(CupyProducer())
            except Exception:   # cupy installed without a usable CUDA runtime: not a producer here
                pass
    return out


PRODUCERS = _producers()
if not PRODUCERS:
    pytest.skip("no device-array producer here: needs the cuda backend with torch or cupy on a GPU, or the CUDA "
                "emulator (PARAMKIT_CUDA_EMU=ON); " + {b.name: b for b in paramkit.backends()}["cuda"].reason,
                allow_module_level=True)
IDS = [p.name for p in PRODUCERS]


def _data(dtype: str, seed: int) -> np.ndarray:
    """2 rows of 4096 values with NaN, ±Inf, ±0, subnormals and the dtype's max."""
    return float_data(GPU_FLOATS[dtype], 2 * 4096, np.random.default_rng(seed)).reshape(2, 4096)


def _stats(producer, dev, x):
    dtype = "BF16" if x.dtype == ml_dtypes.bfloat16 and not producer.native_bf16 else None
    return paramkit.tensor_stats(dev, dtype=dtype, backend=producer.backend)


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16", "F64"])
@pytest.mark.parametrize("producer", PRODUCERS, ids=IDS)
def test_device_array_stats(producer, dtype):
    """Statistics reduced where the array lies equal the host path's (cpu engine) and the numpy oracle's."""
    x = _data(dtype, 11)
    compare_stats(_stats(producer, producer.make(x), x), paramkit.tensor_stats(x, backend="cpu"),
                  paramkit.tensor_stats(x, backend="numpy"))
    one = x[:1, :1].copy()
    compare_stats(_stats(producer, producer.make(one), one), paramkit.tensor_stats(one, backend="cpu"),
                  paramkit.tensor_stats(one, backend="numpy"))


@pytest.mark.parametrize("producer,dtype", [(p, d) for p in PRODUCERS for d in ("F32", "BF16", "F16", "F64")
                                            if d != "BF16" or p.native_bf16],
                         ids=lambda v: getattr(v, "name", v))
def test_device_array_quantization(producer, dtype):
    """fake_quantize returns float32 values on the input's device in the input's library, bit-identical to the
    numpy reference; quant_error's counts and max error are exact, its sums within rounding."""
    x = _data(dtype, 12)
    dev = producer.make(x)
    for sid in SCHEMES:
        want = paramkit.fake_quantize(x, sid, backend="numpy")
        got = paramkit.fake_quantize(dev, sid, backend=producer.backend)
        assert producer.is_device_result(got), (sid, type(got))
        np.testing.assert_array_equal(producer.to_numpy(got).reshape(want.shape), want, err_msg=sid)
        ea, eb = paramkit.quant_error(dev, sid, backend=producer.backend), paramkit.quant_error(x, sid, backend="numpy")
        for k in QCOUNTS + ("max_abs_err",):
            assert ea[k] == eb[k] or (math.isnan(ea[k]) and math.isnan(eb[k])), (sid, k)
        assert math.isclose(ea["sse"], eb["sse"], rel_tol=1e-9, abs_tol=1e-300), sid


@pytest.mark.parametrize("producer,dtype", [(p, d) for p in PRODUCERS for d in ("F32", "BF16", "F16")],
                         ids=lambda v: getattr(v, "name", v))
def test_device_array_not_16_byte_aligned(producer, dtype):
    """A view that starts one element into its buffer is not 16-byte aligned; the engine's vector loads need
    that, so it copies the bytes on the device first and must wait for that copy: values as for the host."""
    x = _data(dtype, 16).reshape(-1)
    host = x[1:4097]
    if producer.name == "emulated":   # a numpy view of x's buffer, one element in
        view = _HostMemoryLabelledCuda((x.view(np.uint16) if dtype == "BF16" else x)[1:4097])
    else:
        view = producer.make(x).reshape(-1)[1:4097]
    compare_stats(_stats(producer, view, host), paramkit.tensor_stats(host, backend="cpu"),
                  paramkit.tensor_stats(host, backend="numpy"))
    if dtype == "BF16" and not producer.native_bf16:
        return
    for sid in ("int8_tensor", "q8_0", "fp8_e4m3"):
        got = producer.to_numpy(paramkit.fake_quantize(view, sid, backend=producer.backend))
        np.testing.assert_array_equal(got.reshape(-1), paramkit.fake_quantize(host, sid, backend="numpy").reshape(-1),
                                      err_msg=sid)


@pytest.mark.parametrize("producer", PRODUCERS, ids=IDS)
def test_device_array_pending_writes_are_seen(producer):
    """An array whose values are still being written by queued work of its library is read only after that
    work: the statistics and fake_quantize see the final values, not the memory before them."""
    x = _data("F32", 13)
    want_stats = paramkit.tensor_stats(x, backend="numpy")
    want_q = paramkit.fake_quantize(x, "int8_channel", backend="numpy")
    with producer.pending(x) as dev:
        got = paramkit.tensor_stats(dev, backend=producer.backend)
    compare_stats(got, paramkit.tensor_stats(x, backend="cpu"), want_stats)
    with producer.pending(x) as dev:
        q = paramkit.fake_quantize(dev, "int8_channel", backend=producer.backend)
    np.testing.assert_array_equal(producer.to_numpy(q), want_q)


@pytest.mark.parametrize("producer", PRODUCERS, ids=IDS)
def test_device_array_results_are_freed(producer):
    """Device memory paramkit allocates for a result is freed with the result, exported or not, and a
    statistics or error call leaves nothing behind."""
    x = np.random.default_rng(14).standard_normal((producer.leak_rows, 4096)).astype(np.float32)   # 4096 rows: 64 MiB
    dev = producer.make(x)
    producer.to_numpy(paramkit.fake_quantize(dev, "q8_0", backend=producer.backend))   # warm: module, context
    before = producer.memory_in_use()
    for i in range(producer.leak_calls):
        r = paramkit.fake_quantize(dev, "q8_0", backend=producer.backend)
        if i % 2:
            producer.to_numpy(r)
        del r
        paramkit.quant_error(dev, "nf4", backend=producer.backend)
        paramkit.tensor_stats(dev, backend=producer.backend)
    assert producer.memory_in_use() - before <= producer.leak_slack


@pytest.mark.parametrize("producer", PRODUCERS, ids=IDS)
def test_device_array_is_never_copied_to_the_host(producer):
    """A device array for a host backend, or one that is not contiguous, raises ValueError saying why; paramkit
    neither copies it to the host nor makes it contiguous behind the caller's back."""
    x = _data("F32", 15)
    dev = producer.make(x)
    for backend in ("cpu", "numpy"):
        if backend == "cpu" and not cpu_engine_built():
            continue
        with pytest.raises(ValueError, match="only the cuda backend reads device memory"):
            paramkit.tensor_stats(dev, backend=backend)
        with pytest.raises(ValueError, match="only the cuda backend reads device memory"):
            paramkit.fake_quantize(dev, "int8_tensor", backend=backend)
    strided = producer.make(x[:, ::2]) if producer.name == "emulated" else dev[:, ::2]
    with pytest.raises(ValueError, match="not C-contiguous"):
        paramkit.tensor_stats(strided, backend=producer.backend)
    with pytest.raises(ValueError, match="not C-contiguous"):
        paramkit.quant_error(strided, "int8_tensor", backend=producer.backend)
