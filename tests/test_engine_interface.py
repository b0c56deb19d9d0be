"""The engine interface (paramkit.backends.Engine) is what every engine implements, all of it, and backend
selection (PARAMKIT_BACKEND included) happens in one place for scan, the array functions and the export."""
from __future__ import annotations

import importlib
import inspect
import types

import numpy as np
import pytest

import paramkit
from paramkit.backends import Engine, get_engine, requested_backend
from paramkit.backends.cuda_backend import CudaEngine
from paramkit.backends.numpy_backend import ENGINE as NUMPY

from conftest import available_backends, cpu_engine_built

registry = importlib.import_module("paramkit.backends")   # the package; paramkit.backends is the function
PROTOCOL_METHODS = [n for n, v in vars(Engine).items() if inspect.isfunction(v) and not n.startswith("_")]
PROTOCOL_ATTRS = list(Engine.__annotations__)


def _params(fn) -> list[tuple[str, object, bool]]:
    return [(p.name, p.kind, p.default is inspect.Parameter.empty)
            for p in inspect.signature(fn).parameters.values() if p.name != "self"]


def test_protocol_declares_what_the_code_calls():
    assert set(PROTOCOL_METHODS) >= {"run", "run_stats", "array_stats", "array_quant", "dlpack_stats",
                                     "dlpack_quant", "build_info"}
    assert set(PROTOCOL_ATTRS) >= {"name", "last_run", "reads_device_memory", "array_quant_backend"}


@pytest.mark.parametrize("backend", available_backends())
def test_every_engine_implements_all_of_the_protocol(backend):
    eng = get_engine(backend)
    assert isinstance(eng, Engine)
    for attr in PROTOCOL_ATTRS:
        assert hasattr(eng, attr), f"{backend} engine lacks {attr}"
    assert isinstance(eng.last_run, dict) and isinstance(eng.reads_device_memory, bool)
    assert eng.array_quant_backend in ("numpy", "cpu", "cuda", "cuda-emu")
    for m in PROTOCOL_METHODS:
        assert _params(getattr(type(eng), m)) == _params(getattr(Engine, m)), \
            f"{backend} engine's {m} has another signature than paramkit.backends.Engine.{m}"
    assert isinstance(eng.build_info(), dict)


@pytest.mark.parametrize("backend", [b for b in available_backends() if not get_engine(b).reads_device_memory])
def test_host_only_engines_refuse_device_arrays_themselves(backend):
    eng = get_engine(backend)
    with pytest.raises(ValueError, match="host memory only"):
        eng.dlpack_stats(None, "F32")
    with pytest.raises(ValueError, match="host memory only"):
        eng.dlpack_quant(None, "F32", paramkit.quant.get_scheme("q8_0"), shape=(32,), want_values=False)


class _NoHostQuantizer(types.ModuleType):
    """Stands in for paramkit._cuda, which has no quantizer for host arrays: any use of it is a test failure."""

    def __getattr__(self, name):
        raise AssertionError(f"paramkit._cuda.{name} was used for a host array")


@pytest.fixture
def gpu_engine(monkeypatch):
    """A CudaEngine picked by backend="auto" (as on a machine with a GPU), whose compiled module must not be
    touched by host-array quantization; spies on the cpu and numpy engines' array_quant."""
    eng = CudaEngine(_NoHostQuantizer("paramkit._cuda"), {"name": "test GPU"})
    monkeypatch.setitem(registry._cache, "cuda", (eng, "a cuda engine (test)"))
    monkeypatch.delenv("PARAMKIT_BACKEND", raising=False)
    calls = []
    for e in (get_engine("cpu"), NUMPY):
        real = e.array_quant

        def spy(x, scheme, *, _real=real, _name=e.name, **kw):
            calls.append(_name)
            return _real(x, scheme, **kw)
        monkeypatch.setattr(e, "array_quant", spy)
    return calls


@pytest.mark.skipif(not cpu_engine_built(), reason="needs the cpu engine paramkit._core (the C++ build)")
def test_host_arrays_on_a_gpu_machine_quantize_on_the_cpu_engine(gpu_engine):
    """Before: fake_quantize / quant_error with backend="auto" on a machine with a GPU fell back to the pure-NumPy
    reference (the cuda engine holds paramkit._cuda, which has no host quantizer)."""
    x = np.random.default_rng(3).normal(size=(8, 96)).astype(np.float32)
    assert get_engine("auto").name == "cuda"
    from paramkit.quant.numpy_quant import quantize_dequantize
    for scheme in ("q4_0", "int8_channel", "int8_tensor", "nf4"):
        got = paramkit.fake_quantize(x, scheme)
        ref = quantize_dequantize(x, scheme).values            # the reference, called directly
        np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))
        e = paramkit.quant_error(x, scheme)
        assert e["n"] == x.size
        assert e["mse"] == pytest.approx(float(np.mean((x.astype(np.float64) - ref) ** 2)), rel=1e-9)
    assert gpu_engine == ["cpu"] * 8


@pytest.mark.skipif(not cpu_engine_built(), reason="needs the cpu engine paramkit._core (the C++ build)")
def test_export_on_a_gpu_machine_quantizes_on_the_cpu_engine(gpu_engine, small_checkpoint, tmp_path):
    s = paramkit.fake_quantize_file(small_checkpoint, "q8_0", tmp_path / "q.safetensors")
    assert s["backend"] == "cpu" and set(gpu_engine) == {"cpu"} and s["n_quantized"] >= 1


def test_paramkit_backend_is_read_in_one_place(monkeypatch, small_checkpoint, tmp_path):
    monkeypatch.delenv("PARAMKIT_BACKEND", raising=False)
    assert requested_backend("auto") == ("auto", "backend='auto'")
    assert requested_backend(None) == ("auto", "backend='auto'")
    assert requested_backend("CPU") == ("cpu", "backend='CPU'")
    monkeypatch.setenv("PARAMKIT_BACKEND", "numpy")
    assert requested_backend("auto") == ("numpy", "backend='auto', PARAMKIT_BACKEND=numpy")
    assert requested_backend("cpu")[0] == "cpu"           # an explicit backend wins over the variable
    assert get_engine().name == "numpy"
    assert paramkit.fake_quantize_file(small_checkpoint, "q8_0", tmp_path / "a.safetensors")["backend"] == "numpy"
    monkeypatch.setenv("PARAMKIT_BACKEND", "nonsense")
    msgs = []
    for call in (lambda: paramkit.scan(small_checkpoint),
                 lambda: paramkit.quant_error(np.ones((2, 32), np.float32), "q8_0"),
                 lambda: paramkit.tensor_stats(np.ones(4, np.float32)),
                 lambda: paramkit.fake_quantize_file(small_checkpoint, "q8_0", tmp_path / "b.safetensors")):
        with pytest.raises(paramkit.BackendUnavailable) as ei:
            call()
        msgs.append(str(ei.value))
    assert len(set(msgs)) == 1 and "'nonsense'" in msgs[0] and "PARAMKIT_BACKEND=nonsense" in msgs[0], msgs
    assert not (tmp_path / "b.safetensors").exists()
