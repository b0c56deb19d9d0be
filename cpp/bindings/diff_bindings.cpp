// pybind11 glue for paramkit._core.run_diff (the diff pass of cpp/src/diff_engine.cpp): the task table in, fixed
// arrays out, the GIL released while it runs. No policy: python/paramkit/backends/native_diff.py decides.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../src/diff_engine.hpp"

namespace py = pybind11;
using namespace paramkit;

#include "result_records.hpp"

namespace {

using Spec = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

std::vector<DiffTask> diff_tasks(const Spec& spec) {
  if (spec.ndim() != 2 || spec.shape(1) != 11)
    throw std::invalid_argument("spec must be (n, 11): file_a, offset_a, nbytes_a, dtype_a, file_b, offset_b, "
                                "nbytes_b, dtype_b, numel, step, mode");
  auto s = spec.unchecked<2>();
  std::vector<DiffTask> tasks(size_t(spec.shape(0)));
  for (size_t i = 0; i < tasks.size(); ++i) {
    for (int k = 0; k < 11; ++k)
      if (s(i, k) < 0) throw std::invalid_argument("negative value in the diff spec");
    DiffTask& t = tasks[i];
    t.file_a = int(s(i, 0)); t.offset_a = uint64_t(s(i, 1)); t.nbytes_a = uint64_t(s(i, 2)); t.dtype_a = int(s(i, 3));
    t.file_b = int(s(i, 4)); t.offset_b = uint64_t(s(i, 5)); t.nbytes_b = uint64_t(s(i, 6)); t.dtype_b = int(s(i, 7));
    t.numel = uint64_t(s(i, 8)); t.step = uint64_t(s(i, 9)); t.mode = int(s(i, 10));
  }
  return tasks;
}

py::dict run_diff(const std::vector<std::string>& files, const Spec& spec, int threads, py::object progress) {
  std::vector<DiffTask> tasks = diff_tasks(spec);
  DiffInfo info;
  std::vector<DiffResult> res = call_engine<EngineCancelled>(
      progress, [&](const std::function<bool(uint64_t)>& cb) { return run_diff_engine(files, tasks, threads, cb, &info); });
  const size_t n = res.size();
  py::array_t<bool> equal(n), values(n);
  py::array_t<uint64_t> counts({n, size_t(4)});
  py::array_t<double> sums({n, size_t(6)});
  auto e = equal.mutable_unchecked<1>(); auto v = values.mutable_unchecked<1>();
  auto c = counts.mutable_unchecked<2>(); auto f = sums.mutable_unchecked<2>();
  std::vector<TensorResult> delta(n);
  for (size_t i = 0; i < n; ++i) {
    const DiffResult& r = res[i];
    e(i) = r.bytes_equal; v(i) = r.has_values;
    c(i, 0) = r.sums.n; c(i, 1) = r.sums.nonfinite; c(i, 2) = r.sums.changed; c(i, 3) = r.sums.nonfinite_changed;
    f(i, 0) = r.sums.sse; f(i, 1) = r.sums.sum_a2; f(i, 2) = r.sums.sum_b2; f(i, 3) = r.sums.sum_ab;
    f(i, 4) = r.sums.max_abs; f(i, 5) = r.sums.sum_abs;
    delta[i] = r.delta;
  }
  py::dict d;
  d["bytes_equal"] = equal; d["has_values"] = values; d["counts"] = counts; d["sums"] = sums;
  d["delta"] = pack(delta, 0);
  d["isa"] = info.isa; d["threads"] = info.threads; d["pieces"] = info.pieces; d["reread"] = info.reread;
  return d;
}

}  // namespace

void register_diff(py::module_& m) {
  // counts: n, nonfinite, changed, nonfinite_changed; sums: sse, sum_a2, sum_b2, sum_ab, max_abs, sum_abs
  // (cpp/include/paramkit/diff.hpp DiffSums); delta: the statistics of A - B in run()'s record layout
  m.def("run_diff", &run_diff, py::arg("files"), py::arg("spec"), py::arg("threads"), py::arg("progress"));
}
