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
    else:
        assert len(p["devices"]) == p["device_count"]
        assert all(d["total_memory"] > 0 for d in p["devices"])
