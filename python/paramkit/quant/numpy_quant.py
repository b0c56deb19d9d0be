"""The NumPy reference ("oracle") of every quantization scheme and of the error sums: the native
cpu/cuda engines must reproduce `quantize_dequantize` bit for bit and the sums to rounding.

Arithmetic rules (quant-schemes.md): the input is converted to float32 first; every arithmetic
step is one float32 operation (no fused multiply-add); round half to even unless the scheme says
otherwise; quantize with the fp32 scale and dequantize with the scale as stored. Non-finite
elements are left out of absmax / min / max; NaN stays NaN; ±Inf take the extreme code (for a
zero scale: 0). Integer codes never carry a negative zero, so q·scale is +0 for scale > 0 (Q4_0
alone keeps ggml's (q-8)·d with a negative d, as gguf-py does).

Error sums (`error_sums`): over the finite elements w of the float32 input, with q the fake-
quantized value, all in float64: n, nonfinite (count of non-finite w), sse = Σ(w-q)², sum_w2 =
Σw², sum_q2 = Σq², sum_wq = Σw·q, max_abs_err = max|w-q| (0.0 when n = 0), clipped (finite
elements whose code, rounded without the range limit, lay outside the code range), scale_clamped
(fp16 scales clamped into [2^-24, 65504]). Sums of chunks merge with `merge_error`;
`finalize_error` derives the rest (see its docstring for the 0/0 conventions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .schemes import Scheme, get_scheme

F32 = np.float32
FP16_MAX = F32(65504.0)
FP16_MIN_SUBNORMAL = F32(2.0 ** -24)
FP8_E4M3_MAX = F32(448.0)

NF4_CODES = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)
# threshold i separates code i and code i+1: exact midpoint in float64, rounded to float32
NF4_THRESHOLDS = ((NF4_CODES[:-1].astype(np.float64) + NF4_CODES[1:].astype(np.float64)) / 2.0
                  ).astype(np.float32)

ERROR_SUM_KEYS: tuple[str, ...] = ("n", "nonfinite", "sse", "sum_w2", "sum_q2", "sum_wq",
                                   "max_abs_err", "clipped", "scale_clamped")
ERROR_DERIVED_KEYS: tuple[str, ...] = ("mse", "rmse", "rel_err", "sqnr_db", "cosine",
                                       "quantized_nbytes", "bits_per_weight")
ERROR_KEYS: tuple[str, ...] = ERROR_SUM_KEYS + ERROR_DERIVED_KEYS


@dataclass
class QuantResult:
    values: np.ndarray   # float32, the input's shape: dequantize(quantize(x))
    clipped: int         # finite elements whose code was limited by the code range
    scale_clamped: int   # fp16 scales clamped into [2^-24, 65504]


# ---- input ------------------------------------------------------------------------------------
def is_float_dtype(dt: np.dtype) -> bool:
    """numpy floating dtypes and the ml_dtypes float types (bfloat16, float8_*, float6_*, float4_*)."""
    dt = np.dtype(dt)
    if dt.kind == "f":
        return True
    return (dt.kind == "V" and getattr(dt.type, "__module__", "").startswith("ml_dtypes")
            and "float" in dt.name)


def to_float32(array) -> np.ndarray:
    """The input as a float32 ndarray (round to nearest even; float64 beyond the float32 range
    becomes ±Inf). Non-float inputs raise TypeError."""
    a = np.asarray(array)
    if not is_float_dtype(a.dtype):
        raise TypeError(f"quantization needs a floating-point array, got dtype {a.dtype}")
    with np.errstate(over="ignore"):
        return a.astype(np.float32)


# ---- small exact helpers ----------------------------------------------------------------------
def _finite_or_zero(x: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), x, F32(0))


def _fp16_stored(scale: np.ndarray) -> tuple[np.ndarray, int]:
    """fp16(scale) (round to nearest even) back in float32, with |scale| clamped to
    [2^-24, 65504] where the conversion would give 0 or Inf for a non-zero scale."""
    s16 = scale.astype(np.float16).astype(np.float32)
    under = (s16 == 0) & (scale != 0)
    over = np.isinf(s16)
    s16 = np.where(under, np.copysign(FP16_MIN_SUBNORMAL, scale), s16)
    s16 = np.where(over, np.copysign(FP16_MAX, scale), s16)
    return s16.astype(np.float32), int(np.count_nonzero(under | over))


def _roundf(t: np.ndarray) -> np.ndarray:
    """C roundf: round half away from zero, exactly (no `floor(|t| + 0.5)` double rounding)."""
    a = np.abs(t)
    f = np.floor(a)
    r = f + (a - f >= F32(0.5)).astype(np.float32)
    return np.copysign(r, t).astype(np.float32)


def _round_e4m3(y: np.ndarray) -> np.ndarray:
    """Round float32 y, |y| <= 448, to the nearest OCP E4M3FN value (ties to even), exactly."""
    a = np.abs(y)
    _, e = np.frexp(a)                       # a = m·2^e, m in [0.5, 1)
    quantum_exp = np.maximum(e - 1, -6) - 3  # 3 mantissa bits; subnormal quantum 2^-9
    r = np.ldexp(np.rint(np.ldexp(a, -quantum_exp)), quantum_exp).astype(np.float32)
    return np.copysign(r, y)


def _count(mask: np.ndarray) -> int:
    return int(np.count_nonzero(mask))


# ---- grouping ---------------------------------------------------------------------------------
def _rows(x: np.ndarray, s: Scheme) -> np.ndarray:
    """The scheme's 2-D [rows, row_len] view of x (Scheme.rows_view)."""
    return x.reshape(s.rows_view(x.shape))


def _pad_groups(rows: np.ndarray, g: int) -> np.ndarray:
    """[rows, row_len] -> [rows, n_groups, g'], g' = min(g, row_len) (a group longer than the row
    is the row), the short last group padded with NaN (NaN is ignored by the scale statistics
    and the padded outputs are dropped by `_unpad`)."""
    r, n = rows.shape
    g = max(1, min(g, n))
    ng = -(-n // g)
    if ng * g != n:
        padded = np.full((r, ng * g), np.nan, dtype=np.float32)
        padded[:, :n] = rows
        rows = padded
    return rows.reshape(r, ng, g)


def _unpad(groups: np.ndarray, row_len: int) -> np.ndarray:
    r = groups.shape[0]
    return groups.reshape(r, -1)[:, :row_len]


# ---- the schemes: each takes float32 groups [..., g] and returns (values, clipped, clamped) ---
def _symmetric(x: np.ndarray, scale: np.ndarray, stored: np.ndarray, qmin: int, qmax: int,
               reciprocal: bool) -> tuple[np.ndarray, int]:
    """q = clamp(rint(x·(1/scale)) or rint(x/scale), qmin, qmax); value q·stored. A zero scale
    (or x = 0) gives code 0, NaN stays NaN."""
    if reciprocal:
        t = x * (F32(1) / scale)
    else:
        t = x / scale
    q = np.rint(t)
    nan = np.isnan(x)
    q = np.where(((scale == 0) | (x == 0)) & ~nan, F32(0), q)
    clipped = _count(np.isfinite(x) & ((q < qmin) | (q > qmax)))
    q = np.clip(q, F32(qmin), F32(qmax)) + F32(0)  # +0 turns -0 into +0
    return (q * stored).astype(np.float32), clipped


def _int8_tensor(x: np.ndarray, tensor_absmax: float | None) -> QuantResult:
    amax = F32(np.max(np.abs(_finite_or_zero(x)), initial=F32(0))) if tensor_absmax is None \
        else F32(tensor_absmax)
    scale = np.asarray(amax / F32(127), dtype=np.float32)
    v, c = _symmetric(x, scale, scale, -127, 127, reciprocal=True)
    return QuantResult(v, c, 0)


def _int8_channel(x: np.ndarray, s: Scheme) -> QuantResult:
    """One scale per output channel: the rows of Scheme.rows_view (axis 0; a 1-D tensor is one)."""
    rows = _rows(x, s)
    amax = np.max(np.abs(_finite_or_zero(rows)), axis=1, keepdims=True, initial=F32(0))
    scale = (amax / F32(127)).astype(np.float32)
    v, c = _symmetric(rows, scale, scale, -127, 127, reciprocal=True)
    return QuantResult(v.reshape(x.shape), c, 0)


def _int_group(x: np.ndarray, s: Scheme) -> QuantResult:
    rows = _rows(x, s)
    grp = _pad_groups(rows, s.group_size)
    amax = np.max(np.abs(_finite_or_zero(grp)), axis=-1, keepdims=True)
    scale = (amax / F32(s.qmax)).astype(np.float32)
    stored, clamped = _fp16_stored(scale)
    v, c = _symmetric(grp, scale, stored, s.qmin, s.qmax, reciprocal=False)
    return QuantResult(_unpad(v, rows.shape[1]).reshape(x.shape), c, clamped)


def _int_group_asym(x: np.ndarray, s: Scheme) -> QuantResult:
    rows = _rows(x, s)
    grp = _pad_groups(rows, s.group_size)
    fz = _finite_or_zero(grp)
    xmin = np.minimum(np.min(fz, axis=-1, keepdims=True), F32(0))
    xmax = np.maximum(np.max(fz, axis=-1, keepdims=True), F32(0))
    allzero = (xmin == 0) & (xmax == 0)
    xmin = np.where(allzero, F32(-1), xmin)
    xmax = np.where(allzero, F32(1), xmax)
    scale = ((xmax - xmin) / F32(15)).astype(np.float32)
    zscale = scale == 0                      # only when xmax - xmin underflows below 15·2^-149
    safe = np.where(zscale, F32(1), scale)
    zero = np.where(zscale, F32(0), np.rint(-xmin / safe)).astype(np.float32)
    q = np.rint(grp / safe) + zero
    nan = np.isnan(grp)
    clipped = _count(np.isfinite(grp) & ((q < 0) | (q > 15)))
    q = np.clip(q, F32(0), F32(15))
    stored, clamped = _fp16_stored(scale)
    v = (stored * (q - zero)).astype(np.float32)
    v = np.where(zscale & ~nan, F32(0), v)
    return QuantResult(_unpad(v, rows.shape[1]).reshape(x.shape), clipped, clamped)


def _q8_0(x: np.ndarray, s: Scheme) -> QuantResult:
    rows = _rows(x, s)
    grp = _pad_groups(rows, 32)
    amax = np.max(np.abs(_finite_or_zero(grp)), axis=-1, keepdims=True)
    d = (amax / F32(127)).astype(np.float32)
    inv = np.where(d == 0, F32(0), F32(1) / np.where(d == 0, F32(1), d)).astype(np.float32)
    q = _roundf(grp * inv)
    q = np.where(((d == 0) | (grp == 0)) & ~np.isnan(grp), F32(0), q)  # 0·Inf when 1/d overflows
    clipped = _count(np.isfinite(grp) & (np.abs(q) > 127))
    q = np.clip(q, F32(-127), F32(127)) + F32(0)
    stored, clamped = _fp16_stored(d)
    v = (q * stored).astype(np.float32)
    return QuantResult(_unpad(v, rows.shape[1]).reshape(x.shape), clipped, clamped)


def _q4_0(x: np.ndarray, s: Scheme) -> QuantResult:
    rows = _rows(x, s)
    grp = _pad_groups(rows, 32)
    fz = _finite_or_zero(grp)
    imax = np.argmax(np.abs(fz), axis=-1)[..., None]       # first largest |x|
    m = np.take_along_axis(fz, imax, axis=-1)
    d = (m / F32(-8)).astype(np.float32)
    inv = np.where(d == 0, F32(0), F32(1) / np.where(d == 0, F32(1), d)).astype(np.float32)
    t = (grp * inv).astype(np.float32)
    t = (t + F32(8.5)).astype(np.float32)                    # separately rounded, no FMA
    t = np.where(((d == 0) | (grp == 0)) & ~np.isnan(grp), F32(8.5), t)    # 0·Inf when 1/d overflows
    q = np.trunc(t)
    clipped = _count(np.isfinite(grp) & ((q > 15) | (q < 0)))
    q = np.clip(q, F32(0), F32(15))
    stored, clamped = _fp16_stored(d)
    v = ((q - F32(8)) * stored).astype(np.float32)
    return QuantResult(_unpad(v, rows.shape[1]).reshape(x.shape), clipped, clamped)


def _nf4(x: np.ndarray, s: Scheme) -> QuantResult:
    flat = _rows(x, s)                       # [1, numel]
    grp = _pad_groups(flat, s.group_size)
    absmax = np.max(np.abs(_finite_or_zero(grp)), axis=-1, keepdims=True)
    inv = (F32(1) / np.where(absmax == 0, F32(1), absmax)).astype(np.float32)
    y = (grp * inv).astype(np.float32)
    idx = np.searchsorted(NF4_THRESHOLDS, y, side="left")   # number of thresholds < y
    nan = np.isnan(grp)
    idx = np.where(((absmax == 0) | (grp == 0)) & ~nan, 7, idx)  # 7 = code 0.0 (also Inf·0)
    codes = NF4_CODES[np.minimum(idx, 15)]
    v = (codes * absmax).astype(np.float32)
    v = np.where(nan, np.float32(np.nan), v)
    return QuantResult(_unpad(v, flat.shape[1]).reshape(x.shape), 0, 0)


def _fp8_e4m3(x: np.ndarray, tensor_absmax: float | None) -> QuantResult:
    amax = F32(np.max(np.abs(_finite_or_zero(x)), initial=F32(0))) if tensor_absmax is None \
        else F32(tensor_absmax)
    scale = F32(amax / F32(448))
    if scale == 0:
        v = np.where(np.isnan(x), np.float32(np.nan), F32(0)).astype(np.float32)
        return QuantResult(v, 0, 0)
    y = (x / scale).astype(np.float32)
    # an unsaturated RNE cast keeps |y| <= 464 at 448 (the tie goes to the even 448)
    clipped = _count(np.isfinite(x) & (np.abs(y) > F32(464)))
    y = np.clip(y, -FP8_E4M3_MAX, FP8_E4M3_MAX)
    v = (_round_e4m3(y) * scale).astype(np.float32)
    return QuantResult(v, clipped, 0)


def quantize_dequantize(array, scheme: str | Scheme, *,
                        tensor_absmax: float | None = None) -> QuantResult:
    """dequantize(quantize(array)) under `scheme`, as float32 of the input's shape, with the
    clip and scale-clamp counts. ``tensor_absmax`` (finite elements' max |x| of the whole tensor)
    lets a streaming caller quantize a chunk of a per-tensor-scale scheme (int8_tensor,
    fp8_e4m3); other schemes ignore it. A chunk must start at a multiple of
    ``scheme.chunk_multiple(shape)`` elements of its tensor."""
    s = get_scheme(scheme)
    x = to_float32(array)
    s.check_shape(x.shape)
    if tensor_absmax is not None and not (math.isfinite(tensor_absmax) and tensor_absmax >= 0):
        raise ValueError(f"tensor_absmax must be finite and >= 0, got {tensor_absmax!r}")
    if x.size == 0:
        return QuantResult(np.zeros(x.shape, dtype=np.float32), 0, 0)
    with np.errstate(all="ignore"):
        f = s.family
        if f == "int8_tensor":
            return _int8_tensor(x, tensor_absmax)
        if f == "int8_channel":
            return _int8_channel(x, s)
        if f == "int_group":
            return _int_group(x, s)
        if f == "int_group_asym":
            return _int_group_asym(x, s)
        if f == "q8_0":
            return _q8_0(x, s)
        if f == "q4_0":
            return _q4_0(x, s)
        if f == "nf4":
            return _nf4(x, s)
        if f == "fp8_e4m3":
            return _fp8_e4m3(x, tensor_absmax)
    raise ValueError(f"scheme family {s.family!r} has no numpy implementation")


# ---- error sums -------------------------------------------------------------------------------
def empty_error_sums() -> dict:
    """The identity of `merge_error`."""
    return {"n": 0, "nonfinite": 0, "sse": 0.0, "sum_w2": 0.0, "sum_q2": 0.0, "sum_wq": 0.0,
            "max_abs_err": 0.0, "clipped": 0, "scale_clamped": 0}


def error_sums_of(w, q, *, clipped: int = 0, scale_clamped: int = 0) -> dict:
    """The mergeable sums for original values `w` (float32) and fake-quantized values `q`."""
    w = np.asarray(w, dtype=np.float32).ravel()
    q = np.asarray(q, dtype=np.float32).ravel()
    finite = np.isfinite(w)
    n = int(np.count_nonzero(finite))
    w64 = w[finite].astype(np.float64)
    q64 = q[finite].astype(np.float64)
    with np.errstate(all="ignore"):
        e = w64 - q64
        return {"n": n, "nonfinite": int(w.size - n),
                "sse": float(np.sum(e * e)), "sum_w2": float(np.sum(w64 * w64)),
                "sum_q2": float(np.sum(q64 * q64)), "sum_wq": float(np.sum(w64 * q64)),
                "max_abs_err": float(np.max(np.abs(e), initial=0.0)),
                "clipped": int(clipped), "scale_clamped": int(scale_clamped)}


def error_sums(array, scheme: str | Scheme, *, tensor_absmax: float | None = None) -> dict:
    """Quantize `array` (a whole tensor or an aligned chunk of one) and return its error sums."""
    x = to_float32(array)
    r = quantize_dequantize(x, scheme, tensor_absmax=tensor_absmax)
    return error_sums_of(x, r.values, clipped=r.clipped, scale_clamped=r.scale_clamped)


def merge_error(a: Mapping, b: Mapping) -> dict:
    """Sums of two disjoint parts (chunks of one tensor, or tensors of a model): counts and
    float64 sums add, max_abs_err takes the max, a NaN on either side winning (the rule of
    quant.hpp merge_quant_sums, the native engines' one merge). Derived keys in the inputs are
    ignored, so finalized records merge too. Commutative and associative up to float64 rounding."""
    out = {}
    for k in ERROR_SUM_KEYS:
        if k == "max_abs_err":
            x, y = float(a[k]), float(b[k])
            out[k] = y if (y > x or math.isnan(y)) else x
        elif k in ("n", "nonfinite", "clipped", "scale_clamped"):
            out[k] = int(a[k]) + int(b[k])
        else:
            out[k] = float(a[k]) + float(b[k])
    return out


def finalize_error(sums: Mapping, scheme: str | Scheme | None = None,
                   shape: Sequence[int] | None = None) -> dict:
    """The full error record: the sums plus

    * ``mse`` = sse/n, ``rmse`` = sqrt(mse);
    * ``rel_err`` = sqrt(sse/sum_w2);
    * ``sqnr_db`` = 10·log10(sum_w2/sse); ``inf`` when sse = 0 (exact, including an all-zero
      tensor), ``-inf`` when sum_w2 = 0 < sse;
    * ``cosine`` = sum_wq / (sqrt(sum_w2)·sqrt(sum_q2)), clamped to [-1, 1]; 1.0 when both
      norms are 0, None when exactly one is;
    * all of these are None when n = 0 (empty or all non-finite);
    * ``quantized_nbytes`` = scheme.quantized_nbytes(shape) and ``bits_per_weight`` =
      8·quantized_nbytes/numel (scheme.bits_per_weight() for an empty tensor); None unless
      `scheme` and `shape` are given. For a model, merge the sums and add the byte counts.
    """
    out = {k: sums[k] for k in ERROR_SUM_KEYS}
    n, sse, w2, q2, wq = out["n"], out["sse"], out["sum_w2"], out["sum_q2"], out["sum_wq"]
    if n == 0:
        out.update(mse=None, rmse=None, rel_err=None, sqnr_db=None, cosine=None)
    else:
        mse = sse / n
        out["mse"] = mse
        out["rmse"] = math.sqrt(mse)
        if sse == 0:
            out["rel_err"], out["sqnr_db"] = 0.0, math.inf
        elif w2 == 0:
            out["rel_err"], out["sqnr_db"] = math.inf, -math.inf
        else:
            out["rel_err"] = math.sqrt(sse / w2)
            ratio = w2 / sse
            out["sqnr_db"] = 10.0 * math.log10(ratio) if ratio > 0 else -math.inf
        if w2 == 0 and q2 == 0:
            out["cosine"] = 1.0
        elif w2 == 0 or q2 == 0:
            out["cosine"] = None
        else:
            out["cosine"] = max(-1.0, min(1.0, wq / (math.sqrt(w2) * math.sqrt(q2))))
    if scheme is not None and shape is not None:
        s = get_scheme(scheme)
        nbytes = s.quantized_nbytes(shape)
        numel = math.prod(int(d) for d in shape)
        out["quantized_nbytes"] = nbytes
        out["bits_per_weight"] = 8.0 * nbytes / numel if numel else s.bits_per_weight()
    else:
        out["quantized_nbytes"] = None
        out["bits_per_weight"] = None
    return out
