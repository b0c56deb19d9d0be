"""The `cuda` backend: available only when paramkit._cuda was built AND the driver reports a device;
otherwise the recorded reason says which of the two is missing (auto then falls back to cpu)."""
from __future__ import annotations

from ..errors import BackendUnavailable


def probe() -> dict | None:
    """What paramkit._cuda reports (runtime, driver, devices), or None when it is not built."""
    try:
        from .. import _cuda
    except ImportError:
        return None
    return dict(_cuda.probe())


def load():
    try:
        from .. import _cuda  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(
            "not built: paramkit._cuda is absent (build with nvcc on PATH and PARAMKIT_CUDA=AUTO or ON)"
            f" [{e}]") from None
    p = probe()
    if not p["device_count"]:
        why = p["error"] or "the driver reports 0 devices"
        raise BackendUnavailable(f"built, but no usable CUDA device: {why}")
    raise BackendUnavailable(
        f"built and {p['device_count']} device(s) found ({p['devices'][0]['name']}), but the statistics kernels "
        "are not part of this version yet (issue #4)")
