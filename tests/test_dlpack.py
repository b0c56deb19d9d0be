"""DLPack input and output on the CPU: the C++ capsule reader and maker (cpp/bindings/dlpack_view.hpp) against real
producers (numpy, torch) and hand-built capsules, and the array entry points' routing of DLPack arrays."""
from __future__ import annotations

import ctypes
import importlib
import datetime
import gc
import sys
import types
import weakref

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import as_strided

import paramkit
from conftest import available_backends
from paramkit import _dlpack
from paramkit.dtypes import DTYPES

torch = pytest.importorskip("torch")

BACKENDS = available_backends()


def _core():
    try:
        from paramkit import _core
    except ImportError:
        pytest.fail("the C++ extension paramkit._core must be built for the DLPack tests")
    return _core


# ---- capsules built by hand from the DLPack spec (dlpack.h), independent of paramkit's C++ -------------

class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32), ("dtype", DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", DLPackVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p),
                ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


_capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)(
    ("PyCapsule_New", ctypes.pythonapi))
_capsule_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", ctypes.pythonapi))


class Handmade:
    """A capsule over ctypes structs (no destructor, no deleter); keep this object alive while the capsule is used."""

    def __init__(self, data: bytes, shape, *, code=2, bits=32, lanes=1, strides=None, byte_offset=0, device=(1, 0),
                 versioned=False, version=(1, 0), flags=0, name=None, null_data=False, null_shape=False):
        self.buf = ctypes.create_string_buffer(bytes(data), max(len(data), 1))
        self.shape = (ctypes.c_int64 * max(len(shape), 1))(*shape)
        self.strides = None if strides is None else (ctypes.c_int64 * max(len(strides), 1))(*strides)
        t = DLTensor(None if null_data else ctypes.addressof(self.buf), DLDevice(*device), len(shape),
                     DLDataType(code, bits, lanes), None if null_shape else self.shape, self.strides, byte_offset)
        if versioned:
            self.managed = DLManagedTensorVersioned(DLPackVersion(*version), None, None, flags, t)
        else:
            self.managed = DLManagedTensor(t, None, None)
        self.name = name if name is not None else (b"dltensor_versioned" if versioned else b"dltensor")
        self.capsule = _capsule_new(ctypes.addressof(self.managed), self.name, None)


def _bytes_of(raw: np.ndarray) -> bytes:
    return np.asarray(raw).tobytes()


def _ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


# ---- the reader against numpy ------------------------------------------------------------------------

NUMPY_DTYPES = ["float64", "float32", "float16", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
                "uint64", "bool"]


@pytest.mark.parametrize("versioned", [False, True])
@pytest.mark.parametrize("dt", NUMPY_DTYPES)
def test_numpy_capsules(dt, versioned):
    rng = np.random.default_rng(3)
    a = np.abs(rng.normal(size=(5, 7)) * 50).astype(dt)
    cap = a.__dlpack__(max_version=(1, 1)) if versioned else a.__dlpack__()
    assert _capsule_name(cap) == (b"dltensor_versioned" if versioned else b"dltensor")
    raw, info = _core().dlpack_host_view(cap)
    name = {"float64": "F64", "float32": "F32", "float16": "F16", "bool": "BOOL"}.get(dt) or \
        dt.replace("uint", "U").replace("int", "I")
    assert info["dtype"] == DTYPES[name].engine_id and info["shape"] == (5, 7)
    assert (info["device_type"], info["device_id"]) == (1, 0) and info["nbytes"] == a.nbytes == raw.nbytes
    assert raw.dtype == np.uint8 and _bytes_of(raw) == a.tobytes()
    assert _ptr(raw) == _ptr(a)                          # a view, not a copy
    assert not raw.flags.writeable
    assert _capsule_name(cap) == (b"dltensor_versioned" if versioned else b"dltensor")   # not consumed
    assert _core().dlpack_describe(cap) == info


def test_numpy_readonly_flag_and_lifetime():
    a = np.arange(12, dtype=np.float32)
    a.setflags(write=False)
    raw, info = _core().dlpack_host_view(a.__dlpack__(max_version=(1, 1)))
    assert info["readonly"] is True
    b = np.arange(6, dtype=np.int32)
    ref = weakref.ref(b)
    raw, info = _core().dlpack_host_view(b.__dlpack__())
    assert info["readonly"] is False
    del b
    gc.collect()
    assert ref() is not None, "the view must keep the producer's array alive (capsule as its base)"
    assert _bytes_of(raw) == np.arange(6, dtype=np.int32).tobytes()
    del raw
    gc.collect()
    assert ref() is None, "dropping the view must release the capsule and, through its deleter, the array"


# ---- the reader against torch ------------------------------------------------------------------------

# torch dtype -> (paramkit dtype, how to get the reference bytes independently of DLPack)
TORCH_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2", "int8": "I8", "uint8": "U8", "int16": "I16", "uint16": "U16", "int32": "I32",
    "uint32": "U32", "int64": "I64", "uint64": "U64", "bool": "BOOL",
}


def _torch_tensor(dt: str, shape=(6, 9), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 40
    tdt = getattr(torch, dt)
    if dt == "bool":
        return x > 0
    if dt.startswith(("int", "uint")):
        return x.round().clamp(0 if dt.startswith("u") else -100, 100).to(torch.int64).to(tdt)
    return x.to(tdt)


def _torch_bytes(t) -> bytes:
    """Bytes of a CPU tensor, read without DLPack (torch's own uint8 view and .numpy())."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("versioned", [False, True])
@pytest.mark.parametrize("dt", list(TORCH_DTYPES))
def test_torch_capsules_every_dtype(dt, versioned):
    t = _torch_tensor(dt)
    cap = t.__dlpack__(max_version=(1, 1)) if versioned else t.__dlpack__()
    raw, info = _core().dlpack_host_view(cap)
    assert info["dtype"] == DTYPES[TORCH_DTYPES[dt]].engine_id and info["shape"] == (6, 9)
    assert _bytes_of(raw) == _torch_bytes(t) and _ptr(raw) == t.data_ptr()
    arr, name, shape = _dlpack.host_array(t)
    assert name == TORCH_DTYPES[dt] and shape == (6, 9) and arr.shape == (6, 9) and _ptr(arr) == t.data_ptr()
    if dt in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):   # raw bit patterns (numpy lacks these dtypes)
        assert arr.dtype == (np.uint16 if dt == "bfloat16" else np.uint8)
    else:
        np.testing.assert_array_equal(arr, t.numpy())


@pytest.mark.parametrize("dt", ["complex64", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"])
def test_torch_dtypes_without_paramkit_id(dt):
    if not hasattr(torch, dt):
        pytest.skip(f"torch has no {dt}")
    t = torch.zeros(4, dtype=getattr(torch, dt))
    with pytest.raises(TypeError, match=r"code \d+, bits \d+"):
        _core().dlpack_host_view(t.__dlpack__())
    with pytest.raises(TypeError):
        paramkit.tensor_stats(t)


@pytest.mark.parametrize("view", ["T", "cols", "step"])
def test_non_contiguous_views_rejected(view):
    t = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    v = {"T": t.T, "cols": t[:, 1:], "step": t[::2]}[view]
    with pytest.raises(ValueError, match="not C-contiguous"):
        _core().dlpack_host_view(v.__dlpack__())


def test_offset_views_are_read_in_place():
    t = torch.arange(20, dtype=torch.int32)
    raw, info = _core().dlpack_host_view(t[3:].__dlpack__())
    assert info["shape"] == (17,) and _ptr(raw) == t.data_ptr() + 12
    np.testing.assert_array_equal(raw.view(np.int32), np.arange(3, 20, dtype=np.int32))
    m = torch.arange(40, dtype=torch.float64).reshape(8, 5)
    arr, name, shape = _dlpack.host_array(m[2:5])          # whole rows: contiguous, with an offset
    assert name == "F64" and shape == (3, 5)
    np.testing.assert_array_equal(arr, np.arange(10, 25, dtype=np.float64).reshape(3, 5))
    h = Handmade(np.arange(10, dtype=np.float32).tobytes(), (4,), byte_offset=8)   # DLTensor.byte_offset
    raw, _ = _core().dlpack_host_view(h.capsule)
    np.testing.assert_array_equal(raw.view(np.float32), [2, 3, 4, 5])


def test_zero_d_and_empty():
    raw, info = _core().dlpack_host_view(torch.tensor(3.5).__dlpack__())
    assert info["shape"] == () and info["numel"] == 1 and raw.view(np.float32).tolist() == [3.5]
    raw, info = _core().dlpack_host_view(torch.zeros(0, 7, dtype=torch.bfloat16).__dlpack__())
    assert info["shape"] == (0, 7) and info["numel"] == 0 and raw.size == 0
    arr, name, shape = _dlpack.host_array(torch.tensor(-1.25, dtype=torch.float16))
    assert arr.shape == () and name == "F16" and float(arr) == -1.25


def test_consumed_and_foreign_capsules():
    t = torch.arange(5, dtype=torch.float32)
    cap = t.__dlpack__()
    raw, _ = _core().dlpack_host_view(cap)                 # reading does not consume ...
    u = torch.utils.dlpack.from_dlpack(cap)                # ... so a real consumer still can
    assert u.tolist() == [0, 1, 2, 3, 4] and _capsule_name(cap) == b"used_dltensor"
    with pytest.raises(ValueError, match="already consumed"):
        _core().dlpack_host_view(cap)
    with pytest.raises(ValueError, match="already consumed"):
        _core().dlpack_describe(cap)
    with pytest.raises(ValueError, match="'datetime.datetime_CAPI'"):
        _core().dlpack_host_view(datetime.datetime_CAPI)
    h = Handmade(b"\0" * 4, (1,), name=b"not_a_tensor")
    with pytest.raises(ValueError, match="'not_a_tensor'"):
        _core().dlpack_host_view(h.capsule)
    with pytest.raises(TypeError):
        _core().dlpack_host_view(b"not a capsule")


# ---- the reader against hand-built capsules: every rejection rule -------------------------------------

@pytest.mark.parametrize("kw, exc, match", [
    (dict(versioned=True, version=(2, 0)), ValueError, "version 2.0"),
    (dict(lanes=4), TypeError, "lanes 4"),
    (dict(code=5, bits=64), TypeError, "code 5, bits 64"),           # complex64
    (dict(code=2, bits=24), TypeError, "code 2, bits 24"),           # odd width
    (dict(code=11, bits=8), TypeError, "code 11, bits 8"),           # float8_e4m3fnuz
    (dict(code=14, bits=8), TypeError, "code 14"),                   # float8_e8m0fnu
    (dict(code=17, bits=4), TypeError, "code 17, bits 4"),           # float4_e2m1fn
    (dict(code=10, bits=16), TypeError, "code 10, bits 16"),         # fp8 code, wrong width
    (dict(shape=(3, -2)), ValueError, "negative dimension"),
    (dict(shape=(1 << 62, 4)), ValueError, "overflows"),
    (dict(shape=(1 << 31, 1 << 31, 1 << 2)), ValueError, "overflows"),
    (dict(null_data=True), ValueError, "null data pointer"),
    (dict(null_shape=True), ValueError, "null shape"),
    (dict(shape=(2, 3), strides=(1, 2)), ValueError, "not C-contiguous"),
    (dict(shape=(2, 3), strides=(3, 2)), ValueError, "not C-contiguous"),
])
def test_handmade_rejections(kw, exc, match):
    kw = dict(kw)
    shape = kw.pop("shape", (2, 3))
    h = Handmade(b"\0" * 64, shape, **kw)
    with pytest.raises(exc, match=match):
        _core().dlpack_host_view(h.capsule)
    with pytest.raises(exc, match=match):
        _core().dlpack_describe(h.capsule)
    assert _capsule_name(h.capsule) == h.name


@pytest.mark.parametrize("kw, dtype, shape", [
    (dict(versioned=True, version=(1, 7), flags=1), "F32", (2, 3)),        # newer minor: readable; read-only flag
    (dict(code=6, bits=8), "BOOL", (2, 3)),
    (dict(code=1, bits=64), "U64", (2, 3)),
    (dict(code=4, bits=16), "BF16", (2, 3)),
    (dict(code=10, bits=8), "F8_E4M3", (2, 3)),
    (dict(code=12, bits=8), "F8_E5M2", (2, 3)),
    (dict(shape=(1 << 40, 1 << 40, 0)), "F32", (1 << 40, 1 << 40, 0)),    # empty: no overflow, any data
    (dict(shape=(1 << 40, 0), null_data=True, strides=(7, 7)), "F32", (1 << 40, 0)),
    (dict(shape=(3, 1), strides=(1, 99)), "F32", (3, 1)),                 # a size-1 dim takes any stride
    (dict(shape=(1, 1), strides=(5, 9)), "F32", (1, 1)),
])
def test_handmade_accepted(kw, dtype, shape):
    kw = dict(kw)
    kw.pop("shape", None)
    h = Handmade(bytes(range(64)), shape, **kw)
    info = _core().dlpack_describe(h.capsule)
    assert info["dtype"] == DTYPES[dtype].engine_id and info["shape"] == shape
    assert info["readonly"] == bool(kw.get("flags", 0) & 1)
    raw, _ = _core().dlpack_host_view(h.capsule)
    assert _bytes_of(raw) == bytes(range(64))[:info["nbytes"]]


@settings(max_examples=300, deadline=None)
@given(dims=st.lists(st.integers(0, 4), max_size=4), data=st.data(),
       dtype=st.sampled_from(["F64", "F32", "F16", "I8", "U16", "I64"]))
def test_contiguity_rule_matches_numpy(dims, data, dtype):
    """Accepted iff numpy calls the same shape/strides C-contiguous (numpy: size-1 dims and empty arrays are
    contiguous whatever their strides); accepted tensors read exactly their first nbytes."""
    d = DTYPES[dtype]
    npdt = np.dtype(d.numpy_name)
    compact = [int(np.prod(dims[k + 1:], dtype=np.int64)) for k in range(len(dims))]
    strides = [data.draw(st.one_of(st.just(c), st.integers(0, 30)), label=f"stride{k}") for k, c in enumerate(compact)]
    nbytes = int(np.prod(dims, dtype=np.int64)) * npdt.itemsize
    payload = bytes((i * 37 + 11) & 0xFF for i in range(nbytes))
    h = Handmade(payload, tuple(dims), code={"F": 2, "I": 0, "U": 1}[dtype[0]], bits=d.bits, strides=strides)
    byte_strides = tuple(s * npdt.itemsize for s in strides)
    contiguous = as_strided(np.zeros(1, npdt), tuple(dims), byte_strides).flags.c_contiguous
    if contiguous:
        raw, info = _core().dlpack_host_view(h.capsule)
        assert info["shape"] == tuple(dims) and _bytes_of(raw) == payload
    else:
        with pytest.raises(ValueError, match="not C-contiguous"):
            _core().dlpack_host_view(h.capsule)


def test_host_view_refuses_device_memory():
    cap = _core()._test_make_capsule([4], DTYPES["F32"].engine_id, 2)   # labelled kDLCUDA
    with pytest.raises(ValueError, match="not in host memory"):
        _core().dlpack_host_view(cap)
    info = _core().dlpack_describe(cap)
    assert (info["device_type"], info["shape"], info["dtype"]) == (2, (4,), DTYPES["F32"].engine_id)


# ---- make_capsule (through the test-only binding) ------------------------------------------------------

TORCH_OF_ID = {DTYPES[v].engine_id: k for k, v in TORCH_DTYPES.items()}


def _pattern(n: int) -> bytes:
    return bytes((i * 131 + 7) & 0xFF for i in range(n))


@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 4), (2, 0, 5), (2, 3, 1, 2)])
@pytest.mark.parametrize("dtype_id", sorted(TORCH_OF_ID))
def test_make_capsule_roundtrip_torch(dtype_id, shape):
    core = _core()
    frees = core._test_capsule_frees()
    cap = core._test_make_capsule(list(shape), dtype_id)
    t = torch.from_dlpack(_dlpack.DeviceResult(cap, (1, 0)))
    assert t.dtype == getattr(torch, TORCH_OF_ID[dtype_id]) and tuple(t.shape) == shape and t.is_contiguous()
    n = int(np.prod(shape, dtype=np.int64)) * t.element_size()
    assert _torch_bytes(t) == _pattern(n)
    del cap
    assert core._test_capsule_frees() == frees, "freed while torch still uses it"
    del t
    assert core._test_capsule_frees() == frees + 1, "not freed exactly once"


@pytest.mark.parametrize("dt", ["float64", "float32", "int8", "uint16", "int64", "bool"])
def test_make_capsule_roundtrip_numpy(dt):
    core = _core()
    frees = core._test_capsule_frees()
    name = TORCH_DTYPES[dt]
    a = np.from_dlpack(_dlpack.DeviceResult(core._test_make_capsule([3, 2], DTYPES[name].engine_id), (1, 0)))
    assert a.dtype == np.dtype(dt) and a.shape == (3, 2)
    if dt != "bool":
        assert a.tobytes() == _pattern(a.nbytes)
    del a
    assert core._test_capsule_frees() == frees + 1


def test_make_capsule_unconsumed_or_failed_frees_once():
    core = _core()
    f32 = DTYPES["F32"].engine_id
    frees = core._test_capsule_frees()
    cap = core._test_make_capsule([5], f32)
    raw, info = core.dlpack_host_view(cap)                   # our own reader, on our own capsule
    assert _bytes_of(raw) == _pattern(20) and info["shape"] == (5,)
    del cap
    assert core._test_capsule_frees() == frees               # the view still holds the capsule
    del raw
    assert core._test_capsule_frees() == frees + 1           # never consumed: the capsule destructor frees
    with pytest.raises(ValueError, match="negative dimension"):
        core._test_make_capsule([2, -1], f32)
    with pytest.raises(ValueError, match="dtype id"):
        core._test_make_capsule([2], 99)
    assert core._test_capsule_frees() == frees + 3           # make_capsule owns the data even when it throws
    cap = core._test_make_capsule([2], f32)
    t = torch.utils.dlpack.from_dlpack(cap)                  # consumed: torch calls the deleter, not the capsule
    with pytest.raises(Exception):
        torch.utils.dlpack.from_dlpack(cap)
    del cap
    assert core._test_capsule_frees() == frees + 3
    del t
    assert core._test_capsule_frees() == frees + 4


# ---- DeviceResult and wrap_like ------------------------------------------------------------------------

def test_device_result_hands_out_once():
    r = _dlpack.DeviceResult(_core()._test_make_capsule([2], DTYPES["F32"].engine_id), (1, 0))
    assert r.__dlpack_device__() == (1, 0)
    with pytest.raises(BufferError, match="cuda:0"):
        r.__dlpack__(dl_device=(2, 0))
    with pytest.raises(BufferError, match="copy"):
        r.__dlpack__(copy=True)
    cap = r.__dlpack__(stream=None, max_version=(1, 1), dl_device=(1, 0), copy=False)
    assert _capsule_name(cap) == b"dltensor"
    with pytest.raises(BufferError, match="already exported"):
        r.__dlpack__()


def test_wrap_like(monkeypatch):
    core = _core()
    t = _dlpack.wrap_like(torch.zeros(1), core._test_make_capsule([2, 3], DTYPES["F32"].engine_id))
    assert isinstance(t, torch.Tensor) and tuple(t.shape) == (2, 3) and _torch_bytes(t) == _pattern(24)
    a = _dlpack.wrap_like(np.zeros(1), core._test_make_capsule([4], DTYPES["I16"].engine_id))
    assert isinstance(a, np.ndarray) and a.tobytes() == _pattern(8)
    u = _dlpack.wrap_like(torch.zeros(1), np.arange(3.0))          # an object with __dlpack__, passed as is
    assert isinstance(u, torch.Tensor) and u.tolist() == [0.0, 1.0, 2.0]
    Obj = type("Obj", (), {"__module__": "nofromdlpack", "__dlpack_device__": lambda self: (2, 0)})
    monkeypatch.setitem(sys.modules, "nofromdlpack", types.ModuleType("nofromdlpack"))
    r = _dlpack.wrap_like(Obj(), core._test_make_capsule([1], 1))
    assert isinstance(r, _dlpack.DeviceResult) and r.__dlpack_device__() == (2, 0)


# ---- capsule_of, device_of ------------------------------------------------------------------------------

def test_capsule_of_protocol_variants():
    calls = []

    class Modern:            # DLPack >= 1.0 producer
        def __init__(self, a):
            self.a = a

        def __dlpack_device__(self):
            return (1, 0)

        def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
            calls.append(("modern", stream, max_version))
            return self.a.__dlpack__(max_version=max_version)

    class Legacy:            # pre-1.0 producer: no max_version, no __dlpack_device__
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, stream=None):
            calls.append(("legacy", stream))
            return self.a.__dlpack__()

    a = np.arange(6, dtype=np.float32)
    assert _capsule_name(_dlpack.capsule_of(Modern(a))) == b"dltensor_versioned"
    assert _capsule_name(_dlpack.capsule_of(Legacy(a))) == b"dltensor"
    assert calls == [("modern", None, _dlpack.MAX_VERSION), ("legacy", None)]
    assert _dlpack.device_of(Legacy(a)) is None and _dlpack.device_of([1, 2]) is None
    assert _dlpack.device_of(torch.zeros(1)) == (1, 0) and _dlpack.device_of(a) == (1, 0)
    for obj in (Modern(a), Legacy(a)):
        assert paramkit.tensor_stats(obj) == paramkit.tensor_stats(a)


def test_dtype_name_map():
    for name, d in DTYPES.items():
        if d.engine_id >= 0:
            assert _dlpack.dtype_name(d.engine_id) == name and _dlpack.dtype_id(name) == d.engine_id


# ---- the entry points on torch CPU tensors vs the numpy equivalent -------------------------------------

NUMPY_EQUIV = {"bfloat16": ml_dtypes.bfloat16, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
               "float8_e5m2": ml_dtypes.float8_e5m2}


def _pair(dt: str, shape=(16, 64), seed=1):
    """(torch tensor, numpy array with the very same bits) of torch dtype `dt`."""
    t = _torch_tensor(dt, shape, seed)
    raw = np.frombuffer(_torch_bytes(t), dtype=np.uint8)
    npdt = NUMPY_EQUIV.get(dt) or np.dtype(dt)
    return t, raw.view(npdt).reshape(shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dt", list(TORCH_DTYPES))
def test_tensor_stats_torch_equals_numpy(dt, backend):
    t, a = _pair(dt)
    st_t = paramkit.tensor_stats(t, backend=backend)
    assert st_t == paramkit.tensor_stats(a, backend=backend)
    ref = a.astype(np.float64)
    assert st_t["max"] == ref.max() and st_t["min"] == ref.min() and st_t["nan"] == 0
    assert paramkit.tensor_stats(t, quantiles=False, backend=backend) == \
        paramkit.tensor_stats(a, quantiles=False, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dt", ["float32", "float16", "bfloat16", "float64", "float8_e4m3fn", "float8_e5m2"])
@pytest.mark.parametrize("scheme", ["q8_0", "int4_g64_asym", "int8_channel", "nf4", "fp8_e4m3"])
def test_quant_torch_equals_numpy(dt, scheme, backend):
    t, a = _pair(dt, (8, 128), seed=2)
    q = paramkit.fake_quantize(t, scheme, backend=backend)
    q_ref = paramkit.fake_quantize(a, scheme, backend=backend)
    assert isinstance(q, np.ndarray) and q.dtype == np.float32 and q.shape == (8, 128)
    np.testing.assert_array_equal(q, q_ref)
    e, e_ref = paramkit.quant_error(t, scheme, backend=backend), paramkit.quant_error(a, scheme, backend=backend)
    assert e == e_ref and e["n"] == t.numel()
    w = a.astype(np.float32).astype(np.float64)                  # the engines quantize the float32 values
    sse = float(((w - q_ref.astype(np.float64)) ** 2).sum())      # an independent sum
    assert e["sse"] == pytest.approx(sse, rel=1e-9, abs=1e-30)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_zero_d_empty_grad_strided(backend):
    s = paramkit.tensor_stats(torch.tensor(2.5), backend=backend)
    assert s == paramkit.tensor_stats(np.array(2.5, np.float32), backend=backend) and s["max"] == 2.5
    q = paramkit.fake_quantize(torch.tensor(0.3), "int8_tensor", backend=backend)
    assert q.shape == () and q == paramkit.fake_quantize(np.array(0.3, np.float32), "int8_tensor", backend=backend)
    e = paramkit.quant_error(torch.zeros(0, 32), "q8_0", backend=backend)
    assert e["n"] == 0 and paramkit.fake_quantize(torch.zeros(0, 32), "q8_0", backend=backend).shape == (0, 32)
    w = torch.nn.Parameter(torch.randn(4, 64))                    # requires_grad: detached, not copied
    assert paramkit.tensor_stats(w, backend=backend) == paramkit.tensor_stats(w.detach().numpy(), backend=backend)
    m = torch.randn(64, 32)                                       # strided float32: copied like strided numpy
    assert paramkit.tensor_stats(m.T, backend=backend) == paramkit.tensor_stats(m.numpy().T, backend=backend)
    np.testing.assert_array_equal(paramkit.fake_quantize(m.T, "q8_0", backend=backend),
                                  paramkit.fake_quantize(np.ascontiguousarray(m.numpy().T), "q8_0", backend=backend))
    with pytest.raises(ValueError, match="not C-contiguous"):     # strided bf16: numpy cannot express it
        paramkit.tensor_stats(m.to(torch.bfloat16).T, backend=backend)
    with pytest.raises(TypeError, match="floating-point"):
        paramkit.fake_quantize(torch.arange(64), "q8_0", backend=backend)
    bits = torch.from_numpy(np.arange(64, dtype=np.uint16) + 0x3F00)   # raw bf16 bits, dtype override
    assert paramkit.tensor_stats(bits, dtype="BF16", backend=backend) == \
        paramkit.tensor_stats((np.arange(64, dtype=np.uint16) + 0x3F00).view(ml_dtypes.bfloat16), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_stats_reads_torch_memory_in_place(backend, monkeypatch):
    from paramkit.backends import get_engine
    eng = get_engine(backend)
    seen = []
    real = eng.array_stats

    def spy(arr, dtype, **kw):
        seen.append((_ptr(arr), dtype))
        return real(arr, dtype, **kw)

    monkeypatch.setattr(eng, "array_stats", spy)
    for dt in ("bfloat16", "float32", "int8"):
        t = _torch_tensor(dt, (32, 32))
        paramkit.tensor_stats(t, backend=backend)
        assert seen[-1] == (t.data_ptr(), TORCH_DTYPES[dt]), "the engine got a copy, not the tensor's memory"


def test_without_core_numpy_reads_what_it_can(monkeypatch):
    monkeypatch.setattr(_dlpack, "_core_module", lambda: None)
    t, a = _pair("float32")
    assert paramkit.tensor_stats(t, backend="numpy") == paramkit.tensor_stats(a, backend="numpy")
    with pytest.raises(TypeError, match="paramkit._core"):
        paramkit.tensor_stats(t.to(torch.bfloat16), backend="numpy")


# ---- arrays on a CUDA device --------------------------------------------------------------------------

class CudaLike:
    """Claims to live on cuda:0 (or another device); must never be exported when no engine can read it."""

    def __init__(self, device=(2, 0)):
        self.device = device

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, **kw):
        raise AssertionError("paramkit exported a device array it cannot read")


def _backends_that_cannot_read_cuda() -> list[str]:
    """Backend choices under which a CUDA array must be refused here: cpu (when built) and numpy always, auto and
    cuda only where the cuda backend is unavailable (with a GPU, tests/test_device_arrays.py reads real ones)."""
    status = {b.name: b for b in paramkit.backends()}
    return [b for b in ("auto", "cpu", "numpy", "cuda")
            if not (status["cuda"].available and b in ("auto", "cuda")) and (b != "cpu" or status["cpu"].available)]


@pytest.mark.parametrize("call", ["tensor_stats", "fake_quantize", "quant_error"])
@pytest.mark.parametrize("backend", _backends_that_cannot_read_cuda())
def test_cuda_array_without_cuda_backend(call, backend, monkeypatch):
    monkeypatch.delenv("PARAMKIT_BACKEND", raising=False)
    status = {b.name: b for b in paramkit.backends()}
    fn = getattr(paramkit, call)
    args = () if call == "tensor_stats" else ("q8_0",)
    with pytest.raises(ValueError) as ei:
        fn(CudaLike(), *args, backend=backend)
    msg = str(ei.value)
    assert "cuda:0" in msg and f"backend={backend!r}" in msg and ".cpu()" in msg
    if status["cuda"].available:
        assert "pass backend='cuda'" in msg
    else:
        assert status["cuda"].reason in msg


def test_cuda_array_error_names_env_override(monkeypatch):
    monkeypatch.setenv("PARAMKIT_BACKEND", "numpy")
    with pytest.raises(ValueError, match=r"'numpy' \(backend='auto', PARAMKIT_BACKEND=numpy\)"):
        paramkit.tensor_stats(CudaLike())


def test_other_devices_rejected():
    with pytest.raises(ValueError, match="rocm:1"):
        paramkit.tensor_stats(CudaLike((10, 1)))
    with pytest.raises(ValueError, match="metal:0"):
        paramkit.fake_quantize(CudaLike((8, 0)), "q8_0")


class FakeGpuArray:
    """A host DLPack array (numpy, torch CPU) that claims to be on cuda:0, to drive the device path without a GPU."""

    def __init__(self, a):
        self.a = a
        self.shape = tuple(a.shape)
        self.exports = []

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        self.exports.append({"stream": stream, "max_version": max_version})
        return self.a.__dlpack__(max_version=max_version)

    def reshape(self, shape):
        return FakeGpuArray(self.a.reshape(shape))


FakeGpuArray.__module__ = "fakegpu"


class FakeCudaEngine:
    """The DLPack half of CudaEngine's interface, computed on the host with the numpy reference."""
    name = "cuda"
    reads_device_memory = True

    def __init__(self):
        self.calls = []

    def dlpack_stats(self, capsule, dtype, *, quantiles):
        from paramkit.backends.numpy_backend import ENGINE
        raw, info = _core().dlpack_host_view(capsule)
        self.calls.append(("stats", dtype, quantiles, info["shape"]))
        return ENGINE.array_stats(raw, dtype, quantiles=quantiles)

    def dlpack_quant(self, capsule, dtype, scheme, *, shape, want_values):
        from paramkit.backends.numpy_backend import decode
        from paramkit.quant import numpy_quant
        raw, info = _core().dlpack_host_view(capsule)
        self.calls.append(("quant", dtype, scheme.id, tuple(shape), want_values))
        x = np.asarray(decode(raw, dtype), dtype=np.float32).reshape(info["shape"])
        r = numpy_quant.quantize_dequantize(x, scheme)
        sums = numpy_quant.error_sums_of(x, r.values, clipped=r.clipped, scale_clamped=r.scale_clamped)
        return (np.ascontiguousarray(r.values).reshape(-1).__dlpack__() if want_values else None), sums


@pytest.fixture
def fake_cuda(monkeypatch):
    registry = importlib.import_module("paramkit.backends")
    eng = FakeCudaEngine()
    monkeypatch.setitem(registry._cache, "cuda", (eng, "fake cuda engine (test)"))
    mod = types.ModuleType("fakegpu")
    mod.from_dlpack = lambda x: FakeGpuArray(_core().dlpack_host_view(x.__dlpack__())[0].view(np.float32))
    monkeypatch.setitem(sys.modules, "fakegpu", mod)
    monkeypatch.delenv("PARAMKIT_BACKEND", raising=False)
    return eng


def test_device_path_routes_to_cuda_engine(fake_cuda):
    rng = np.random.default_rng(5)
    a = rng.normal(size=(4, 6, 64)).astype(ml_dtypes.bfloat16)
    g = FakeGpuArray(torch.from_numpy(a.view(np.int16)).view(torch.bfloat16))   # numpy cannot export bf16
    assert paramkit.tensor_stats(g, quantiles=False, backend="cuda") == \
        paramkit.tensor_stats(a, quantiles=False, backend="numpy")
    assert fake_cuda.calls[-1] == ("stats", "BF16", False, (4, 6, 64))
    assert g.exports[-1] == {"stream": _dlpack.CUDA_STREAM, "max_version": _dlpack.MAX_VERSION}
    for scheme in ("int8_channel", "q8_0"):
        e = paramkit.quant_error(g, scheme)                               # auto picks the (fake) cuda engine
        assert e == paramkit.quant_error(a, scheme, backend="numpy")
        assert fake_cuda.calls[-1] == ("quant", "BF16", scheme, (4, 6, 64), False)
        q = paramkit.fake_quantize(g, scheme)
        assert isinstance(q, FakeGpuArray) and q.shape == (4, 6, 64)     # the input's library, input's shape
        np.testing.assert_array_equal(q.a, paramkit.fake_quantize(a, scheme, backend="numpy"))
        assert fake_cuda.calls[-1] == ("quant", "BF16", scheme, (4, 6, 64), True)


def test_device_path_dtype_rules(fake_cuda):
    bits = (np.arange(128, dtype=np.uint16) + 0x3F00)
    assert paramkit.tensor_stats(FakeGpuArray(bits), dtype="BF16") == \
        paramkit.tensor_stats(bits.view(ml_dtypes.bfloat16), backend="numpy")
    assert fake_cuda.calls[-1][1] == "BF16"
    with pytest.raises(ValueError, match="whole number of BF16"):
        paramkit.tensor_stats(FakeGpuArray(np.zeros(3, np.uint8)), dtype="BF16")
    with pytest.raises(ValueError, match="unknown dtype"):
        paramkit.tensor_stats(FakeGpuArray(np.zeros(4, np.uint8)), dtype="F7")
    with pytest.raises(TypeError, match="floating-point"):
        paramkit.fake_quantize(FakeGpuArray(np.zeros((2, 32), np.int32)), "q8_0")
    with pytest.raises(ValueError, match="not a multiple of the block size 32"):
        paramkit.quant_error(FakeGpuArray(np.zeros((2, 20), np.float32)), "q8_0")
    n = len(fake_cuda.calls)
    for host in ("cpu", "numpy"):                                      # an explicit host backend still refuses
        if host in BACKENDS:
            with pytest.raises(ValueError, match=f"backend='{host}'.*cuda is available: pass backend='cuda'"):
                paramkit.tensor_stats(FakeGpuArray(np.zeros(4, np.float32)), backend=host)
    assert len(fake_cuda.calls) == n


def test_cuda_engine_without_dlpack_support(monkeypatch):
    """A paramkit._cuda from an older build (no DLPack entry points) is not a usable cuda engine: the backend is
    unavailable with "rebuild" as its reason, and a device array is refused with that reason."""
    registry = importlib.import_module("paramkit.backends")
    old = types.ModuleType("paramkit._cuda")
    old.probe = lambda: {"device_count": 1, "error": None,
                         "devices": [{"name": "GPU (test)", "compute_capability": "9.0"}]}
    monkeypatch.setitem(sys.modules, "paramkit._cuda", old)
    monkeypatch.setattr(paramkit, "_cuda", old, raising=False)
    monkeypatch.delitem(registry._cache, "cuda", raising=False)
    monkeypatch.delenv("PARAMKIT_BACKEND", raising=False)
    status = {b.name: b for b in paramkit.backends()}["cuda"]
    assert not status.available and "rebuild" in status.reason
    with pytest.raises(ValueError, match="rebuild"):
        paramkit.tensor_stats(CudaLike())
