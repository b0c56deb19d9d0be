"""The pure-NumPy engine: the reference oracle every native backend (cpu, cuda) is tested against,
written from the definitions in paramkit.stats and always available (NumPy only at run time)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .. import stats as _stats
from ..dtypes import DTYPES, DType
from ..table import TensorInfo

# A chunk is this many elements of the tensor, counted from the tensor's first element: at most
# 16 MiB of file bytes (F64) and 16 MiB of float64 temporaries. Chunk boundaries depend on the
# tensor alone (never on threads), and chunk results are merged in chunk order.
CHUNK_ELEMENTS = 1 << 21

# ------------------------------------------------------------------------------------------------
# decoding tables, computed from the format definitions


def _f8_value(code: int, exp_bits: int, man_bits: int, bias: int, ieee_special: bool) -> float:
    sign = -1.0 if code >> 7 else 1.0
    e = (code >> man_bits) & ((1 << exp_bits) - 1)
    m = code & ((1 << man_bits) - 1)
    e_max = (1 << exp_bits) - 1
    if ieee_special and e == e_max:                    # E5M2: IEEE-like inf / NaN
        return sign * math.inf if m == 0 else math.nan
    if not ieee_special and e == e_max and m == (1 << man_bits) - 1:   # E4M3FN: S.1111.111 only
        return math.nan
    if e == 0:                                         # subnormal (or zero)
        return sign * math.ldexp(m, 1 - bias - man_bits)
    return sign * math.ldexp((1 << man_bits) + m, e - bias - man_bits)


def _f8_lut(exp_bits: int, man_bits: int, bias: int, ieee_special: bool) -> np.ndarray:
    lut = np.array([_f8_value(c, exp_bits, man_bits, bias, ieee_special) for c in range(256)],
                   dtype=np.float32)
    lut.setflags(write=False)
    return lut


F8_E4M3_LUT = _f8_lut(4, 3, 7, ieee_special=False)     # OCP E4M3FN: max 448, no inf
F8_E5M2_LUT = _f8_lut(5, 2, 15, ieee_special=True)


def _sortable_key(bits: np.ndarray, width: int) -> np.ndarray:
    """Order-preserving unsigned key of sign-magnitude float bit patterns (NaN already removed):
    negative values get all bits flipped, non-negative ones get the sign bit set."""
    sign = np.uint64(1 << (width - 1)).astype(bits.dtype)
    return np.where(bits & sign, ~bits, bits | sign)


def _key_values_bf16() -> np.ndarray:
    keys = np.arange(1 << 16, dtype=np.uint32)
    bits = np.where(keys & 0x8000, keys & 0x7FFF, ~keys & 0xFFFF).astype(np.uint32)
    with np.errstate(invalid="ignore"):        # signalling-NaN patterns
        return (bits << np.uint32(16)).view(np.float32).astype(np.float64)


def _key_values_f16() -> np.ndarray:
    keys = np.arange(1 << 16, dtype=np.uint32)
    bits = np.where(keys & 0x8000, keys & 0x7FFF, ~keys & 0xFFFF).astype(np.uint16)
    with np.errstate(invalid="ignore"):
        return bits.view(np.float16).astype(np.float64)


def _key_values_f8(lut: np.ndarray) -> np.ndarray:
    keys = np.arange(256, dtype=np.uint32)
    codes = np.where(keys & 0x80, keys & 0x7F, ~keys & 0xFF)
    with np.errstate(invalid="ignore"):
        return lut[codes].astype(np.float64)


# ------------------------------------------------------------------------------------------------
# per-dtype description: how to view raw bytes, decode, find subnormals and bin for quantiles


class _Spec:
    def __init__(self, name: str, raw: str, kind: str, *, exp_mask: int = 0, man_mask: int = 0,
                 nbins: int = 0, key_values=None, int_quantiles: bool = False):
        self.name = name
        self.raw = np.dtype(raw)          # little-endian view of the bytes
        self.kind = kind                  # "float" | "int" | "bool"
        self.exp_mask = exp_mask
        self.man_mask = man_mask
        self.nbins = nbins
        self._key_values = key_values     # callable -> value of every bin, float64 (lazy)
        self._table = None
        self.int_quantiles = int_quantiles

    @property
    def itemsize(self) -> int:
        return self.raw.itemsize

    def key_value(self, key: int):
        if self._table is None:
            self._table = self._key_values()
        v = self._table[key]
        return int(v) if self.int_quantiles else float(v)


def _ints(lo: int, n: int):
    return lambda: np.arange(lo, lo + n, dtype=np.float64)


_SPECS: dict[str, _Spec] = {s.name: s for s in [
    _Spec("F64", "<u8", "float", exp_mask=0x7FF0_0000_0000_0000, man_mask=(1 << 52) - 1,
          nbins=1 << 16, key_values=_key_values_bf16),
    _Spec("F32", "<u4", "float", exp_mask=0x7F80_0000, man_mask=(1 << 23) - 1,
          nbins=1 << 16, key_values=_key_values_bf16),
    _Spec("F16", "<u2", "float", exp_mask=0x7C00, man_mask=0x03FF,
          nbins=1 << 16, key_values=_key_values_f16),
    _Spec("BF16", "<u2", "float", exp_mask=0x7F80, man_mask=0x007F,
          nbins=1 << 16, key_values=_key_values_bf16),
    _Spec("F8_E4M3", "u1", "float", exp_mask=0x78, man_mask=0x07,
          nbins=256, key_values=lambda: _key_values_f8(F8_E4M3_LUT)),
    _Spec("F8_E5M2", "u1", "float", exp_mask=0x7C, man_mask=0x03,
          nbins=256, key_values=lambda: _key_values_f8(F8_E5M2_LUT)),
    _Spec("I8", "i1", "int", nbins=256, key_values=_ints(-128, 256), int_quantiles=True),
    _Spec("U8", "u1", "int", nbins=256, key_values=_ints(0, 256), int_quantiles=True),
    _Spec("I16", "<i2", "int", nbins=1 << 16, key_values=_ints(-32768, 1 << 16), int_quantiles=True),
    _Spec("U16", "<u2", "int", nbins=1 << 16, key_values=_ints(0, 1 << 16), int_quantiles=True),
    _Spec("I32", "<i4", "int", nbins=1 << 16, key_values=_key_values_bf16),
    _Spec("U32", "<u4", "int", nbins=1 << 16, key_values=_key_values_bf16),
    _Spec("I64", "<i8", "int", nbins=1 << 16, key_values=_key_values_bf16),
    _Spec("U64", "<u8", "int", nbins=1 << 16, key_values=_key_values_bf16),
    _Spec("BOOL", "u1", "bool", nbins=256, key_values=_ints(0, 256), int_quantiles=True),
]}


def _decode_float(spec: _Spec, bits: np.ndarray) -> np.ndarray:
    """Exact decoding of float bit patterns (F64 stays float64, everything else float32/16)."""
    n = spec.name
    if n == "F64":
        return bits.view("<f8")
    if n == "F32":
        return bits.view("<f4")
    if n == "F16":
        return bits.view("<f2")
    if n == "BF16":
        return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if n == "F8_E4M3":
        return F8_E4M3_LUT[bits]
    if n == "F8_E5M2":
        return F8_E5M2_LUT[bits]
    raise AssertionError(n)


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """The values of a chunk of raw elements of safetensors `dtype` (viewed as `raw` bytes):
    floats decoded exactly (to float16/32/64), integers as-is, BOOL as 0/1 uint8."""
    spec = _SPECS[dtype]
    raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8).view(spec.raw)
    if spec.kind == "float":
        return _decode_float(spec, raw)
    if spec.kind == "bool":
        return (raw != 0).view(np.uint8)
    return raw


def _bf16_prefix_key(f32: np.ndarray) -> np.ndarray:
    """Sortable 16-bit key of float32 values truncated to their top 16 bits (no NaN allowed)."""
    top = (f32.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    return _sortable_key(top, 16)


# ------------------------------------------------------------------------------------------------
# the one chunk routine: an accumulator fed with consecutive chunks of one tensor


class _Accumulator:
    __slots__ = ("spec", "n_fin", "mean", "m2", "exp", "nan", "posinf", "neginf", "zeros",
                 "subnormal", "min", "max", "hist")

    def __init__(self, spec: _Spec, quantiles: bool):
        self.spec = spec
        # finite moments, stored scaled by 2**-exp so that float64 never overflows/underflows
        self.n_fin = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.exp = 0
        self.nan = self.posinf = self.neginf = self.zeros = self.subnormal = 0
        self.min = None
        self.max = None
        self.hist = np.zeros(spec.nbins, dtype=np.int64) if quantiles else None

    def update(self, raw: np.ndarray) -> None:
        """Fold one chunk (1-D array of dtype spec.raw) into the state."""
        if raw.size:
            with np.errstate(invalid="ignore", over="ignore"):   # sNaN compares, F64->F32 cast
                self._update(raw)

    def _update(self, raw: np.ndarray) -> None:
        spec = self.spec
        n = raw.size
        if spec.kind == "float":
            vals = _decode_float(spec, raw)
            nan_mask = np.isnan(vals)
            n_nan = int(np.count_nonzero(nan_mask))
            self.nan += n_nan
            self.posinf += int(np.count_nonzero(vals == np.inf))
            self.neginf += int(np.count_nonzero(vals == -np.inf))
            self.zeros += int(np.count_nonzero(vals == 0))
            self.subnormal += int(np.count_nonzero(((raw & spec.raw.type(spec.exp_mask)) == 0)
                                                   & ((raw & spec.raw.type(spec.man_mask)) != 0)))
            not_nan = vals[~nan_mask] if n_nan else vals
            if not_nan.size:
                self._minmax(float(not_nan.min()), float(not_nan.max()))
            finite = vals[np.isfinite(vals)]
            self._moments(finite.astype(np.float64, copy=False))   # a fresh copy either way
            if self.hist is not None and not_nan.size:
                if spec.name in ("F16", "BF16"):
                    keys = _sortable_key(raw[~nan_mask] if n_nan else raw, 16)
                elif spec.itemsize == 1:
                    keys = _sortable_key(raw[~nan_mask] if n_nan else raw, 8)
                elif spec.name == "F32":
                    keys = _bf16_prefix_key(not_nan)
                else:  # F64: round to float32 (nearest even, overflow to inf), then truncate
                    keys = _bf16_prefix_key(not_nan.astype(np.float32))
                self.hist += np.bincount(keys, minlength=spec.nbins)
        else:
            vals = (raw != 0).view(np.uint8) if spec.kind == "bool" else raw
            self.zeros += n - int(np.count_nonzero(vals))
            self._minmax(int(vals.min()), int(vals.max()))
            self._moments(vals.astype(np.float64))
            if self.hist is not None:
                if spec.kind == "bool":
                    keys = vals
                elif spec.itemsize == 1:
                    keys = raw.view(np.uint8) ^ np.uint8(0x80) if spec.name == "I8" else raw
                elif spec.itemsize == 2:
                    keys = raw.view(np.uint16) ^ np.uint16(0x8000) if spec.name == "I16" else raw
                else:  # 32/64-bit integers: round to float32 (nearest even), then truncate
                    keys = _bf16_prefix_key(raw.astype(np.float32))
                self.hist += np.bincount(keys, minlength=spec.nbins)

    def _minmax(self, lo, hi) -> None:
        if self.min is None:
            self.min, self.max = lo, hi
        else:
            self.min = min(self.min, lo)
            self.max = max(self.max, hi)

    def _moments(self, f: np.ndarray) -> None:
        """Chunk-local two-pass mean/M2 of the finite values `f` (a float64 scratch copy that is
        overwritten), scaled by a power of two, then a Chan merge into the running state."""
        n_b = f.size
        if n_b == 0:
            return
        e_b = 0
        if self.spec.name == "F64":
            # only F64 can overflow (x^2 > DBL_MAX) or underflow (subnormal x^2) in float64;
            # scaling by a power of two is exact otherwise, so other dtypes skip it
            absmax = max(-float(f.min()), float(f.max()))
            e_b = math.frexp(absmax)[1] if absmax > 0 else 0
            if e_b:
                np.ldexp(f, -e_b, out=f)      # |f| < 1; values 2^-1074 below absmax underflow
        mean_b = float(f.sum()) / n_b
        f -= mean_b
        np.square(f, out=f)
        m2_b = float(f.sum())
        n_a = self.n_fin
        if n_a == 0:
            self.n_fin, self.mean, self.m2, self.exp = n_b, mean_b, m2_b, e_b
            return
        e = max(self.exp, e_b)
        mean_a = math.ldexp(self.mean, self.exp - e)
        m2_a = math.ldexp(self.m2, 2 * (self.exp - e))
        mean_b = math.ldexp(mean_b, e_b - e)
        m2_b = math.ldexp(m2_b, 2 * (e_b - e))
        n = n_a + n_b
        delta = mean_b - mean_a
        self.mean = mean_a + delta * (n_b / n)
        self.m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
        self.n_fin, self.exp = n, e

    def result(self) -> dict:
        spec = self.spec
        if self.n_fin:
            mean = math.ldexp(self.mean, self.exp)
            std = math.ldexp(math.sqrt(max(self.m2, 0.0) / self.n_fin), self.exp)
            ss = max(self.m2, 0.0) + self.n_fin * self.mean * self.mean
            try:
                l2 = math.ldexp(math.sqrt(ss), self.exp)
            except OverflowError:
                l2 = math.inf                  # sqrt(sum x^2) > DBL_MAX
        else:
            mean = std = None
            l2 = 0.0
        absmax = None if self.min is None else max(abs(self.min), abs(self.max))
        quantiles = None
        if self.hist is not None:
            cum = np.cumsum(self.hist)
            n_valid = int(cum[-1])
            quantiles = {}
            for key, q in zip(_stats.QUANTILE_KEYS, _stats.QUANTILE_LEVELS):
                if n_valid == 0:
                    quantiles[key] = None
                    continue
                k = min(max(math.ceil(q * n_valid), 1), n_valid)
                b = int(np.searchsorted(cum, k, side="left"))
                quantiles[key] = spec.key_value(b)
        out = {
            "min": self.min, "max": self.max, "mean": mean, "std": std, "absmax": absmax,
            "l2": l2, "zeros": self.zeros, "nan": self.nan, "posinf": self.posinf,
            "neginf": self.neginf, "subnormal": self.subnormal, "quantiles": quantiles,
        }
        assert tuple(out) == _stats.STATS_KEYS
        return out


def _spec(dtype: str) -> _Spec | None:
    d: DType | None = DTYPES.get(dtype)
    if d is None:
        raise ValueError(f"unknown dtype {dtype!r}")
    return _SPECS[dtype] if d.has_stats else None


# ------------------------------------------------------------------------------------------------
# the engine


class NumpyEngine:
    name = "numpy"

    def array_stats(self, array: np.ndarray, dtype: str, *, quantiles: bool = True) -> dict | None:
        """Statistics of an in-memory array whose raw bytes are elements of safetensors `dtype`
        (e.g. uint16 holding bf16 bits, or an ml_dtypes bfloat16 array); None for dtypes
        without statistics."""
        spec = _spec(dtype)
        if spec is None:
            return None
        a = np.asarray(array)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        a = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
        if a.size % spec.itemsize:
            raise ValueError(f"{a.size} bytes is not a whole number of {dtype} elements")
        raw = a.view(spec.raw)
        acc = _Accumulator(spec, quantiles)
        step = max(int(CHUNK_ELEMENTS), 1)
        for start in range(0, raw.size, step):
            acc.update(raw[start:start + step])
        return acc.result()

    def run_stats(self, tensors: Sequence[TensorInfo], *, quantiles: bool = True,
                  threads: int | None = None, progress=None) -> list[dict | None]:
        """Statistics of each tensor, read from its file in chunks of CHUNK_ELEMENTS elements;
        `threads` is accepted and ignored. Each file is opened once and read in offset order."""
        del threads
        results: list[dict | None] = [None] * len(tensors)
        by_file: dict[str, list[int]] = {}
        for i, t in enumerate(tensors):
            by_file.setdefault(t.file, []).append(i)
        done = 0
        for path, idxs in by_file.items():
            idxs.sort(key=lambda i: tensors[i].offset)
            with open(path, "rb", buffering=0) as fh:
                for i in idxs:
                    t = tensors[i]
                    spec = _spec(t.dtype)
                    if spec is None:
                        if t.nbytes:
                            done += t.nbytes
                            if progress is not None:
                                progress(done)
                        continue
                    if t.nbytes != t.numel * spec.itemsize:
                        raise ValueError(f"tensor {t.name!r}: {t.nbytes} bytes for {t.numel} "
                                         f"{t.dtype} elements")
                    acc = _Accumulator(spec, quantiles)
                    step = max(int(CHUNK_ELEMENTS), 1) * spec.itemsize
                    buf = bytearray(min(step, t.nbytes))
                    view = memoryview(buf)
                    fh.seek(t.offset)
                    pos = 0
                    while pos < t.nbytes:
                        want = min(step, t.nbytes - pos)
                        got = 0
                        while got < want:
                            r = fh.readinto(view[got:want])
                            if not r:
                                raise OSError(f"{path}: unexpected end of file reading tensor "
                                              f"{t.name!r} at byte {t.offset + pos + got}")
                            got += r
                        acc.update(np.frombuffer(buf, dtype=spec.raw, count=want // spec.itemsize))
                        pos += want
                        done += want
                        if progress is not None:
                            progress(done)
                    results[i] = acc.result()
        return results


ENGINE = NumpyEngine()
