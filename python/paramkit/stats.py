"""The statistics contract every backend meets (numpy oracle, cpu, cuda): keys, quantile levels and
the exact definitions, written once here so that the README, the engines and the tests agree.

Definitions (x = the tensor's elements decoded exactly to float64, or to Python int for integer
dtypes; BOOL decodes as 0/1 with any non-zero byte being 1):

* ``nan`` / ``posinf`` / ``neginf``: exact counts. ``zeros``: elements equal to 0 (+0 and -0).
* ``subnormal``: elements whose encoding in their *own* format is subnormal (exponent field 0,
  mantissa non-zero); always 0 for integer and bool dtypes.
* ``min`` / ``max`` / ``absmax``: exact, over the non-NaN elements (±Inf included);
  ``None`` when there is none. Python ``int`` for integer dtypes, ``float`` otherwise.
* ``mean``, ``std`` (population, ddof=0), ``l2`` (= sqrt(sum x^2)): over the *finite* elements,
  computed with float64 accumulation (chunk-local, merged with Chan's formula in chunk order);
  within 1e-6 relative of a float64 reference. ``mean``/``std`` are ``None`` with no finite
  element, ``l2`` is then 0.0.
* ``quantiles``: dict level -> value for the levels in ``QUANTILE_LEVELS`` over the non-NaN
  elements, n' of them: the k-th smallest *binned* value with k = ceil(q * n') (float64
  arithmetic), clamped to [1, n'] (numpy ``method="inverted_cdf"``). Values are ``None`` when n' = 0.
  Binned value: 8- and 16-bit dtypes: the value itself (exact). F32: the value with its low 16
  bits cleared (truncated to bfloat16 precision, so relative error < 2^-7). F64 and 32/64-bit
  integers: first cast to float32 (round to nearest even), then truncated the same way.
  ``quantiles`` is ``None`` when the scan ran with ``quantiles=False``.
"""
from __future__ import annotations

QUANTILE_LEVELS: tuple[float, ...] = (0.001, 0.01, 0.5, 0.99, 0.999)
QUANTILE_KEYS: tuple[str, ...] = ("0.001", "0.01", "0.5", "0.99", "0.999")
STATS_KEYS: tuple[str, ...] = ("min", "max", "mean", "std", "absmax", "l2", "zeros", "nan",
                               "posinf", "neginf", "subnormal", "quantiles")
