"""The pure-NumPy engine: the reference oracle every native backend (cpu, cuda) is tested against,
written from the definitions in paramkit.stats and always available (NumPy only at run time)."""
from __future__ import annotations

import functools
import math
import sys
from typing import Sequence

import numpy as np

from .. import stats as _stats
from . import device_memory_refused
from ..dtypes import DTYPES, stats_dtype
from ..sources import open_source
from ..table import TensorInfo

# A chunk is this many elements of one tensor, counted from its first element: at most 16 MiB of
# file bytes (F64) and two chunk-sized float64 scratch arrays. Chunk boundaries depend on the
# tensor alone (never on threads) and chunk results are merged in chunk order.
CHUNK_ELEMENTS = 1 << 21

# ------------------------------------------------------------------------------------------------
# decoding, from the format definitions


def _f8_value(code: int, exp_bits: int, man_bits: int, bias: int, ieee_special: bool) -> float:
    sign = -1.0 if code >> 7 else 1.0
    e = (code >> man_bits) & ((1 << exp_bits) - 1)
    m = code & ((1 << man_bits) - 1)
    e_max = (1 << exp_bits) - 1
    if ieee_special and e == e_max:                    # E5M2: IEEE-like inf / NaN
        return sign * math.inf if m == 0 else math.nan
    if not ieee_special and e == e_max and m == (1 << man_bits) - 1:   # E4M3FN: S.1111.111 only
        return math.nan
    if e == 0:                                         # zero or subnormal
        return sign * math.ldexp(m, 1 - bias - man_bits)
    return sign * math.ldexp((1 << man_bits) + m, e - bias - man_bits)


def _f8_lut(exp_bits: int, man_bits: int, bias: int, ieee_special: bool) -> np.ndarray:
    lut = np.array([_f8_value(c, exp_bits, man_bits, bias, ieee_special) for c in range(256)],
                   dtype=np.float32)
    lut.setflags(write=False)
    return lut


F8_E4M3_LUT = _f8_lut(4, 3, 7, ieee_special=False)     # OCP E4M3FN: bias 7, max 448, no inf
F8_E5M2_LUT = _f8_lut(5, 2, 15, ieee_special=True)     # bias 15, ±inf, NaN

# raw element view (unsigned bits, little-endian) and bit fields of the float formats
_RAW = {"F64": "<u8", "F32": "<u4", "F16": "<u2", "BF16": "<u2", "F8_E4M3": "u1", "F8_E5M2": "u1",
        "I8": "u1", "U8": "u1", "I16": "<u2", "U16": "<u2", "I32": "<u4", "U32": "<u4",
        "I64": "<u8", "U64": "<u8", "BOOL": "u1"}
_VALUE_VIEW = {"F64": "<f8", "F32": "<f4", "I32": "<i4", "U32": "<u4", "I64": "<i8", "U64": "<u8"}
_FIELDS = {  # exponent mask, mantissa mask
    "F64": (0x7FF0_0000_0000_0000, (1 << 52) - 1), "F32": (0x7F80_0000, (1 << 23) - 1),
    "F16": (0x7C00, 0x03FF), "BF16": (0x7F80, 0x007F), "F8_E4M3": (0x78, 0x07),
    "F8_E5M2": (0x7C, 0x03)}


def _decode_codes(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Values of unsigned element bit patterns of an 8/16-bit dtype: floats exactly (float16 or
    float32), integers as int64, BOOL as 0/1."""
    if dtype == "BF16":
        return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if dtype == "F16":
        return bits.view("<f2")
    if dtype == "F8_E4M3":
        return F8_E4M3_LUT[bits]
    if dtype == "F8_E5M2":
        return F8_E5M2_LUT[bits]
    if dtype == "BOOL":
        return (bits != 0).astype(np.int64)
    if dtype in ("I8", "I16"):
        return bits.view("i1" if dtype == "I8" else "<i2").astype(np.int64)
    return bits.astype(np.int64)                       # U8, U16


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """The values of an array whose raw bytes are elements of safetensors `dtype`: floats exactly
    (float16/32/64), integers in their own numpy type (int64 for 8/16-bit), BOOL as 0/1."""
    bits = np.ascontiguousarray(raw).reshape(-1).view(np.uint8).view(_RAW[dtype])
    return bits.view(_VALUE_VIEW[dtype]) if dtype in _VALUE_VIEW else _decode_codes(bits, dtype)


class _Codes:
    """The 2^bits codes of an 8/16-bit dtype (or the bfloat16 patterns that F32/F64/32-64-bit
    integers are binned to for quantiles): each code's value and class, and the non-NaN codes in
    value order (sign-magnitude floats in total order, so -0 sorts just before +0)."""

    def __init__(self, dtype: str):
        n = 256 if _RAW[dtype] == "u1" else 1 << 16
        codes = np.arange(n, dtype=np.uint8 if n == 256 else np.uint16)
        with np.errstate(invalid="ignore"):            # signalling-NaN patterns
            values = _decode_codes(codes, dtype).astype(np.float64)
        self.is_float = dtype in _FIELDS
        self.values = values                           # float64 (exact for every code)
        nan = np.isnan(values)
        self.nan = np.flatnonzero(nan)
        self.posinf = np.flatnonzero(values == math.inf)
        self.neginf = np.flatnonzero(values == -math.inf)
        self.zero = np.flatnonzero(values == 0)
        self.finite = np.flatnonzero(np.isfinite(values))
        self.finite_values = values[self.finite]
        if self.is_float:
            exp_mask, man_mask = _FIELDS[dtype]
            self.subnormal = np.flatnonzero(((codes & exp_mask) == 0) & ((codes & man_mask) != 0))
            sign = n >> 1
            key = np.where(codes.astype(np.int64) & sign, (n - 1) - codes.astype(np.int64),
                           codes.astype(np.int64) | sign)        # sortable: flip negatives
            order = np.argsort(key, kind="stable")
        else:
            self.subnormal = np.zeros(0, dtype=np.int64)
            order = np.argsort(values, kind="stable")
        self.order = order[~nan[order]]

    def value(self, code: int):
        v = self.values[code]
        return float(v) if self.is_float else int(v)


@functools.lru_cache(maxsize=None)
def _codes(dtype: str) -> _Codes:
    return _Codes(dtype)


def _bf16_bins(f32: np.ndarray) -> np.ndarray:
    """bfloat16 bit pattern (top 16 bits) of non-NaN float32 values: truncation toward zero."""
    return (f32.view(np.uint32) >> np.uint32(16)).astype(np.uint16)


# ------------------------------------------------------------------------------------------------
# scaled moments: the float64 contract of stats.hpp (Moments, ldexp_finite) in Python


def ldexp_finite(x: float, e: int) -> float:
    """x·2^e for a statistic of finite values (stats.hpp ldexp_finite): a result whose true value is
    at most DBL_MAX but that rounding pushed past it saturates to ±DBL_MAX; one more than 2^-30
    relative beyond it is ±Inf. Never raises."""
    try:
        return math.ldexp(x, e)
    except OverflowError:
        try:
            math.ldexp(x * (1.0 - 2.0 ** -30), e)
            return math.copysign(sys.float_info.max, x)
        except OverflowError:
            return math.copysign(math.inf, x)


class ScaledMoments:
    """Count, mean, M2 = sum (x - mean)^2 and ssq = sum x^2 of finite values, kept scaled by 2^-exp
    (mean) and 2^-2exp (M2, ssq) so that float64 data near 1e308 or 1e-308 neither overflows nor
    underflows; parts merge with Chan's formula after bringing both to the larger exponent (as
    stats.hpp merge_moments does). Used per chunk of a tensor and for the model-level aggregate."""
    __slots__ = ("n", "mean", "m2", "ssq", "exp")

    def __init__(self):
        self.n = 0
        self.mean = self.m2 = self.ssq = 0.0
        self.exp = 0

    def merge(self, n_b: int, mean_b: float, m2_b: float, ssq_b: float, e_b: int) -> None:
        """Fold in a part's (n, mean, M2, ssq), scaled by 2^e_b."""
        if n_b == 0:
            return
        n_a = self.n
        if n_a == 0:
            self.n, self.mean, self.m2, self.ssq, self.exp = n_b, mean_b, m2_b, ssq_b, e_b
            return
        e = max(self.exp, e_b)
        mean_a = math.ldexp(self.mean, self.exp - e)
        m2_a = math.ldexp(self.m2, 2 * (self.exp - e))
        ssq_a = math.ldexp(self.ssq, 2 * (self.exp - e))
        mean_b = math.ldexp(mean_b, e_b - e)
        m2_b = math.ldexp(m2_b, 2 * (e_b - e))
        ssq_b = math.ldexp(ssq_b, 2 * (e_b - e))
        n = n_a + n_b
        delta = mean_b - mean_a
        self.mean = mean_a + delta * (n_b / n)
        self.m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
        self.ssq = ssq_a + ssq_b
        self.n, self.exp = n, e

    def merge_stats(self, n: int, mean: float, std: float, l2: float) -> None:
        """Fold in a finished part: n finite values with this mean, std (population) and l2 (a
        tensor's statistics), rescaled first so that std²·n and l2² cannot overflow."""
        if n == 0:
            return
        big = max((abs(v) for v in (mean, std, l2) if math.isfinite(v)), default=0.0)
        e = math.frexp(big)[1] if big > 0 else 0
        s_std, s_l2 = math.ldexp(std, -e), math.ldexp(l2, -e)
        self.merge(n, math.ldexp(mean, -e), s_std * s_std * n, s_l2 * s_l2, e)

    def result(self) -> tuple[float | None, float | None, float]:
        """(mean, std, l2), saturated like stats.hpp finish_moments; (None, None, 0.0) when empty."""
        if not self.n:
            return None, None, 0.0
        return (ldexp_finite(self.mean, self.exp),
                ldexp_finite(math.sqrt(max(self.m2, 0.0) / self.n), self.exp),
                ldexp_finite(math.sqrt(max(self.ssq, 0.0)), self.exp))


@functools.lru_cache(maxsize=None)
def ggml_dequantizer(name: str):
    """blocks (uint8, shape (n, block_bytes)) -> float32 values, by gguf-py's gguf.quants.dequantize for
    the GGML type `name`; None when the gguf package is missing or cannot dequantize that type (its
    tensors then get no statistics)."""
    try:
        import gguf.quants as gq
        from gguf import GGMLQuantizationType
    except ImportError:
        return None
    qtype = GGMLQuantizationType.__members__.get(name)
    if qtype is None or qtype not in gq._type_traits:
        return None
    return lambda blocks: gq.dequantize(blocks, qtype)


def dequantize_blocks(raw, dtype: str) -> np.ndarray:
    """The float32 values of whole GGML blocks of type `dtype` (bytes or a uint8 array), by gguf.quants."""
    d = DTYPES[dtype]
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, d.block_bytes)
    return np.asarray(ggml_dequantizer(dtype)(blocks), dtype=np.float32).reshape(-1)


def block_values(src, t: TensorInfo, start: int, count: int) -> np.ndarray:
    """Elements [start, start+count) of the GGML block tensor t (whole blocks), read through `src` and
    dequantized by gguf.quants to float32 (the numpy backend's statistics and quantization stream)."""
    d = DTYPES[t.dtype]
    if start % d.block or count % d.block:
        raise ValueError(f"tensor {t.name!r}: {t.dtype} values are read in whole blocks of {d.block}")
    return dequantize_blocks(src.read_at(t.offset + start // d.block * d.block_bytes,
                                         count // d.block * d.block_bytes), t.dtype)


# ------------------------------------------------------------------------------------------------
# the one chunk routine: an accumulator fed with consecutive chunks of one tensor


class _Accumulator:
    __slots__ = ("dtype", "small", "moments", "nan", "posinf", "neginf",
                 "zeros", "subnormal", "min", "max", "hist")

    def __init__(self, dtype: str, quantiles: bool):
        self.dtype = dtype
        self.small = _RAW[dtype] in ("u1", "<u2")      # 8/16-bit: histogram of every code
        self.moments = ScaledMoments()                 # of the finite values
        self.nan = self.posinf = self.neginf = self.zeros = self.subnormal = 0
        self.min = self.max = None
        # quantile histogram indexed by code (8/16-bit) or by bfloat16 pattern (wider dtypes)
        nbins = 256 if _RAW[dtype] == "u1" else 1 << 16
        self.hist = np.zeros(nbins, dtype=np.int64) if quantiles else None

    def update(self, raw: np.ndarray) -> None:
        """Fold one chunk (1-D array of unsigned element bits, dtype _RAW[dtype]) into the state."""
        if raw.size:
            with np.errstate(invalid="ignore", over="ignore"):   # sNaN compares, F64->F32 cast
                if self.small:
                    self._update_codes(raw)
                else:
                    self._update_elements(raw)

    def _update_codes(self, raw: np.ndarray) -> None:
        """8/16-bit dtypes: everything follows from the chunk's histogram of codes."""
        c = _codes(self.dtype)
        h = np.bincount(raw, minlength=c.values.size)
        self.nan += int(h[c.nan].sum())
        self.posinf += int(h[c.posinf].sum())
        self.neginf += int(h[c.neginf].sum())
        self.zeros += int(h[c.zero].sum())
        self.subnormal += int(h[c.subnormal].sum())
        present = np.flatnonzero(h[c.order])
        if present.size:
            self._minmax(c.value(c.order[present[0]]), c.value(c.order[present[-1]]))
        w = h[c.finite]
        nz = np.flatnonzero(w)
        if nz.size:
            w, v = w[nz].astype(np.float64), c.finite_values[nz]
            n = int(h[c.finite].sum())
            mean = float((w * v).sum()) / n
            self.moments.merge(n, mean, float((w * np.square(v - mean)).sum()),
                               float((w * np.square(v)).sum()), 0)
        if self.hist is not None:
            self.hist += h

    def _update_elements(self, raw: np.ndarray) -> None:
        """32/64-bit dtypes, element by element."""
        dtype = self.dtype
        vals = raw.view(_VALUE_VIEW[dtype])
        n = raw.size
        if dtype in _FIELDS:                           # F32, F64
            exp_mask, man_mask = (raw.dtype.type(m) for m in _FIELDS[dtype])
            finite_mask = np.isfinite(vals)
            n_finite = int(np.count_nonzero(finite_mask))
            if n_finite == n:
                not_nan, finite = vals, vals.astype(np.float64)   # a fresh copy either way
            else:
                nan_mask = np.isnan(vals)
                n_nan = int(np.count_nonzero(nan_mask))
                n_pos = int(np.count_nonzero(vals == math.inf))
                self.nan += n_nan
                self.posinf += n_pos
                self.neginf += n - n_finite - n_nan - n_pos
                not_nan = vals[~nan_mask] if n_nan else vals
                finite = vals[finite_mask].astype(np.float64, copy=False)
            self.zeros += int(np.count_nonzero(vals == 0))
            self.subnormal += int(np.count_nonzero(((raw & exp_mask) == 0) & ((raw & man_mask) != 0)))
            if not_nan.size:
                lo, hi = float(not_nan.min()), float(not_nan.max())
                if lo == 0:      # numpy's min/max of ±0 is either; use the total order
                    neg_zero = raw.dtype.type(1 << (8 * raw.itemsize - 1))
                    lo = -0.0 if np.count_nonzero(raw == neg_zero) else 0.0
                if hi == 0:
                    hi = 0.0 if np.count_nonzero(raw == 0) else -0.0
                self._minmax(lo, hi)
            if self.hist is not None and not_nan.size:
                # F32: truncate; F64: round to float32 (nearest even, overflow to inf), truncate
                self.hist += np.bincount(_bf16_bins(not_nan.astype(np.float32, copy=False)),
                                         minlength=1 << 16)
        else:                                          # I32, U32, I64, U64: exact Python ints
            self.zeros += n - int(np.count_nonzero(vals))
            self._minmax(int(vals.min()), int(vals.max()))
            finite = vals.astype(np.float64)
            if self.hist is not None:                  # round to float32 (nearest even), truncate
                self.hist += np.bincount(_bf16_bins(vals.astype(np.float32)), minlength=1 << 16)
        self._moments(finite)

    def _minmax(self, lo, hi) -> None:
        """Merge a chunk's min and max; floats in total order, so -0.0 < +0.0."""
        if self.min is None:
            self.min, self.max = lo, hi
            return
        if lo < self.min or (lo == self.min and math.copysign(1, lo) < math.copysign(1, self.min)):
            self.min = lo
        if hi > self.max or (hi == self.max and math.copysign(1, hi) > math.copysign(1, self.max)):
            self.max = hi

    def _moments(self, f: np.ndarray) -> None:
        """Chunk-local two-pass mean, M2 and sum of squares of the finite values `f` (a float64
        scratch copy, overwritten); F64 chunks are first scaled by a power of two so that the
        largest |x| is in [0.5, 1) (exact, except that values 2^-1074 below it vanish)."""
        n = f.size
        if n == 0:
            return
        e = 0
        if self.dtype == "F64":
            absmax = max(-float(f.min()), float(f.max()))
            e = math.frexp(absmax)[1] if absmax > 0 else 0
            if e:
                np.ldexp(f, -e, out=f)
        mean = float(f.sum()) / n
        ssq = float(np.square(f).sum())
        f -= mean
        np.square(f, out=f)
        self.moments.merge(n, mean, float(f.sum()), ssq, e)

    def histogram(self) -> dict | None:
        """The compact histogram of paramkit.stats (None without quantiles), from the definition: the finite
        binned values in value order give lo and hi, then k = floor((v - lo) / (hi - lo) * B) in float64,
        clamped, for each code or bfloat16 pattern present, with all its elements."""
        if self.hist is None:
            return None
        c = _codes(self.dtype if self.small else "BF16")
        finite = c.order[np.isfinite(c.values[c.order])]        # finite codes, in value order
        w = self.hist[finite]
        present = finite[w > 0]
        counts = np.zeros(_stats.HISTOGRAM_BINS, dtype=np.int64)
        # the wide dtypes' histogram holds their non-NaN elements only
        nonfinite = int(self.hist.sum() - w.sum()) + (0 if self.small else self.nan)
        lo = hi = None
        if present.size:
            v = c.values[present]
            lo, hi = float(v[0]), float(v[-1])
            if hi > lo:
                k = np.clip(np.floor((v - lo) / (hi - lo) * _stats.HISTOGRAM_BINS), 0, _stats.HISTOGRAM_BINS - 1)
            else:
                k = np.zeros(v.size)
            np.add.at(counts, k.astype(np.int64), self.hist[present])
        return {"lo": lo, "hi": hi, "counts": counts, "nonfinite": nonfinite, "exact": self.small}

    def result(self) -> dict:
        mean, std, l2 = self.moments.result()
        absmax = None if self.min is None else max(abs(self.min), abs(self.max))
        quantiles = None
        if self.hist is not None:
            c = _codes(self.dtype if self.small else "BF16")
            cum = np.cumsum(self.hist[c.order])
            n_valid = int(cum[-1])
            quantiles = {}
            for key, q in zip(_stats.QUANTILE_KEYS, _stats.QUANTILE_LEVELS):
                if n_valid == 0:
                    quantiles[key] = None
                    continue
                k = min(max(math.ceil(q * n_valid), 1), n_valid)
                quantiles[key] = c.value(int(c.order[int(np.searchsorted(cum, k, side="left"))]))
        out = {"min": self.min, "max": self.max, "mean": mean, "std": std, "absmax": absmax,
               "l2": l2, "zeros": self.zeros, "nan": self.nan, "posinf": self.posinf,
               "neginf": self.neginf, "subnormal": self.subnormal, "quantiles": quantiles}
        assert tuple(out) == _stats.STATS_KEYS
        return out


def _result(acc: _Accumulator, histograms: bool) -> dict:
    """A tensor's stats dict (run_stats), with its "histogram" when asked for."""
    out = acc.result()
    if histograms:
        out["histogram"] = acc.histogram()
    return out


# ------------------------------------------------------------------------------------------------
# the engine


class NumpyEngine:
    """The paramkit.backends.Engine of the pure-NumPy reference (the oracle of every test)."""
    name = "numpy"
    reads_device_memory = False
    reads_views = False        # the oracle: views reach it as plain bytes, by materialize's independent path
    array_quant_backend = "numpy"

    def __init__(self) -> None:
        self.last_run: dict = {}

    def array_stats(self, array: np.ndarray, dtype: str, *, quantiles: bool = True) -> dict | None:
        """Statistics of an in-memory array whose raw bytes are elements of safetensors `dtype`
        (e.g. uint16 holding bf16 bits, or an ml_dtypes bfloat16 array); TypeError for dtypes
        without statistics (paramkit.dtypes.stats_dtype)."""
        stats_dtype(dtype)
        a = np.asarray(array)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        raw = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        size = np.dtype(_RAW[dtype]).itemsize
        if raw.size % size:
            raise ValueError(f"{raw.size} bytes is not a whole number of {dtype} elements")
        raw = raw.view(_RAW[dtype])
        acc = _Accumulator(dtype, quantiles)
        step = max(int(CHUNK_ELEMENTS), 1)
        for start in range(0, raw.size, step):
            acc.update(raw[start:start + step])
        return acc.result()

    def run(self, tensors: Sequence[TensorInfo], *, stats: bool = True, quantiles: bool = True,
            threads: int | None = None, progress=None, quant=None, histograms: bool = False):
        """Statistics (run_stats) and, with a QuantPlan, the quantization error sums per tensor
        (paramkit.quant.stream, a separate chunked read: this backend is the reference, not fast)."""
        self.last_run = {}
        out = self.run_stats(tensors, quantiles=quantiles, threads=threads, progress=progress,
                             histograms=histograms) if stats else [None] * len(tensors)
        qout: list = [None] * len(tensors)
        if quant is not None:
            from ..quant.stream import run_quant
            qout = run_quant(tensors, quant)
        from .block_types import block_types
        kinds = block_types(tensors, self.name)
        if kinds:
            self.last_run["block_types"] = kinds
        return out, qout

    def run_stats(self, tensors: Sequence[TensorInfo], *, quantiles: bool = True,
                  threads: int | None = None, progress=None, histograms: bool = False) -> list[dict | None]:
        """Statistics of each tensor (None for dtypes without statistics), in the order given,
        read in chunks of CHUNK_ELEMENTS elements; each file is opened once and read in offset
        order. `threads` is accepted and ignored. progress(bytes done) after each chunk; tensors
        without statistics count as done when skipped, so the last call is the total nbytes.
        histograms: each stats dict also has "histogram", the compact histogram (None without quantiles)."""
        del threads
        results: list[dict | None] = [None] * len(tensors)
        by_file: dict[str, list[int]] = {}
        for i, t in enumerate(tensors):
            by_file.setdefault(t.file, []).append(i)
        done = 0
        for path, idxs in by_file.items():
            idxs.sort(key=lambda i: tensors[i].offset)
            with open_source(path) as src:
                for i in idxs:
                    t = tensors[i]
                    d = DTYPES[t.dtype]
                    if d.kind == "block":   # None without a dequantizer (gguf missing, or no gguf.quants one)
                        if ggml_dequantizer(t.dtype) is not None:
                            results[i] = _result(self._block_stats(src, t, d, quantiles), histograms)
                        done += t.nbytes
                        if progress is not None:
                            progress(done)
                        continue
                    if not d.has_stats:
                        if t.nbytes:
                            done += t.nbytes
                            if progress is not None:
                                progress(done)
                        continue
                    raw_dtype = np.dtype(_RAW[t.dtype])
                    if t.nbytes != t.numel * raw_dtype.itemsize:
                        raise ValueError(f"tensor {t.name!r}: {t.nbytes} bytes for {t.numel} "
                                         f"{t.dtype} elements")
                    acc = _Accumulator(t.dtype, quantiles)
                    step = max(int(CHUNK_ELEMENTS), 1) * raw_dtype.itemsize
                    buf = bytearray(min(step, t.nbytes))
                    pos = 0
                    while pos < t.nbytes:
                        want = min(step, t.nbytes - pos)
                        src.readinto_at(memoryview(buf)[:want], t.offset + pos)
                        acc.update(np.frombuffer(buf, dtype=raw_dtype,
                                                 count=want // raw_dtype.itemsize))
                        pos += want
                        done += want
                        if progress is not None:
                            progress(done)
                    results[i] = _result(acc, histograms)
        return results


    def run_diff(self, pairs, *, threads: int | None = None, progress=None) -> list[dict]:
        """The diff pass of paramkit.backends.numpy_diff (pairs shared among `threads` threads)."""
        from .numpy_diff import run_diff
        self.last_run = {"diff": self.name}
        return run_diff(pairs, progress=progress, threads=threads)

    @staticmethod
    def _block_stats(src, t: TensorInfo, d, quantiles: bool) -> _Accumulator:
        """The accumulated statistics of a GGML block-quantized tensor: whole blocks (about CHUNK_ELEMENTS elements
        per chunk) dequantized by gguf.quants.dequantize to float32, then reduced as an F32 tensor."""
        if t.nbytes != t.numel // d.block * d.block_bytes or t.numel % d.block:
            raise ValueError(f"tensor {t.name!r}: {t.nbytes} bytes for {t.numel} {t.dtype} elements")
        acc = _Accumulator("F32", quantiles)
        step = max(int(CHUNK_ELEMENTS) // d.block, 1) * d.block
        for start in range(0, t.numel, step):
            acc.update(block_values(src, t, start, min(step, t.numel - start)).view("<u4"))
        return acc

    def array_quant(self, x: np.ndarray, scheme, *, want_values: bool, tensor_absmax: float | None = None):
        """The reference quantizer (paramkit.quant.numpy_quant) on the float32 array `x`."""
        from ..quant import numpy_quant
        r = numpy_quant.quantize_dequantize(x, scheme, tensor_absmax=tensor_absmax)
        sums = numpy_quant.error_sums_of(x, r.values, clipped=r.clipped, scale_clamped=r.scale_clamped)
        return (r.values if want_values else None), sums

    def dlpack_stats(self, capsule, dtype: str, *, quantiles: bool = True) -> dict:
        raise device_memory_refused(self.name)

    def dlpack_quant(self, capsule, dtype: str, scheme, *, shape, want_values: bool):
        raise device_memory_refused(self.name)

    def build_info(self) -> dict:
        return {"numpy": np.__version__}


ENGINE = NumpyEngine()
