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

The compact histogram (``TensorReport.histogram``; an engine's ``run(..., histograms=True)``), derived from the
same value-ordered histogram as the quantiles, with quantiles on only: a dict

* ``counts``: ``HISTOGRAM_BINS`` int64 counts of the finite *binned* values (as above: the value itself for
  8/16-bit dtypes, the bfloat16 truncation otherwise; GGML block types: of their dequantized float32 values);
  binned value v is in bin k = floor((v - lo) / (hi - lo) * HISTOGRAM_BINS) computed in float64 in this order,
  clamped to [0, HISTOGRAM_BINS - 1] (v = hi is in the last bin); when lo == hi (one distinct finite value)
  every finite element is in bin 0. Every source bin (a bit pattern, or a bfloat16 prefix) goes wholly into
  one bin, so every backend gives the same counts, bit for bit.
* ``lo``, ``hi``: the smallest and largest finite binned value (``None`` when there is none); for 8/16-bit
  dtypes the exact finite min and max, otherwise within bfloat16 resolution of them (truncation toward zero).
* ``nonfinite``: elements whose binned value is NaN or ±Inf (F64 values beyond the float32 range bin as ±Inf,
  as for the quantiles); ``sum(counts) + nonfinite`` is the element count.
* ``exact``: ``True`` for 8/16-bit dtypes (each element is binned at its own value); ``False`` otherwise: an
  element within bfloat16 resolution (relative 2^-7) of a bin edge may be counted in the bin next to it.
"""
from __future__ import annotations

QUANTILE_LEVELS: tuple[float, ...] = (0.001, 0.01, 0.5, 0.99, 0.999)
QUANTILE_KEYS: tuple[str, ...] = ("0.001", "0.01", "0.5", "0.99", "0.999")
HISTOGRAM_BINS = 64       # cpp/include/paramkit/stats.hpp kHistBins (paramkit._core.HIST_BINS)
HISTOGRAM_KEYS: tuple[str, ...] = ("lo", "hi", "counts", "nonfinite", "exact")
STATS_KEYS: tuple[str, ...] = ("min", "max", "mean", "std", "absmax", "l2", "zeros", "nan",
                               "posinf", "neginf", "subnormal", "quantiles")

