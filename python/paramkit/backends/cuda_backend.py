"""The `cuda` backend: available only when paramkit._cuda was built AND the driver reports a device;
otherwise the recorded reason says which of the two is missing (auto then falls back to cpu)."""
from __future__ import annotations

import os

from ..dtypes import DTYPES, stats_dtype
from ..errors import BackendUnavailable
from ..quant.plan import engine_kind
from ..stats import QUANTILE_LEVELS
from .cpu_backend import CpuEngine
from .native_records import to_stats


def probe() -> dict | None:
    """What paramkit._cuda reports (runtime, driver, devices), or None when it is not built."""
    try:
        from .. import _cuda
    except ImportError:
        return None
    return dict(_cuda.probe())


def no_device_reason(p: dict) -> str | None:
    """Why a built paramkit._cuda sees no device, from its probe(); None when it sees one. Driver version 0
    means the CUDA runtime found no driver at all: it then reports cudaErrorInsufficientDriver ("driver
    version is insufficient"), which would send a user to upgrade a driver that is not there."""
    if p["device_count"]:
        return None
    if not p["driver_version"]:
        return "no NVIDIA driver (the CUDA runtime finds no libcuda and reports driver version 0)"
    return p["error"] or "the driver reports 0 devices"


def unavailable_reason(p: dict) -> str | None:
    """Why a built paramkit._cuda cannot run (no_device_reason, as the backend list says it); None when it can."""
    why = no_device_reason(p)
    return None if why is None else f"built, but no usable CUDA device: {why}"


class CudaEngine(CpuEngine):
    """paramkit._cuda behind the cpu engine's interface (its run() has _core.run's signature plus
    hold_bytes). Statistics and every quantization scheme run on the GPU; tensors that need the
    per-tensor-scale second pass (int8_tensor, fp8_e4m3) stay in device memory for it (up to
    HOLD_BYTES, and half the free memory), larger ones are read a second time. Arrays on a CUDA device
    come in through DLPack; host arrays are quantized by the cpu engine (paramkit._cuda has no host-array
    quantizer: for an array already in host memory a copy to the GPU and back would cost more than the work)."""
    name = "cuda"
    reads_device_memory = True
    reads_views = True
    array_quant_backend = "cpu"

    def __init__(self, cuda, device: dict):
        super().__init__(cuda)
        self.device = device

    def _cpu_engine(self) -> CpuEngine:
        """The cpu engine, which runs what this one delegates (BackendUnavailable with its reason if absent)."""
        from . import get_engine
        return get_engine("cpu")

    def run(self, tensors, *, stats: bool = True, quantiles: bool = True, threads=None, progress=None,
            quant=None, histograms: bool = False):
        if quant is not None and len(quant.schemes):
            unit = self._largest_quant_unit(tensors, quant)
            if unit > ring_bytes():
                cpu = self._cpu_engine()
                res = cpu.run(tensors, stats=stats, quantiles=quantiles, threads=threads, progress=progress,
                              quant=quant, histograms=histograms)
                self.last_run = dict(cpu.last_run, fallback=(
                    f"cpu: a quantization unit of {unit} bytes (a whole channel or row) is larger than one "
                    f"{ring_bytes()}-byte ring slot of the GPU pipeline (PARAMKIT_CUDA_RING_MB)"))
                return res
        self.held_last = {}
        res = super().run(tensors, stats=stats, quantiles=quantiles, threads=threads, progress=progress,
                          quant=quant, histograms=histograms)
        self.last_run.update(self.held_last)
        return res

    @staticmethod
    def _largest_quant_unit(tensors, quant) -> int:
        """Bytes of the largest piece the engine must keep whole (piece_multiple elements)."""
        big = 0
        for t, m in zip(tensors, quant.masks):
            d = DTYPES[t.dtype]
            if m and d.has_stats:   # a GGML block tensor's unit is of its dequantized float32 values
                big = max(big, quant.piece_multiple(tuple(t.shape), m) * (4 if d.kind == "block" else d.bits // 8))
        return big

    def _batches(self, tensors, where, masks, second) -> list[list[int]]:
        return [where]   # the second pass reads held tensors from device memory, not the page cache

    def _call(self, files, spec, views, absmax, stats, quantiles, threads, levels, schemes, cb) -> dict:
        rec = self._core.run(files, spec, absmax, bool(stats), bool(quantiles), int(threads or 0), 0, levels,
                             schemes, cb, HOLD_BYTES, views)
        h = self.held_last = getattr(self, "held_last", {})
        for k in ("held_tensors", "held_bytes"):
            h[k] = h.get(k, 0) + int(rec[k])
        h["hold_capacity"] = max(h.get("hold_capacity", 0), int(rec["hold_capacity"]))
        return rec

    def run_diff(self, pairs, *, threads=None, progress=None) -> list[dict]:
        """Delegated to the cpu engine's native diff pass (paramkit._cuda has no diff kernel yet; the per-element
        math it would use is cpp/include/paramkit/diff.hpp); last_run says so."""
        cpu = self._cpu_engine()
        out = cpu.run_diff(pairs, threads=threads, progress=progress)
        self.last_run = dict(cpu.last_run, fallback="cpu: paramkit._cuda has no diff kernel")
        return out

    def array_quant(self, x, scheme, *, want_values: bool, tensor_absmax: float | None = None):
        return self._cpu_engine().array_quant(x, scheme, want_values=want_values, tensor_absmax=tensor_absmax)

    def dlpack_stats(self, capsule, dtype: str, *, quantiles: bool = True) -> dict:
        """Statistics of a CUDA array given as a DLPack capsule, reduced on its device (no host copy)."""
        d = stats_dtype(dtype)
        rec = self._core.dlpack_stats(capsule, bool(quantiles), list(QUANTILE_LEVELS), d.engine_id)
        return to_stats(rec, 0, dtype, quantiles)

    def dlpack_quant(self, capsule, dtype: str, scheme, *, shape, want_values: bool):
        """fake_quantize / quant_error of a CUDA array of `shape` given as a DLPack capsule, on its device:
        (a DLPack capsule of the float32 values on that device or None, the error-sums dict)."""
        kind, group = engine_kind(scheme)
        rows, row_len = scheme.rows_view(tuple(shape))
        values, sums = self._core.dlpack_quant(capsule, kind, group, int(rows), int(row_len), None, bool(want_values))
        return values, dict(sums)

    def build_info(self) -> dict:
        return {"device": self.device, **dict(self._core.probe())}


# Device memory that may keep tensors for the per-tensor-scale second pass (the engine also caps it
# at half the free memory); PARAMKIT_CUDA_HOLD_MB overrides, 0 disables holding (re-read instead).
HOLD_BYTES = int(os.environ.get("PARAMKIT_CUDA_HOLD_MB", str(8 << 10))) << 20


def ring_bytes() -> int:
    """Bytes of one slot of the GPU pipeline's ring (the engine's default, or PARAMKIT_CUDA_RING_MB)."""
    return max(1, int(os.environ.get("PARAMKIT_CUDA_RING_MB", "32") or 32)) << 20


def load(emulated: bool = False):
    """The cuda engine, or with emulated=True the same engine compiled for the CPU emulator
    (paramkit._cuda_emu, built with PARAMKIT_CUDA_EMU=ON): a test aid, never chosen by 'auto'."""
    if emulated:
        try:
            from .. import _cuda_emu
        except ImportError as e:
            raise BackendUnavailable(f"not built: paramkit._cuda_emu is absent (build with PARAMKIT_CUDA_EMU=ON) [{e}]") from None
        d = dict(_cuda_emu.probe())["devices"][0]
        eng = CudaEngine(_cuda_emu, d)
        eng.name = "cuda-emu"
        return eng, f"the CUDA engine on the CPU emulator ({d['name']}); for tests, not speed"
    try:
        from .. import _cuda
    except ImportError as e:
        raise BackendUnavailable(
            "not built: paramkit._cuda is absent (build with nvcc on PATH and PARAMKIT_CUDA=AUTO or ON)"
            f" [{e}]") from None
    p = probe()
    why = unavailable_reason(p)
    if why is not None:
        raise BackendUnavailable(why)
    if not hasattr(_cuda, "dlpack_quant"):
        raise BackendUnavailable("built, but this paramkit._cuda is from an older paramkit (rebuild it)")
    d = p["devices"][0]
    return CudaEngine(_cuda, d), (f"CUDA engine on {d['name']} (sm_{d['compute_capability'].replace('.', '')}), "
                                  "statistics and quantization on the GPU")
