"""The cuda backend's availability is explained, never an import failure: built without a device
(CI: nvcc but no GPU) it says "no usable CUDA device"; not built, it says how to build it."""
from __future__ import annotations

import importlib.util
import os

import paramkit
from paramkit.backends.cuda_backend import probe


def test_cuda_backend_reason_is_recorded():
    status = {b.name: b for b in paramkit.backends()}["cuda"]
    built = importlib.util.find_spec("paramkit._cuda") is not None
    p = probe()
    # .ci/run exports PARAMKIT_CUDA=ON where nvcc exists: the install must then have built _cuda
    if os.environ.get("PARAMKIT_CUDA") == "ON" and os.environ.get("PARAMKIT_CI_INSTALL") == "1":
        assert built, "PARAMKIT_CUDA=ON but paramkit._cuda was not installed"
    if not built:
        assert p is None and not status.available
        assert "not built" in status.reason and "PARAMKIT_CUDA" in status.reason
        return
    assert set(p) >= {"runtime_version", "driver_version", "device_count", "devices", "archs", "error"}
    assert "80" in p["archs"] and "90" in p["archs"]
    if p["device_count"] == 0:
        assert not status.available and "no usable CUDA device" in status.reason
        assert p["devices"] == []
        if p["driver_version"] == 0:   # nvcc but no driver (this CI machine): say so, not "insufficient"
            assert "no NVIDIA driver" in status.reason and "insufficient" not in status.reason, status.reason
    else:
        assert len(p["devices"]) == p["device_count"]
        assert all(d["total_memory"] > 0 for d in p["devices"])


def test_ci_builds_the_cuda_emulator(monkeypatch):
    """.ci/run builds paramkit._cuda_emu (PARAMKIT_CUDA_EMU=ON) so that the CUDA engine's tests run
    without a GPU; it is a test aid that 'auto' never picks and backends() does not list."""
    if os.environ.get("PARAMKIT_CUDA_EMU") == "ON" and os.environ.get("PARAMKIT_CI_INSTALL") == "1":
        assert importlib.util.find_spec("paramkit._cuda_emu") is not None, "PARAMKIT_CUDA_EMU=ON but no _cuda_emu"
    assert "cuda-emu" not in [b.name for b in paramkit.backends()]
    if importlib.util.find_spec("paramkit._cuda_emu") is not None:
        from paramkit import _cuda_emu
        from paramkit.backends import get_engine
        assert _cuda_emu.emulated is True and get_engine("cuda-emu").name == "cuda-emu"
        monkeypatch.delenv("PARAMKIT_BACKEND", raising=False)   # a dry run of gpu_check.sh sets it to cuda-emu
        assert get_engine("auto").name != "cuda-emu"


def test_no_driver_reason_says_no_driver():
    """What paramkit._cuda's probe returns on a machine without an NVIDIA driver (runtime 13.0, driver version
    0, cudaGetDeviceCount failing with cudaErrorInsufficientDriver) and on one with a driver but no GPU."""
    from paramkit.backends.cuda_backend import unavailable_reason
    no_driver = {"runtime_version": 13000, "driver_version": 0, "device_count": 0, "devices": [],
                 "error": "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"}
    why = unavailable_reason(no_driver)
    assert "no usable CUDA device" in why and "no NVIDIA driver" in why and "insufficient" not in why
    no_gpu = dict(no_driver, driver_version=12040, error="cudaErrorNoDevice: no CUDA-capable device is detected")
    assert unavailable_reason(no_gpu) == ("built, but no usable CUDA device: cudaErrorNoDevice: no CUDA-capable "
                                          "device is detected")
    old_driver = dict(no_driver, driver_version=11080)   # a driver older than the runtime: that error is right
    assert "insufficient" in unavailable_reason(old_driver) and "no NVIDIA driver" not in unavailable_reason(old_driver)
    assert unavailable_reason(dict(no_gpu, device_count=1, devices=[{"name": "H100"}], error="")) is None
