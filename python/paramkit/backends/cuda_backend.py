"""The `cuda` backend: available only when paramkit._cuda was built AND the driver reports a device;
otherwise the recorded reason says which of the two is missing (auto then falls back to cpu)."""
from __future__ import annotations

from ..errors import BackendUnavailable
from .cpu_backend import CpuEngine


def probe() -> dict | None:
    """What paramkit._cuda reports (runtime, driver, devices), or None when it is not built."""
    try:
        from .. import _cuda
    except ImportError:
        return None
    return dict(_cuda.probe())


class CudaEngine(CpuEngine):
    """paramkit._cuda behind the cpu engine's interface (its run() has _core.run's signature).
    Statistics run on the GPU; quantization schemes are not on the GPU yet, so a run with a
    QuantPlan that names schemes goes to the cpu engine as a whole (statistics included)."""
    name = "cuda"

    def __init__(self, cuda, device: dict):
        super().__init__(cuda)
        self.device = device
        self._cpu: CpuEngine | None = None

    def _cpu_engine(self) -> CpuEngine:
        if self._cpu is None:
            from . import cpu_backend
            self._cpu = cpu_backend.load()[0]
        return self._cpu

    def run(self, tensors, *, stats: bool = True, quantiles: bool = True, threads=None, progress=None,
            quant=None, io=None):
        if quant is not None and len(quant.schemes):
            cpu = self._cpu_engine()
            res = cpu.run(tensors, stats=stats, quantiles=quantiles, threads=threads, progress=progress,
                          quant=quant, io=io)
            self.last_run = dict(cpu.last_run, fallback="cpu (quantization is not on the GPU yet)")
            return res
        return super().run(tensors, stats=stats, quantiles=quantiles, threads=threads, progress=progress,
                           quant=None, io=io)

    def build_info(self) -> dict:
        return {"device": self.device, **probe()}


def load():
    try:
        from .. import _cuda
    except ImportError as e:
        raise BackendUnavailable(
            "not built: paramkit._cuda is absent (build with nvcc on PATH and PARAMKIT_CUDA=AUTO or ON)"
            f" [{e}]") from None
    p = probe()
    if not p["device_count"]:
        why = p["error"] or "the driver reports 0 devices"
        raise BackendUnavailable(f"built, but no usable CUDA device: {why}")
    if not hasattr(_cuda, "run"):
        raise BackendUnavailable("built, but this paramkit._cuda has no statistics engine (rebuild it)")
    d = p["devices"][0]
    return CudaEngine(_cuda, d), (f"CUDA engine on {d['name']} (sm_{d['compute_capability'].replace('.', '')}), "
                                  "statistics on the GPU; quantization runs on the cpu engine")
