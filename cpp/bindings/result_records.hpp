// Glue shared by paramkit._core.run and paramkit._cuda.run: the statistics result layout (read by
// python/paramkit/backends/native_records.py; one numpy array per field group, a row per tensor)
// and the bridge from an engine's progress callback to the Python one.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <tuple>
#include <utility>
#include <stdexcept>
#include <system_error>
#include <vector>

#include "os_error.hpp"
#include "paramkit/ggml_blocks.hpp"
#include "paramkit/quant.hpp"
#include "paramkit/read_plan.hpp"
#include "paramkit/stats.hpp"

namespace paramkit {

// The compact histograms (CompactHist): "hist_counts" (n, kHistBins) uint64, "hist_range" (n, 2) lo, hi,
// "hist_nonfinite" (n,), "hist_flags" (n, 2) present, exact.
inline void pack_hist(const std::vector<TensorResult>& rs, pybind11::dict& d) {
  size_t n = rs.size();
  pybind11::array_t<uint64_t> counts({n, size_t(kHistBins)});
  pybind11::array_t<double> range({n, size_t(2)});
  pybind11::array_t<uint64_t> nonfinite(n);
  pybind11::array_t<bool> flags({n, size_t(2)});
  auto c = counts.mutable_unchecked<2>(); auto r = range.mutable_unchecked<2>();
  auto nf = nonfinite.mutable_unchecked<1>(); auto f = flags.mutable_unchecked<2>();
  for (size_t i = 0; i < n; ++i) {
    const CompactHist& h = rs[i].hist;
    for (int k = 0; k < kHistBins; ++k) c(i, k) = h.counts[k];
    r(i, 0) = h.lo; r(i, 1) = h.hi; nf(i) = h.nonfinite; f(i, 0) = h.present; f(i, 1) = h.exact;
  }
  d["hist_counts"] = counts; d["hist_range"] = range; d["hist_nonfinite"] = nonfinite; d["hist_flags"] = flags;
}

inline pybind11::dict pack(const std::vector<TensorResult>& rs, int nq) {
  size_t n = rs.size();
  pybind11::array_t<uint64_t> counts({n, size_t(7)});
  pybind11::array_t<double> fext({n, size_t(3)});
  pybind11::array_t<int64_t> iext({n, size_t(2)});
  pybind11::array_t<uint64_t> uext({n, size_t(3)});
  pybind11::array_t<double> mom({n, size_t(4)});
  pybind11::array_t<double> q({n, size_t(nq)});
  auto c = counts.mutable_unchecked<2>(); auto f = fext.mutable_unchecked<2>();
  auto ii = iext.mutable_unchecked<2>(); auto u = uext.mutable_unchecked<2>();
  auto m = mom.mutable_unchecked<2>(); auto qq = q.mutable_unchecked<2>();
  for (size_t i = 0; i < n; ++i) {
    const TensorResult& r = rs[i];
    c(i, 0) = r.numel; c(i, 1) = r.nan; c(i, 2) = r.posinf; c(i, 3) = r.neginf;
    c(i, 4) = r.zeros; c(i, 5) = r.subnormal; c(i, 6) = r.nonnan;
    f(i, 0) = r.fmin; f(i, 1) = r.fmax; f(i, 2) = r.fabsmax;
    ii(i, 0) = r.imin; ii(i, 1) = r.imax;
    u(i, 0) = r.umin; u(i, 1) = r.umax; u(i, 2) = r.uabsmax;
    m(i, 0) = r.nfinite; m(i, 1) = r.mean; m(i, 2) = r.std; m(i, 3) = r.l2;
    for (int k = 0; k < nq; ++k) qq(i, k) = k < r.nq ? r.q[k] : NAN;
  }
  pybind11::dict d;
  d["counts"] = counts; d["fext"] = fext; d["iext"] = iext; d["uext"] = uext; d["moments"] = mom; d["quantiles"] = q;
  pack_hist(rs, d);
  return d;
}

// Quantization sums as an (n, schemes, 9) float64 array: sse, sum_w2, sum_q2, sum_wq, max_abs_err,
// n, nonfinite, clipped, scale_clamped (counts are exact in float64 below 2^53). Q: any record with
// a `sums[scheme]` array of QuantSums (the cpu engine's TensorQuant, the cuda engine's TaskQuant).
template <class Q>
pybind11::array_t<double> pack_quant(const std::vector<Q>& qs, int ns) {
  pybind11::array_t<double> a({qs.size(), size_t(ns), size_t(9)});
  auto v = a.template mutable_unchecked<3>();
  for (size_t i = 0; i < qs.size(); ++i)
    for (int k = 0; k < ns; ++k) {
      const QuantSums& q = qs[i].sums[k];
      v(i, k, 0) = q.sse; v(i, k, 1) = q.sum_w2; v(i, k, 2) = q.sum_q2; v(i, k, 3) = q.sum_wq;
      v(i, k, 4) = q.max_abs_err; v(i, k, 5) = double(q.n); v(i, k, 6) = double(q.nonfinite);
      v(i, k, 7) = double(q.clipped); v(i, k, 8) = double(q.scale_clamped);
    }
  return a;
}

// One QuantSums as the dict of paramkit._core.quant_error_sums / fake_quantize.
inline pybind11::dict sums_dict(const QuantSums& s) {
  pybind11::dict d;
  d["n"] = s.n; d["nonfinite"] = s.nonfinite;
  d["sse"] = s.sse; d["sum_w2"] = s.sum_w2; d["sum_q2"] = s.sum_q2; d["sum_wq"] = s.sum_wq;
  d["max_abs_err"] = s.max_abs_err; d["clipped"] = s.clipped; d["scale_clamped"] = s.scale_clamped;
  return d;
}

// The engines' task table: spec rows [file, offset, nbytes, numel, dtype, quant_mask, row_len,
// chan_len, piece_multiple] and the per-tensor absmax (NaN: unknown), into Task records with those
// field names (paramkit::EngineTask, paramkit::cuda::Task); std::invalid_argument on a bad row.
// A view's layout from Python (python/paramkit/backends/native_records.py view_layouts): (task row,
// storage offset, storage bytes, element offset, big-endian, shape, strides in elements).
using ViewSpec = std::tuple<int64_t, int64_t, int64_t, int64_t, bool, std::vector<int64_t>, std::vector<int64_t>>;

template <class Task>
std::vector<Task> tasks_from_spec(const pybind11::array_t<int64_t, pybind11::array::c_style | pybind11::array::forcecast>& spec,
                                  const pybind11::array_t<double, pybind11::array::c_style | pybind11::array::forcecast>& absmax,
                                  size_t nschemes, const std::vector<ViewSpec>& views = {}) {
  if (spec.ndim() != 2 || spec.shape(1) != 9)
    throw std::invalid_argument("spec must be (n, 9): file, offset, nbytes, numel, dtype, quant_mask, row_len, chan_len, piece_multiple");
  if (absmax.ndim() != 1 || absmax.shape(0) != spec.shape(0)) throw std::invalid_argument("absmax must be (n,)");
  auto s = spec.unchecked<2>();
  auto a = absmax.unchecked<1>();
  std::vector<Task> tasks(size_t(spec.shape(0)));
  for (size_t i = 0; i < tasks.size(); ++i) {
    Task& t = tasks[i];
    t.file = int(s(i, 0)); t.offset = uint64_t(s(i, 1)); t.nbytes = uint64_t(s(i, 2));
    t.numel = uint64_t(s(i, 3)); t.dtype = int(s(i, 4)); t.quant_mask = uint32_t(s(i, 5));
    t.row_len = uint64_t(std::max<int64_t>(1, s(i, 6))); t.chan_len = uint64_t(std::max<int64_t>(1, s(i, 7)));
    t.piece_multiple = uint64_t(std::max<int64_t>(1, s(i, 8))); t.tensor_absmax = float(a(i));
    const bool block = ggml_type_of_dtype(t.dtype) >= 0;
    if ((t.dtype < 0 || t.dtype >= DTYPE_COUNT) && !block) throw std::invalid_argument("bad dtype id");
    const StorageUnit u = storage_unit(t.dtype);
    if (t.numel % u.elements || t.nbytes != t.numel / u.elements * u.bytes)
      throw std::invalid_argument("nbytes != numel * element size (whole blocks of a GGML block type)");
    if (t.quant_mask && !dtype_is_float(u.values)) throw std::invalid_argument("quantization needs a float dtype");
    if (t.quant_mask >> std::min<size_t>(nschemes, 31)) throw std::invalid_argument("quant_mask names a missing scheme");
  }
  for (const ViewSpec& v : views) {
    const int64_t row = std::get<0>(v);
    if (row < 0 || size_t(row) >= tasks.size()) throw std::invalid_argument("a view layout names a missing task");
    if (tasks[size_t(row)].layout) throw std::invalid_argument("two view layouts for one task");
    if (std::get<1>(v) < 0 || std::get<2>(v) < 0) throw std::invalid_argument("negative storage offset or size");
    auto lay = std::make_shared<ReadLayout>();
    lay->storage_offset = uint64_t(std::get<1>(v)); lay->storage_nbytes = uint64_t(std::get<2>(v));
    lay->element_offset = std::get<3>(v); lay->swap = std::get<4>(v);
    lay->shape = std::get<5>(v); lay->strides = std::get<6>(v);
    tasks[size_t(row)].layout = std::move(lay);   // validated against the tensor and its file by the engine
  }
  return tasks;
}

// (QuantKind, group size) pairs from Python into the engines' QuantSpecs (tensor_absmax comes per task)
inline std::vector<QuantSpec> quant_specs(const std::vector<std::pair<int, int>>& schemes, size_t max_schemes) {
  if (schemes.size() > max_schemes) throw std::invalid_argument("too many quantization schemes");
  std::vector<QuantSpec> out;
  for (const auto& sc : schemes) {
    if (sc.first < 0 || sc.first >= Q_KIND_COUNT || sc.second < 1) throw std::invalid_argument("bad quantization scheme");
    QuantSpec q{}; q.kind = sc.first; q.group = sc.second; q.tensor_absmax = 0.0f;
    out.push_back(q);
  }
  return out;
}

inline const char* quant_kind_name(int kind) {
  static const char* const names[Q_KIND_COUNT] = {"int8_tensor", "int8_channel", "int8_group", "int4_group",
                                                  "int4_group_asym", "q8_0", "q4_0", "nf4", "fp8_e4m3"};
  return quant_kind_valid(kind) ? names[kind] : "unknown";
}

// The QuantSpec of an array-level call (fake_quantize / quant_error of _core and _cuda) on `numel`
// values viewed as [rows, row_len]; pybind11 value_error on bad arguments. tensor_absmax None: -1
// (computed from the data).
inline QuantSpec checked_array_quant(int kind, int group, int64_t rows, int64_t row_len, uint64_t numel,
                                     const pybind11::object& tensor_absmax) {
  if (!quant_kind_valid(kind)) throw pybind11::value_error("unknown quantization kind " + std::to_string(kind));
  if (rows < 0 || row_len < 0) throw pybind11::value_error("rows and row_len must be >= 0");
  if (row_len > 0 && rows > INT64_MAX / row_len) throw pybind11::value_error("rows * row_len overflows");
  if (uint64_t(rows * row_len) != numel)
    throw pybind11::value_error("rows * row_len = " + std::to_string(rows * row_len) + " but x has " +
                                std::to_string(numel) + " elements");
  const std::string name = quant_kind_name(kind);
  bool grouped = quant_kind_row_groups(kind) || kind == Q_NF4;
  if (grouped && group < 1) throw pybind11::value_error("group must be >= 1 for " + name);
  if (quant_kind_ggml(kind)) {
    if (group != 32) throw pybind11::value_error(name + " blocks have 32 elements");
    if (row_len % 32)
      throw pybind11::value_error(name + ": row length " + std::to_string(row_len) + " is not a multiple of the block size 32");
  }
  QuantSpec spec{kind, grouped ? group : 0, -1.0f};
  if (!tensor_absmax.is_none()) {
    double t = tensor_absmax.cast<double>();
    if (!(std::isfinite(t) && t >= 0)) throw pybind11::value_error("tensor_absmax must be finite and >= 0");
    spec.tensor_absmax = float(t);
  }
  return spec;
}

// The bytes of an array_stats() argument: a C-contiguous buffer whose size is a whole number of
// `dtype` elements (std::invalid_argument otherwise). Returns the data pointer; sets nbytes.
inline const uint8_t* checked_buffer(const pybind11::buffer_info& bi, int dtype, uint64_t& nbytes) {
  if (dtype < 0 || dtype >= DTYPE_COUNT) throw std::invalid_argument("bad dtype id");
  nbytes = uint64_t(bi.size) * uint64_t(bi.itemsize);
  for (pybind11::ssize_t k = bi.ndim - 1, expect = bi.itemsize; k >= 0; --k) {
    if (bi.shape[k] > 1 && bi.strides[k] != expect) throw std::invalid_argument("array must be C-contiguous");
    expect *= bi.shape[k];
  }
  if (nbytes % uint64_t(dtype_size(dtype))) throw std::invalid_argument("buffer size is not a multiple of the element size");
  return static_cast<const uint8_t*>(bi.ptr);
}

// The engines' progress callback (called on the calling thread with the GIL released): calls the
// Python progress(done) with the GIL held; Ctrl-C, or an exception raised by progress, cancels the
// run and is kept so that rethrow() re-raises it once the engine has unwound.
struct ProgressBridge {
  pybind11::object progress;
  PyObject *et = nullptr, *ev = nullptr, *etb = nullptr;
  bool have_err = false;

  bool operator()(uint64_t done) {
    pybind11::gil_scoped_acquire g;
    if (PyErr_CheckSignals() != 0) { have_err = true; PyErr_Fetch(&et, &ev, &etb); return false; }
    if (!progress.is_none()) {
      try { progress(done); }
      catch (pybind11::error_already_set& e) { have_err = true; e.restore(); PyErr_Fetch(&et, &ev, &etb); return false; }
    }
    return true;
  }
  // after the engine reported a cancellation: the kept Python error, else "cancelled"
  [[noreturn]] void rethrow() {
    if (have_err) { PyErr_Restore(et, ev, etb); throw pybind11::error_already_set(); }
    throw std::runtime_error("cancelled");
  }
};

// Runs engine(cb) with the GIL released, cb relaying progress to the Python progress(done) (or None): the
// engine's Cancelled exception re-raises what cancelled it, a std::system_error becomes OSError.
template <class Cancelled, class Engine>
auto call_engine(const pybind11::object& progress, Engine&& engine) {
  ProgressBridge bridge{progress};
  std::function<bool(uint64_t)> cb = [&](uint64_t done) -> bool { return bridge(done); };
  try {
    pybind11::gil_scoped_release nogil;
    return engine(cb);
  } catch (Cancelled&) {
    bridge.rethrow();
  } catch (std::system_error& e) {
    raise_os_error(e);
  }
}

}  // namespace paramkit
