// Glue shared by paramkit._core.run and paramkit._cuda.run: the statistics result layout (read by
// python/paramkit/backends/native_records.py; one numpy array per field group, a row per tensor)
// and the bridge from an engine's progress callback to the Python one.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "paramkit/stats.hpp"

namespace paramkit {

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
  return d;
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

}  // namespace paramkit
