// The statistics accumulator: per-chunk partial results, their Chan merge in float64, and the
// walk over a value-ordered histogram that yields exact counts, min/max, moments and quantiles.
#pragma once
#include <cfloat>
#include <cmath>
#include "config.hpp"
#include "dtype.hpp"

namespace paramkit {

constexpr int kMaxQuantiles = 8;
// Bins of the compact per-tensor histogram (compact_histogram below; python/paramkit/stats.py
// HISTOGRAM_BINS is the same number, checked by the tests against paramkit._core.HIST_BINS).
constexpr int kHistBins = 64;

// The compact histogram of one tensor: kHistBins equal-width bins over [lo, hi], the smallest and
// largest finite binned values (NaN: none), and the binned values that are NaN or +-Inf.
struct CompactHist {
  double lo = NAN, hi = NAN;
  uint64_t nonfinite = 0;
  uint64_t counts[kHistBins] = {};
  bool present = false;   // computed (statistics with quantiles)
  bool exact = false;     // binned values are the elements' own (8/16-bit dtypes), not bf16 prefixes
};

// Count, mean and sum of squared deviations of the finite values, held scaled by 2^-exp (mean)
// and 2^-2exp (m2) so that float64 data near 1e308 or 1e-308 neither overflows nor underflows;
// merged with Chan et al. after bringing both sides to the larger exponent.
struct Moments {
  double n = 0, mean = 0, m2 = 0;
  int exp = 0;
};
PK_HD PK_INLINE void rescale_moments(Moments& a, int e) {
  if (a.exp == e) return;
  a.mean = ldexp(a.mean, a.exp - e);
  a.m2 = ldexp(a.m2, 2 * (a.exp - e));
  a.exp = e;
}
PK_HD PK_INLINE void merge_moments(Moments& a, const Moments& bb) {
  if (bb.n == 0) return;
  if (a.n == 0) { a = bb; return; }
  Moments b = bb;
  int e = a.exp > b.exp ? a.exp : b.exp;
  rescale_moments(a, e);
  rescale_moments(b, e);
  double n = a.n + b.n, d = b.mean - a.mean;
  a.mean += d * (b.n / n);
  a.m2 += b.m2 + d * d * (a.n * (b.n / n));
  a.n = n;
}

// Partial statistics of one contiguous piece of a tensor (the unit that is merged in order).
struct PieceStats {
  uint64_t nan = 0, posinf = 0, neginf = 0, zeros = 0, subnormal = 0, nonnan = 0;
  double fmin = INFINITY, fmax = -INFINITY;          // float dtypes
  int64_t imin = INT64_MAX, imax = INT64_MIN;        // signed integer dtypes
  uint64_t umin = UINT64_MAX, umax = 0;              // unsigned integer dtypes
  Moments mom;
};
PK_HD PK_INLINE void merge_piece(PieceStats& a, const PieceStats& b) {
  a.nan += b.nan; a.posinf += b.posinf; a.neginf += b.neginf; a.zeros += b.zeros;
  a.subnormal += b.subnormal; a.nonnan += b.nonnan;
  a.fmin = b.fmin < a.fmin ? b.fmin : a.fmin; a.fmax = b.fmax > a.fmax ? b.fmax : a.fmax;
  a.imin = b.imin < a.imin ? b.imin : a.imin; a.imax = b.imax > a.imax ? b.imax : a.imax;
  a.umin = b.umin < a.umin ? b.umin : a.umin; a.umax = b.umax > a.umax ? b.umax : a.umax;
  merge_moments(a.mom, b.mom);
}

// The fixed-layout record one tensor produces (every backend fills the same fields).
struct TensorResult {
  uint64_t numel = 0, nan = 0, posinf = 0, neginf = 0, zeros = 0, subnormal = 0, nonnan = 0;
  double fmin = NAN, fmax = NAN, fabsmax = NAN;       // float dtypes (NaN: no non-NaN element)
  int64_t imin = 0, imax = 0;                         // signed ints
  uint64_t umin = 0, umax = 0, uabsmax = 0;           // unsigned ints; |x| max of any int dtype
  double nfinite = 0, mean = NAN, std = NAN, l2 = 0;
  double q[kMaxQuantiles] = {};
  int nq = 0;
  bool done = false;
  CompactHist hist;
};

// ldexp(x, e) for a result that is a statistic of finite values: one whose true value is at most
// DBL_MAX may come out above it by the rounding of the merged moments (l2 of {0, ..., 0, DBL_MAX};
// l2 of DBL_MAX among 70,000 normal values is off by about 2e-14); that rounds to DBL_MAX instead
// of Inf. A result clearly beyond DBL_MAX (more than 2^-30 relative: l2 of {DBL_MAX, DBL_MAX}) stays Inf.
PK_HD PK_INLINE double ldexp_finite(double x, int e) {
  double r = ldexp(x, e);
  if (r - r == 0) return r;                               // finite (or NaN, which r - r is not)
  if (r != r) return r;
  double lower = ldexp(x * (1.0 - 0x1p-30), e);           // the value moved down by 2^-30 relative
  return lower - lower == 0 ? (x < 0 ? -DBL_MAX : DBL_MAX) : r;
}

PK_HD PK_INLINE void finish_moments(TensorResult& r, const Moments& m) {
  r.nfinite = m.n;
  if (m.n > 0) {
    r.mean = ldexp_finite(m.mean, m.exp);
    double var = m.m2 / m.n;
    r.std = ldexp_finite(sqrt(var > 0 ? var : 0.0), m.exp);
    double ss = m.m2 + m.n * m.mean * m.mean;
    r.l2 = ldexp_finite(sqrt(ss > 0 ? ss : 0.0), m.exp);
  }
}

PK_HD PK_INLINE void finish_piece(int dt, TensorResult& r, const PieceStats& p) {
  r.nan = p.nan; r.posinf = p.posinf; r.neginf = p.neginf; r.zeros = p.zeros;
  r.subnormal = p.subnormal; r.nonnan = p.nonnan;
  if (p.nonnan > 0) {
    if (dtype_is_float(dt)) {
      r.fmin = p.fmin; r.fmax = p.fmax;
      r.fabsmax = fabs(p.fmin) > fabs(p.fmax) ? fabs(p.fmin) : fabs(p.fmax);
    } else if (dtype_is_signed_int(dt)) {
      r.imin = p.imin; r.imax = p.imax;
      uint64_t a = p.imin < 0 ? uint64_t(0) - uint64_t(p.imin) : uint64_t(p.imin);
      uint64_t b = p.imax < 0 ? uint64_t(0) - uint64_t(p.imax) : uint64_t(p.imax);
      r.uabsmax = a > b ? a : b;
    } else {
      r.umin = p.umin; r.umax = p.umax; r.uabsmax = p.umax;
    }
  }
  finish_moments(r, p.mom);
}

// k-th smallest rule for quantile level q over n non-NaN values: k = ceil(q*n) clamped to [1, n].
PK_HD PK_INLINE uint64_t quantile_rank(double q, uint64_t n) {
  double k = ceil(q * double(n));
  if (k < 1) k = 1;
  if (k > double(n)) k = double(n);
  return uint64_t(k);
}

// The compact histogram bin of a finite binned value v in [lo, hi]: floor((v - lo) / (hi - lo) * kHistBins)
// in float64, in exactly this operation order (the numpy backend computes the same expression, so every
// backend agrees bit for bit), clamped to [0, kHistBins - 1]; every value is in bin 0 when lo == hi.
PK_HD PK_INLINE int compact_bin(double v, double lo, double hi) {
  if (!(hi > lo)) return 0;
  double k = floor((v - lo) / (hi - lo) * double(kHistBins));
  return k < 0 ? 0 : (k > double(kHistBins - 1) ? kHistBins - 1 : int(k));
}

PK_HD PK_INLINE bool finite_value(double v) { return v - v == 0; }   // false for NaN and +-Inf

// The value a histogram bin stands for: the bit pattern's own value, or the bf16 prefix's (`prefix`).
PK_HD PK_INLINE double binned_value(int dt, bool prefix, uint32_t raw) {
  return prefix ? double(decode_bf16(uint16_t(raw))) : decode_to_double(dt, raw);
}

// The compact histogram of a tensor from the value-ordered histogram its statistics pass built (bins as for
// finalize_small, or for finalize_prefix_quantiles when `prefix`: the binned value of a wide element is its
// bf16 prefix); both of them call it when they compute quantiles. In value order the non-finite bins (-NaN,
// -Inf ... +Inf, +NaN) are at the two ends, so lo and hi are the first and last finite bins; then each source bin goes wholly into one compact bin (one pass).
// `unbinned`: NaN elements the source histogram left out (the prefix histogram bins only non-NaN elements),
// counted as nonfinite.
template <class Bin>
PK_HD void compact_histogram(int dt, bool prefix, const Bin* bins, int nbins, uint64_t unbinned, CompactHist& h) {
  h = CompactHist{};
  h.present = true;
  h.exact = !prefix;
  h.nonfinite = unbinned;
  int a = 0, b = nbins;   // the finite bins: [a, b)
  while (a < b && !finite_value(binned_value(dt, prefix, bins[a].raw))) h.nonfinite += bins[a++].count;
  while (b > a && !finite_value(binned_value(dt, prefix, bins[b - 1].raw))) h.nonfinite += bins[--b].count;
  if (a == b) return;
  h.lo = binned_value(dt, prefix, bins[a].raw);
  h.hi = binned_value(dt, prefix, bins[b - 1].raw);
  for (int i = a; i < b; ++i) h.counts[compact_bin(binned_value(dt, prefix, bins[i].raw), h.lo, h.hi)] += bins[i].count;
}

// Exact statistics of a small (8/16-bit) dtype from its bit-pattern histogram, walked in value
// order: bins[i] = (raw bit pattern, count), sorted by sort key, zero counts absent; with quantiles
// (qs), also its compact histogram.
template <class Bin>
PK_HD void finalize_small(int dt, const Bin* bins, int nbins, const double* qs, int nq, TensorResult& r) {
  PieceStats p;
  bool is_float = dtype_is_float(dt);
  // pass 1: counts, extremes, mean of the finite values (summed in fixed bin order)
  double sum = 0;
  bool first = true;
  for (int i = 0; i < nbins; ++i) {
    uint32_t raw = bins[i].raw; uint64_t c = bins[i].count;
    double v = dt == BOOL ? (raw ? 1.0 : 0.0) : decode_to_double(dt, raw);
    if (v != v) { p.nan += c; continue; }
    p.nonnan += c;
    // the integer extremes only for integer dtypes: a float value (+-Inf, bf16 up to 3.4e38) need not
    // fit in int64/uint64, and converting it would be undefined behaviour
    if (first) {
      first = false;
      p.fmin = v;
      if (!is_float) { p.imin = int64_t(v); p.umin = uint64_t(v < 0 ? 0 : v); }
    }
    p.fmax = v;
    if (!is_float) { p.imax = int64_t(v); p.umax = uint64_t(v < 0 ? 0 : v); }
    if (is_float && !(v - v == 0)) { if (v > 0) p.posinf += c; else p.neginf += c; continue; }
    if (v == 0) p.zeros += c;
    if (raw_is_subnormal(dt, raw)) p.subnormal += c;
    p.mom.n += double(c);
    sum += double(c) * v;
  }
  if (p.mom.n > 0) {
    double mean = sum / p.mom.n, m2 = 0, corr = 0;
    for (int i = 0; i < nbins; ++i) {
      double v = dt == BOOL ? (bins[i].raw ? 1.0 : 0.0) : decode_to_double(dt, bins[i].raw);
      if (!(v - v == 0)) continue;  // NaN or Inf
      double d = v - mean, c = double(bins[i].count);
      m2 += c * d * d; corr += c * d;
    }
    p.mom.mean = mean;
    p.mom.m2 = m2 - corr * corr / p.mom.n;  // corrected two-pass
    if (p.mom.m2 < 0) p.mom.m2 = 0;
  }
  finish_piece(dt, r, p);
  r.numel = p.nan + p.nonnan;
  // quantiles over non-NaN values, levels in ascending order
  r.nq = nq;
  if (qs) {
    uint64_t cum = 0; int qi = 0;
    uint64_t need = nq > 0 && p.nonnan > 0 ? quantile_rank(qs[0], p.nonnan) : 0;
    for (int i = 0; i < nbins && qi < nq && p.nonnan > 0; ++i) {
      double v = dt == BOOL ? (bins[i].raw ? 1.0 : 0.0) : decode_to_double(dt, bins[i].raw);
      if (v != v) continue;
      cum += bins[i].count;
      while (qi < nq && cum >= need) {
        r.q[qi++] = v;
        if (qi < nq) need = quantile_rank(qs[qi], p.nonnan);
      }
    }
    for (; qi < nq; ++qi) r.q[qi] = NAN;
    compact_histogram(dt, false, bins, nbins, 0, r.hist);
  }
}

// Quantiles and the compact histogram of a wide dtype from its bf16-prefix histogram (bins: raw = top 16 bits
// of the float32 value, sorted by sort key; only non-NaN elements were binned), after finish_piece has set r's
// counts (r.nan: the NaN elements the histogram left out).
template <class Bin>
PK_HD void finalize_prefix_quantiles(const Bin* bins, int nbins, const double* qs, int nq, uint64_t nonnan,
                                     TensorResult& r) {
  r.nq = nq;
  uint64_t cum = 0; int qi = 0;
  uint64_t need = nq > 0 && nonnan > 0 ? quantile_rank(qs[0], nonnan) : 0;
  for (int i = 0; i < nbins && qi < nq && nonnan > 0; ++i) {
    cum += bins[i].count;
    while (qi < nq && cum >= need) {
      r.q[qi++] = double(decode_bf16(uint16_t(bins[i].raw)));
      if (qi < nq) need = quantile_rank(qs[qi], nonnan);
    }
  }
  for (; qi < nq; ++qi) r.q[qi] = NAN;
  compact_histogram(F32, true, bins, nbins, r.nan, r.hist);
}

}  // namespace paramkit
