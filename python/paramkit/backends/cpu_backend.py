"""The `cpu` backend: paramkit._core (C++ worker threads, GIL released, SIMD chosen at run time).
Python decides the options (threads, piece size); the extension holds no policy."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..dtypes import stats_dtype
from ..errors import BackendUnavailable
from ..stats import QUANTILE_LEVELS
from ..table import TensorInfo
from ..quant.plan import engine_kind
from . import device_memory_refused
from .block_types import block_types, numpy_fallback
from .native_records import histograms as native_histograms, quant_sums, task_spec, to_stats

# Piece size: results are merged per piece, so it is fixed (never derived from the thread count).
CHUNK_BYTES = 4 << 20
# With per-tensor-scale quantization schemes, tensors are scanned in batches of about this many bytes,
# each re-read (second pass) right after it was read, while it is still in the page cache
SECOND_PASS_BATCH_BYTES = 1 << 30


class CpuEngine:
    """The paramkit.backends.Engine of paramkit._core."""
    name = "cpu"
    reads_device_memory = False
    reads_views = True
    array_quant_backend = "cpu"

    def __init__(self, core):
        self._core = core
        self.last_run: dict = {}

    def run_stats(self, tensors: Sequence[TensorInfo], *, quantiles: bool = True, threads: int | None = None,
                  progress=None, histograms: bool = False) -> list[dict | None]:
        return self.run(tensors, quantiles=quantiles, threads=threads, progress=progress, histograms=histograms)[0]

    def run(self, tensors: Sequence[TensorInfo], *, stats: bool = True, quantiles: bool = True,
            threads: int | None = None, progress=None, quant=None, histograms: bool = False):
        """_run_native over every tensor, after the numpy backend has done the GGML block tensors this engine
        cannot dequantize (block_types.numpy_fallback: first, so that progress only grows); the report's
        engine.block_types says which backend computed which block type."""
        self.last_run = {}
        fb = [i for i, t in enumerate(tensors) if numpy_fallback(t.dtype)]
        fb_got = None
        if fb:
            from .numpy_backend import ENGINE as numpy_engine
            fb_got = numpy_engine.run([tensors[i] for i in fb], stats=stats, quantiles=quantiles, progress=progress,
                                      quant=None if quant is None else quant.take(fb), histograms=histograms)
        out, qout = self._run_native(tensors, stats=stats, quantiles=quantiles, threads=threads, progress=progress,
                                     quant=quant, histograms=histograms)
        if fb_got is not None:
            for k, i in enumerate(fb):
                out[i], qout[i] = fb_got[0][k], fb_got[1][k]
        kinds = block_types(tensors, self.name)
        if kinds:
            self.last_run["block_types"] = kinds
        return out, qout

    def _run_native(self, tensors: Sequence[TensorInfo], *, stats: bool = True, quantiles: bool = True,
                    threads: int | None = None, progress=None, quant=None, histograms: bool = False):
        """One streaming pass: statistics and every row/group quantization scheme of `quant` (a
        paramkit.quant.plan.QuantPlan); per-tensor-scale schemes (int8_tensor, fp8_e4m3) need the
        tensor's absmax first, so they run in a second pass over just those tensors. To keep that
        re-read in the page cache, not on the disk, the tensors go in consecutive batches of about
        `SECOND_PASS_BATCH_BYTES`, each read once and then re-read at once. Returns (stats list,
        quant list: per tensor {scheme id: error sums} or None)."""
        masks = quant.masks if quant is not None else None
        second = quant.second_pass_bits if quant is not None else 0
        out: list[dict | None] = [None] * len(tensors)
        qout: list[dict | None] = [None] * len(tensors)
        where = task_spec(tensors, masks, quant)[2]
        total = sum(t.nbytes for t in tensors)
        done = total - sum(tensors[i].nbytes for i in where)   # tensors without statistics are not read
        if not where:
            if progress:
                progress(total)
            return out, qout
        for batch in self._batches(tensors, where, masks, second):
            done = self._run_batch(tensors, batch, stats, quantiles, threads, progress, quant, done, out, qout,
                                   histograms)
        return out, qout

    def _batches(self, tensors, where, masks, second) -> list[list[int]]:
        """The tensors `where` in consecutive batches of about SECOND_PASS_BATCH_BYTES when some need
        the second pass (so that its re-read finds them in the page cache), else one batch."""
        if not (second and any(masks[i] & second for i in where)):
            return [where]
        batches, cur, size = [], [], 0
        for i in where:
            if cur and size + tensors[i].nbytes > SECOND_PASS_BATCH_BYTES:
                batches.append(cur)
                cur, size = [], 0
            cur.append(i)
            size += tensors[i].nbytes
        batches.append(cur)
        return batches

    def _call(self, files, spec, views, absmax, stats, quantiles, threads, levels, schemes, cb) -> dict:
        """One pass of the native engine over the tasks of `spec` (paramkit._core.run's arguments)."""
        return self._core.run(files, spec, absmax, bool(stats), bool(quantiles), int(threads or 0), CHUNK_BYTES,
                              levels, schemes, cb, views)

    def _run_batch(self, tensors, batch, stats, quantiles, threads, progress, quant, done, out, qout,
                   histograms=False) -> int:
        """Both passes over the tensors `batch`; `done` = bytes reported so far; returns the new count."""
        masks = quant.masks if quant is not None else None
        schemes = [engine_kind(s) for s in quant.schemes] if quant is not None else []
        files, spec, where, views = task_spec(tensors, masks, quant, only=batch)
        base = done
        cb = (lambda d: progress(base + d)) if progress else None
        rec = self._call(files, spec, views, np.full(len(where), np.nan), stats, quantiles, threads,
                         list(QUANTILE_LEVELS), schemes, cb)
        self.last_run = {"isa": rec["isa"], "threads": rec["threads"], "units": rec["units"]}
        held = rec.get("held")   # the cuda engine completes the second pass of tensors it kept on the device
        done += int(spec[:, 2].sum())
        hists = native_histograms(rec) if stats and histograms else None
        for row, i in enumerate(where):
            if stats:
                out[i] = to_stats(rec, row, tensors[i].dtype, quantiles)
                if hists is not None:
                    out[i]["histogram"] = hists[row]
            if masks is not None and masks[i]:
                qout[i] = {s.id: quant_sums(rec, row, k) for k, s in enumerate(quant.schemes) if masks[i] >> k & 1}
        second = quant.second_pass_bits if quant is not None else 0
        again = [i for row, i in enumerate(where) if masks[i] & second and not (held is not None and held[row])] \
            if second else []
        if second and held is not None and held.any():   # second passes done on the device: no re-read
            done += sum(tensors[i].nbytes for row, i in enumerate(where) if masks[i] & second and held[row])
            if progress:
                progress(done)
        if again:
            absmax_of = {i: float(rec["quant_absmax"][row]) for row, i in enumerate(where)}
            m2 = [0] * len(tensors)
            for i in again:
                m2[i] = masks[i] & second
            files2, spec2, where2, views2 = task_spec(tensors, m2, quant, only=again)
            base2 = done
            cb2 = (lambda d: progress(base2 + d)) if progress else None
            rec2 = self._call(files2, spec2, views2, np.array([absmax_of[i] for i in where2]), False, False, threads,
                              [], schemes, cb2)
            done += int(spec2[:, 2].sum())
            for row, i in enumerate(where2):
                for k, s in enumerate(quant.schemes):
                    if m2[i] >> k & 1:
                        qout[i][s.id] = quant_sums(rec2, row, k)
        return done

    def run_diff(self, pairs, *, threads: int | None = None, progress=None) -> list[dict]:
        """paramkit._core.run_diff (native_diff.py: both files pread in fixed pieces, bytes compared first, then
        the values as float64 in one fused pass) for every pair it takes; the others (native_diff.numpy_reason:
        llama.cpp's Q/K permutation, block types only gguf-py dequantizes) first on the numpy backend.
        last_run: "diff" (this engine), and "diff_fallback" {reason: pairs} when some went to numpy."""
        from .native_diff import numpy_reason, run_native_diff
        from .numpy_backend import ENGINE as numpy_engine
        why = [numpy_reason(p) for p in pairs]
        fb = [i for i, w in enumerate(why) if w is not None]
        out: list[dict | None] = [None] * len(pairs)
        done = 0
        if fb:
            got = numpy_engine.run_diff([pairs[i] for i in fb], threads=threads, progress=progress)
            for i, r in zip(fb, got):
                out[i] = r
            done = sum(pairs[i].a.nbytes + pairs[i].b.nbytes for i in fb)
        native = [i for i, w in enumerate(why) if w is None]
        cb = (lambda d: progress(done + d)) if progress else None
        got, info = run_native_diff(self._core, [pairs[i] for i in native], threads=threads, progress=cb)
        for i, r in zip(native, got):
            out[i] = r
        self.last_run = {"diff": self.name, **info}
        if fb:
            reasons: dict[str, int] = {}
            for i in fb:
                reasons[why[i]] = reasons.get(why[i], 0) + 1
            self.last_run["diff_fallback"] = {f"numpy: {k}": v for k, v in reasons.items()}
        return out

    def array_stats(self, array: np.ndarray, dtype: str, *, quantiles: bool = True) -> dict:
        d = stats_dtype(dtype)
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        rec = self._core.array_stats(raw, d.engine_id, bool(quantiles), CHUNK_BYTES, list(QUANTILE_LEVELS))
        return to_stats(rec, 0, dtype, quantiles)

    def array_quant(self, x: np.ndarray, scheme, *, want_values: bool, tensor_absmax: float | None = None):
        """paramkit._core's array quantizer on the float32 C-contiguous `x`: fake_quantize (values and the
        sums of the same element loop) or, without values, quant_error_sums (the engine's vector kernel)."""
        from ..quant import get_scheme
        s = get_scheme(scheme)
        kind, group = engine_kind(s)
        rows, row_len = s.rows_view(x.shape)
        flat = x.reshape(-1)
        if want_values:
            out, sums = self._core.fake_quantize(flat, kind, group, rows, row_len, tensor_absmax)
            return np.asarray(out, dtype=np.float32).reshape(x.shape), dict(sums)
        return None, dict(self._core.quant_error_sums(flat, kind, group, rows, row_len, tensor_absmax))

    def dlpack_stats(self, capsule, dtype: str, *, quantiles: bool = True) -> dict:
        raise device_memory_refused(self.name)

    def dlpack_quant(self, capsule, dtype: str, scheme, *, shape, want_values: bool):
        raise device_memory_refused(self.name)

    def build_info(self) -> dict:
        return dict(self._core.build_info())


def load():
    try:
        from .. import _core
    except ImportError as e:
        raise BackendUnavailable(f"the C++ extension paramkit._core is not built or failed to load ({e})") from None
    info = _core.build_info()
    return CpuEngine(_core), f"C++ engine, {info['isa']} kernels, {info['default_threads']} threads, {info['compiler']}"
