"""DLPack plumbing for the array entry points (tensor_stats, fake_quantize, quant_error): where an array lives,
its capsule, a zero-copy host view of it, and results handed back as an array of the caller's library."""
from __future__ import annotations

import importlib
import sys

import numpy as np

from .dtypes import BY_ENGINE_ID, DTYPES, from_numpy

# DLDeviceType values (dlpack.h)
CPU, CUDA, CUDA_HOST, CUDA_MANAGED = 1, 2, 3, 13
HOST_DEVICES = frozenset({CPU, CUDA_HOST})        # host-addressable: read in place by the cpu / numpy engines
CUDA_DEVICES = frozenset({CUDA, CUDA_MANAGED})    # read in place by the cuda engine only
DEVICE_NAMES = {1: "cpu", 2: "cuda", 3: "cuda_host", 4: "opencl", 7: "vulkan", 8: "metal", 9: "vpi", 10: "rocm",
                11: "rocm_host", 12: "ext_dev", 13: "cuda_managed", 14: "oneapi", 15: "webgpu", 16: "hexagon",
                17: "maia"}

# The highest DLPack version paramkit reads (the 1.1 type codes float8_e4m3fn / float8_e5m2 included).
MAX_VERSION = (1, 1)

# The `stream` handed to __dlpack__ for CUDA arrays. The array-API rule: the consumer names the stream
# it will use and the producer makes that stream wait for its pending work on the array. paramkit's
# cuda engine launches on its own non-blocking streams, which are not visible here, so paramkit asks
# for 1 = the legacy default stream, and paramkit._cuda then synchronizes the whole device before it
# reads the array (device_view in cuda/cuda_module.cu): that synchronization, not stream order, is what
# makes the producer's writes visible to the engine's kernels. The stream is always passed explicitly:
# torch's __dlpack__ (2.13) defaults to stream=-1, "no synchronization", and would not order its work
# before the legacy stream either.
CUDA_STREAM = 1

# numpy dtype of an element where numpy has one; bf16 / fp8 stay raw bit patterns (ml_dtypes is optional)
RAW_BITS = {"BF16": np.dtype("<u2"), "F8_E4M3": np.dtype("u1"), "F8_E5M2": np.dtype("u1")}


def device_name(device: tuple[int, int]) -> str:
    """'cuda:0', 'cpu:0', 'device type 99:0'."""
    t, i = device
    return f"{DEVICE_NAMES.get(t, f'device type {t}')}:{i}"


def device_of(obj) -> tuple[int, int] | None:
    """(DLPack device type, device id) of `obj`, or None when it has no ``__dlpack_device__``.
    Never imports torch or cupy."""
    f = getattr(obj, "__dlpack_device__", None)
    if f is None:
        return None
    t, i = f()
    return int(t), int(i)


def capsule_of(obj, device: tuple[int, int] | None = None):
    """obj.__dlpack__(...): a "dltensor_versioned" capsule when the producer takes ``max_version``, else a legacy
    "dltensor" one. CUDA arrays get ``stream=CUDA_STREAM`` (see above); host arrays no stream (the spec
    requires None there). A torch tensor that requires grad is detached first (a view, no copy: torch
    refuses to export it otherwise). `device`: device_of(obj) when the caller already has it."""
    obj = _exportable(obj)
    if device is None:
        device = device_of(obj)
    kw = {"stream": CUDA_STREAM} if device is not None and device[0] in CUDA_DEVICES else {}
    try:
        return obj.__dlpack__(max_version=MAX_VERSION, **kw)
    except TypeError:   # a producer older than DLPack 1.0 (no max_version keyword)
        return obj.__dlpack__(**kw)


def _exportable(obj):
    """torch refuses to export a tensor that requires grad: its detach() is the same memory, no copy."""
    if getattr(obj, "requires_grad", False) and callable(getattr(obj, "detach", None)):
        return obj.detach()
    return obj


def dtype_name(engine_id: int) -> str:
    """safetensors dtype name (paramkit.dtypes) of a paramkit engine dtype id."""
    return BY_ENGINE_ID[engine_id].name


def dtype_id(name: str) -> int:
    """paramkit engine dtype id of a safetensors dtype name (-1: no statistics)."""
    return DTYPES[name].engine_id


def _core_module():
    try:
        from . import _core
    except ImportError:
        return None
    return _core if hasattr(_core, "dlpack_host_view") else None


def describe(capsule) -> dict:
    """What a capsule holds (any device; the data is not touched): device_type, device_id, dtype (engine id),
    code, bits, lanes, shape, numel, nbytes, readonly. Needs paramkit._core."""
    core = _core_module()
    if core is None:
        raise RuntimeError("reading a DLPack device array needs paramkit's C++ extension paramkit._core, "
                           "which is not built or too old here")
    return dict(core.dlpack_describe(capsule))


def host_array(obj) -> tuple[np.ndarray, str, tuple]:
    """A zero-copy numpy view of a host-memory DLPack array (kDLCPU, kDLCUDAHost): (array of the element
    dtype where numpy has one, raw bit patterns (uint16 / uint8) for BF16 / F8_E4M3 / F8_E5M2; safetensors
    dtype name; shape). The view is read-only and keeps the producer's memory alive. Non-C-contiguous arrays
    are read through np.from_dlpack (a strided view the engines copy, as for strided numpy input); for bf16 /
    fp8 they raise ValueError. Without paramkit._core, np.from_dlpack reads the dtypes numpy has."""
    core = _core_module()
    if core is None:
        return _from_numpy_dlpack(obj, core_missing=True)
    try:
        raw, info = core.dlpack_host_view(capsule_of(obj))
    except ValueError as e:
        if "not C-contiguous" not in str(e):
            raise
        return _from_numpy_dlpack(obj, core_missing=False, why=e)
    name = dtype_name(info["dtype"])
    shape = tuple(info["shape"])
    dt = RAW_BITS.get(name) or np.dtype(DTYPES[name].numpy_name)
    return raw.view(dt).reshape(shape), name, shape


def _from_numpy_dlpack(obj, *, core_missing: bool, why: Exception | None = None):
    try:
        a = np.from_dlpack(_exportable(obj))
    except (TypeError, ValueError, BufferError, RuntimeError) as e:
        if core_missing:
            raise TypeError(f"numpy cannot read this {type(obj).__name__} through DLPack ({e}); bfloat16 and "
                            "float8 arrays need paramkit's C++ extension paramkit._core, which is not available "
                            "here") from e
        raise ValueError(f"{why}; numpy cannot read it either ({e})") from e
    return a, from_numpy(a.dtype).name, a.shape


class DeviceResult:
    """A result array as a DLPack producer: hands its capsule out once (a second export raises BufferError).
    The engine finished writing the data before it returned the capsule (it synchronizes its own stream), so
    the consumer's ``stream`` needs no ordering and is ignored; ``max_version`` is ignored too (the capsule is a
    legacy "dltensor" one, which every consumer reads); ``dl_device`` must be the array's device and
    ``copy=True`` is refused (paramkit does not copy device memory)."""

    def __init__(self, capsule, device: tuple[int, int]):
        self._capsule = capsule
        self._device = (int(device[0]), int(device[1]))

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._device

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if dl_device is not None and (int(dl_device[0]), int(dl_device[1])) != self._device:
            raise BufferError(f"this result is on {device_name(self._device)}, not on "
                              f"{device_name((int(dl_device[0]), int(dl_device[1])))}")
        if copy:
            raise BufferError("paramkit results cannot be exported as a copy")
        if self._capsule is None:
            raise BufferError("this paramkit result was already exported (a DLPack capsule is handed out once)")
        cap, self._capsule = self._capsule, None
        return cap

    def __repr__(self) -> str:
        return f"DeviceResult({device_name(self._device)}, {'exported' if self._capsule is None else 'pending'})"


def wrap_like(obj, out):
    """`out` (a DLPack capsule or an object with ``__dlpack__``, on obj's device) as an array of obj's library:
    ``<top-level module of type(obj)>.from_dlpack(...)`` (torch, cupy, numpy, ...); the DeviceResult itself (or
    `out` when it is already a DLPack object) when that library has no from_dlpack."""
    x = out if hasattr(out, "__dlpack__") else DeviceResult(out, device_of(obj) or (CPU, 0))
    top = type(obj).__module__.split(".")[0]
    mod = sys.modules.get(top)
    if mod is None:
        try:
            mod = importlib.import_module(top)
        except ImportError:
            return x
    from_dlpack = getattr(mod, "from_dlpack", None)
    return from_dlpack(x) if callable(from_dlpack) else x
