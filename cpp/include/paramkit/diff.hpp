// The per-element math of paramkit.diff, written once for the CPU engine and (later) the CUDA kernels: one
// pair of values A, B as float64 -> the sums behind the diff metrics, and the merge of two parts' sums. The
// rules are python/paramkit/backends/numpy_diff.py's (chunk_sums, merge_sums): the statistics of A - B are
// not here, they are stats.hpp's PieceStats of the float64 differences.
#pragma once
#include "config.hpp"
#include "exact_ops.hpp"

namespace paramkit {

// Sums of a part of a pair (the keys of numpy_diff.empty_sums): over the n positions where both values are
// finite: sse = sum d^2, sum_a2 = sum a^2, sum_b2 = sum b^2, sum_ab = sum a*b, max_abs = max |d|, sum_abs =
// sum |d| (d = a - b). nonfinite: positions where either is NaN or +-Inf; changed: positions whose values
// differ (NaN equals NaN, +0 equals -0); nonfinite_changed: the changed ones among the nonfinite.
struct DiffSums {
  uint64_t n = 0, nonfinite = 0, changed = 0, nonfinite_changed = 0;
  double sse = 0, sum_a2 = 0, sum_b2 = 0, sum_ab = 0, max_abs = 0, sum_abs = 0;
};

// Counts and sums add; max_abs takes the max, a NaN on either side winning (numpy_diff.merge_sums,
// quant.hpp merge_quant_sums). Merged in a fixed order, the result does not depend on who computed the parts.
PK_HD PK_INLINE void merge_diff_sums(DiffSums& a, const DiffSums& b) {
  a.n += b.n; a.nonfinite += b.nonfinite; a.changed += b.changed; a.nonfinite_changed += b.nonfinite_changed;
  a.sse = exact::dadd(a.sse, b.sse);
  a.sum_a2 = exact::dadd(a.sum_a2, b.sum_a2);
  a.sum_b2 = exact::dadd(a.sum_b2, b.sum_b2);
  a.sum_ab = exact::dadd(a.sum_ab, b.sum_ab);
  a.sum_abs = exact::dadd(a.sum_abs, b.sum_abs);
  a.max_abs = (b.max_abs > a.max_abs || b.max_abs != b.max_abs) ? b.max_abs : a.max_abs;
}

// Adds the pair (a, b) to the sums `s` (DiffSums, or any record with its fields) and returns d = a - b as IEEE
// computes it (NaN where either is NaN or both are the same infinity, +-Inf where one is): the value whose
// statistics are the diff's `delta`. Branch-free; one correctly rounded operation per step, never an FMA.
template <class S>
PK_HD PK_INLINE double diff_update(S& s, double a, double b) {
  const double d = exact::dsub(a, b);
  const bool both = (a - a == 0) & (b - b == 0);            // both finite
  const bool same = (a == b) | ((a != a) & (b != b));       // NaN equals NaN
  const double am = both ? a : 0.0, bm = both ? b : 0.0, dm = both ? d : 0.0;
  const double ad = dm < 0 ? -dm : dm;
  s.n += both; s.nonfinite += !both; s.changed += !same; s.nonfinite_changed += !same & !both;
  s.sse = exact::dadd(s.sse, exact::dmul(dm, dm));
  s.sum_a2 = exact::dadd(s.sum_a2, exact::dmul(am, am));
  s.sum_b2 = exact::dadd(s.sum_b2, exact::dmul(bm, bm));
  s.sum_ab = exact::dadd(s.sum_ab, exact::dmul(am, bm));
  s.sum_abs = exact::dadd(s.sum_abs, ad);
  s.max_abs = ad > s.max_abs ? ad : s.max_abs;
  return d;
}

}  // namespace paramkit
