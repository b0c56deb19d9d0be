"""A deliberately naive, independent reference of the statistics defined in paramkit.stats (decode
everything with ml_dtypes/numpy, sort, long-double sums), plus helpers to compare stats dicts."""
from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np

from paramkit import stats as S

FLOAT_VIEW = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
              "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
              "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2)}
INT_VIEW = {"I8": np.dtype("i1"), "U8": np.dtype("u1"), "I16": np.dtype("<i2"),
            "U16": np.dtype("<u2"), "I32": np.dtype("<i4"), "U32": np.dtype("<u4"),
            "I64": np.dtype("<i8"), "U64": np.dtype("<u8"), "BOOL": np.dtype("u1")}
ITEMSIZE = {**{k: v.itemsize for k, v in FLOAT_VIEW.items()},
            **{k: v.itemsize for k, v in INT_VIEW.items()}}
STATS_DTYPES = tuple(ITEMSIZE)
SMALL_INT = {"I8", "U8", "I16", "U16", "BOOL"}       # quantiles are the exact ints

assert np.finfo(np.longdouble).nmant >= 63, "the reference needs x87 long double (64-bit mantissa)"


def raw_view(data: np.ndarray, dtype: str) -> np.ndarray:
    """The raw bytes of `data` seen as 1-D elements of safetensors `dtype` (ml_dtypes for floats)."""
    b = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return b.view(FLOAT_VIEW.get(dtype) or INT_VIEW[dtype])


def int_to_f32_rne(x: np.ndarray) -> np.ndarray:
    """Integers (int64/uint64 arrays) to float32, round to nearest even, in pure integer arithmetic
    (independent of numpy's casts): keep 24 significant bits, ties to even."""
    x = np.asarray(x)
    neg = x < 0
    with np.errstate(over="ignore"):                    # |x| as uint64, I64 min included
        m = np.where(neg, (~x).astype(np.uint64) + np.uint64(1), x.astype(np.uint64))
    bitlen = np.zeros(m.shape, dtype=np.int64)
    t = m.copy()
    for s in (32, 16, 8, 4, 2, 1):
        big = t >= np.uint64(1 << s)
        t = np.where(big, t >> np.uint64(s), t)
        bitlen += np.where(big, s, 0)
    bitlen += (t > 0)
    sh = np.maximum(bitlen - 24, 0).astype(np.uint64)
    q = m >> sh
    rem = m - (q << sh)
    half = np.where(sh > 0, np.uint64(1) << (sh - np.uint64(1)), np.uint64(0))
    up = (sh > 0) & ((rem > half) | ((rem == half) & ((q & np.uint64(1)) == 1)))
    q = q + up.astype(np.uint64)
    v = np.ldexp(q.astype(np.float64), sh.astype(np.int64))
    v = np.where(neg, -v, v)
    return v.astype(np.float32)          # exact: at most 24 significant bits, |v| <= 2^64


def truncate_to_bf16(x32: np.ndarray) -> np.ndarray:
    """float32 values truncated toward zero to bfloat16 precision, computed from the value
    (8 significant bits for normals, quantum 2^-133 for subnormals): float64 result."""
    x = x32.astype(np.float64)
    out = x.copy()
    fin = np.isfinite(x) & (x != 0)
    _, e = np.frexp(x[fin])                              # |x| = m 2^e, m in [0.5, 1)
    quantum = np.ldexp(1.0, np.maximum(e - 1, -126) - 7)
    out[fin] = np.trunc(x[fin] / quantum) * quantum
    return out


def binned(values, dtype: str) -> np.ndarray:
    """The binned value of each (non-NaN) element per the contract, as float64 or int64."""
    if dtype in SMALL_INT or dtype in ("F16", "BF16", "F8_E4M3", "F8_E5M2"):
        return values
    if dtype == "F32":
        return truncate_to_bf16(values.astype(np.float32))
    if dtype == "F64":
        with np.errstate(over="ignore"):
            return truncate_to_bf16(values.astype(np.float32))
    return truncate_to_bf16(int_to_f32_rne(values))      # 32/64-bit integers


def reference_stats(data: np.ndarray, dtype: str, quantiles: bool = True) -> dict:
    """Statistics of `data` (its raw bytes are elements of `dtype`), computed naively."""
    raw = raw_view(data, dtype)
    if dtype in FLOAT_VIEW:
        with np.errstate(invalid="ignore"):
            x = raw.astype(np.float64)                 # exact for every float format
        isnan = np.isnan(x)
        valid = np.sort(x[~isnan])
        fin = x[np.isfinite(x)]
        tiny = float(ml_dtypes.finfo(FLOAT_VIEW[dtype]).smallest_normal)
        out = {
            "min": float(valid[0]) if valid.size else None,
            "max": float(valid[-1]) if valid.size else None,
            "absmax": float(np.abs(valid).max()) if valid.size else None,
            "zeros": int(np.sum(x == 0)), "nan": int(isnan.sum()),
            "posinf": int(np.sum(x == math.inf)), "neginf": int(np.sum(x == -math.inf)),
            "subnormal": int(np.sum((np.abs(x) < tiny) & (x != 0))),
        }
        to_py = float
    else:
        x = (raw != 0).astype(np.int64) if dtype == "BOOL" else raw
        valid = np.sort(x)
        fin = x
        ints = [int(valid[0]), int(valid[-1])] if valid.size else []
        out = {
            "min": ints[0] if ints else None, "max": ints[1] if ints else None,
            "absmax": max(abs(v) for v in ints) if ints else None,
            "zeros": int(np.sum(x == 0)), "nan": 0, "posinf": 0, "neginf": 0, "subnormal": 0,
        }
        to_py = int if dtype in SMALL_INT else float
    # moments in 80-bit long double: no overflow of x^2 for any float64, 11 extra bits
    ld = fin.astype(np.longdouble)
    if ld.size:
        mean = ld.sum() / ld.size
        var = np.square(ld - mean).sum() / ld.size
        out["mean"], out["std"] = float(mean), float(np.sqrt(var))
        with np.errstate(over="ignore"):
            out["l2"] = float(np.sqrt(np.square(ld).sum()).astype(np.float64))
    else:
        out["mean"] = out["std"] = None
        out["l2"] = 0.0
    if quantiles:
        b = binned(valid, dtype)
        if b.size:
            qs = np.quantile(b, S.QUANTILE_LEVELS, method="inverted_cdf")
            out["quantiles"] = {k: to_py(v) for k, v in zip(S.QUANTILE_KEYS, qs)}
        else:
            out["quantiles"] = {k: None for k in S.QUANTILE_KEYS}
    else:
        out["quantiles"] = None
    return {k: out[k] for k in S.STATS_KEYS}


# ------------------------------------------------------------------------------------------------
# comparing stats dicts

EXACT = ("min", "max", "absmax", "zeros", "nan", "posinf", "neginf", "subnormal")
MOMENTS = ("mean", "std", "l2")
TINY = 5e-324 * 4          # a few subnormal ulps: moments of subnormal data round there


def assert_plain(stats: dict | None, dtype: str) -> None:
    """Exactly the contract's keys, plain Python values of the right kind, JSON-serialisable."""
    assert stats is not None
    assert tuple(stats) == S.STATS_KEYS, list(stats)
    is_int = dtype in INT_VIEW
    for k in ("min", "max", "absmax"):
        v = stats[k]
        assert v is None or type(v) is (int if is_int else float), (k, type(v))
    for k in ("zeros", "nan", "posinf", "neginf", "subnormal"):
        assert type(stats[k]) is int, (k, type(stats[k]))
    for k in MOMENTS:
        assert stats[k] is None or type(stats[k]) is float, (k, type(stats[k]))
    assert type(stats["l2"]) is float
    q = stats["quantiles"]
    if q is not None:
        assert tuple(q) == S.QUANTILE_KEYS
        for v in q.values():
            assert v is None or type(v) is (int if dtype in SMALL_INT else float), type(v)
    json.dumps(stats)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def moments_close(a, b, *, rel: float, scale: float, slack: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if not (math.isfinite(a) and math.isfinite(b)):
        return _same(a, b)
    return abs(a - b) <= rel * max(abs(a), abs(b)) + slack * scale + TINY


def compare_stats(got: dict | None, want: dict | None, *, rel: float = 1e-6,
                  slack: float = 1e-9) -> list[str]:
    """Differences between two stats dicts: counts, min/max/absmax and quantiles exactly (NaN equal
    to NaN), mean/std/l2 within `rel` relative plus `slack` times the data's RMS scale
    (max(|mean|, std) of `want`: rounding in a near-zero mean or std is relative to it)."""
    if got is None or want is None:
        return [] if got is None and want is None else [f"got {got!r}, want {want!r}"]
    bad = []
    if set(got) != set(want):
        bad.append(f"keys {sorted(got)} != {sorted(want)}")
    for k in EXACT:
        if not _same(got.get(k), want.get(k)):
            bad.append(f"{k}: got {got.get(k)!r}, want {want.get(k)!r}")
    m, s = want.get("mean"), want.get("std")
    scale = max(abs(m) if m is not None else 0.0, s if s is not None else 0.0)
    for k in MOMENTS:
        if not moments_close(got.get(k), want.get(k), rel=rel, scale=scale, slack=slack):
            bad.append(f"{k}: got {got.get(k)!r}, want {want.get(k)!r}")
    gq, wq = got.get("quantiles"), want.get("quantiles")
    if (gq is None) != (wq is None):
        bad.append(f"quantiles: got {gq!r}, want {wq!r}")
    elif gq is not None:
        if list(gq) != list(wq):
            bad.append(f"quantile keys {list(gq)} != {list(wq)}")
        for k in wq:
            if not _same(gq.get(k), wq[k]):
                bad.append(f"quantile {k}: got {gq.get(k)!r}, want {wq[k]!r}")
    return bad


def assert_stats_match(got: dict | None, want: dict | None, *, rel: float = 1e-6,
                       slack: float = 1e-9, what: str = "") -> None:
    bad = compare_stats(got, want, rel=rel, slack=slack)
    assert not bad, f"{what}: " + "; ".join(bad)
