// pybind11 glue for paramkit._core: converts arguments and results, releases the GIL, relays
// progress and Ctrl-C. No policy lives here; python/paramkit/backends/cpu_backend.py decides.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <system_error>

#include "../src/engine.hpp"
#include "dlpack_view.hpp"
#include "os_error.hpp"

namespace py = pybind11;
using namespace paramkit;

#include "result_records.hpp"

void register_quant(py::module_& m);   // quant_bindings.cpp
void register_header(py::module_& m);  // header_bindings.cpp
void register_records(py::module_& m);  // records_bindings.cpp
void register_diff(py::module_& m);     // diff_bindings.cpp

namespace {

py::dict run(const std::vector<std::string>& files, const std::vector<EngineTask>& tasks, EngineOptions opt,
             py::object progress) {
  EngineInfo info;
  EngineOutput out = call_engine<EngineCancelled>(
      progress, [&](const std::function<bool(uint64_t)>& cb) { return run_engine(files, tasks, opt, cb, &info); });
  py::dict d = pack(out.stats, opt.quantiles ? int(opt.levels.size()) : 0);
  int ns = int(opt.schemes.size());
  d["quant"] = pack_quant(out.quant, ns);
  py::array_t<double> am(out.quant.size());
  for (size_t i = 0; i < out.quant.size(); ++i) am.mutable_at(i) = out.quant[i].absmax_finite;
  d["quant_absmax"] = am;
  d["isa"] = info.isa; d["threads"] = info.threads; d["units"] = info.units;
  return d;
}

EngineOptions options(bool quantiles, int threads, uint64_t chunk_bytes, const std::vector<double>& levels,
                      const std::vector<std::pair<int, int>>& schemes = {}, bool stats = true) {
  if (levels.size() > size_t(kMaxQuantiles)) throw std::invalid_argument("too many quantile levels");
  for (size_t i = 1; i < levels.size(); ++i)
    if (!(levels[i - 1] <= levels[i])) throw std::invalid_argument("quantile levels must be ascending");
  EngineOptions o;
  o.quantiles = quantiles; o.threads = threads; o.chunk_bytes = chunk_bytes; o.levels = levels;
  o.stats = stats;
  o.schemes = quant_specs(schemes, size_t(kMaxSchemes));
  return o;
}

// What a DLPack capsule holds (dlpack_host_view / dlpack_describe; read by python/paramkit/_dlpack.py).
py::dict dlpack_info(const dlpack::View& v) {
  py::dict d;
  d["device_type"] = v.device_type; d["device_id"] = v.device_id; d["dtype"] = v.dtype;
  d["code"] = v.code; d["bits"] = v.bits; d["lanes"] = v.lanes;
  d["shape"] = py::tuple(py::cast(v.shape)); d["numel"] = v.numel; d["nbytes"] = v.nbytes; d["readonly"] = v.readonly;
  return d;
}

// TEST ONLY (_test_make_capsule): frees of the host buffers behind test capsules, counted.
std::atomic<long> g_test_capsule_frees{0};
void test_capsule_free(void* p) { g_test_capsule_frees.fetch_add(1); std::free(p); }

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "paramkit CPU engine (private; use paramkit.scan / paramkit.tensor_stats)";
  m.attr("HIST_BINS") = kHistBins;   // bins of the compact histogram (paramkit.stats.HISTOGRAM_BINS)
  // views: (task row, storage offset, storage bytes, element offset, big-endian, shape, strides) of the tasks
  // that are strided or big-endian views of a storage in their file (cpp/include/paramkit/read_plan.hpp)
  m.def("run",
        [](const std::vector<std::string>& files, py::array_t<int64_t, py::array::c_style | py::array::forcecast> spec,
           py::array_t<double, py::array::c_style | py::array::forcecast> absmax, bool stats, bool quantiles, int threads,
           uint64_t chunk_bytes, const std::vector<double>& levels,
           const std::vector<std::pair<int, int>>& schemes, py::object progress, const std::vector<ViewSpec>& views) {
          auto tasks = tasks_from_spec<EngineTask>(spec, absmax, schemes.size(), views);
          return run(files, tasks, options(quantiles, threads, chunk_bytes, levels, schemes, stats), progress);
        },
        py::arg("files"), py::arg("spec"), py::arg("absmax"), py::arg("stats"), py::arg("quantiles"), py::arg("threads"),
        py::arg("chunk_bytes"), py::arg("levels"), py::arg("schemes"), py::arg("progress"),
        py::arg("views") = std::vector<ViewSpec>{});
  m.def("array_stats",
        [](py::buffer buf, int dtype, bool quantiles, uint64_t chunk_bytes, const std::vector<double>& levels) {
          py::buffer_info bi = buf.request();
          uint64_t nbytes = 0;
          const uint8_t* data = checked_buffer(bi, dtype, nbytes);
          uint64_t es = uint64_t(dtype_size(dtype));
          EngineTask t; t.mem = data; t.nbytes = nbytes; t.numel = nbytes / es; t.dtype = dtype;
          return run({}, {t}, options(quantiles, 1, chunk_bytes, levels), py::none());
        },
        py::arg("buffer"), py::arg("dtype"), py::arg("quantiles"), py::arg("chunk_bytes"), py::arg("levels"));
  register_quant(m);
  register_header(m);
  register_records(m);
  register_diff(m);
  // DLPack input, zero-copy: the capsule is read, never consumed, and stays the array's base (keeping the
  // producer's memory alive); host memory only (kDLCPU, kDLCUDAHost)
  m.def("dlpack_host_view", [](const py::capsule& cap) {
    dlpack::View v = dlpack::view(cap);
    if (v.device_type != dlpack::kCPU && v.device_type != dlpack::kCUDAHost)
      throw py::value_error("DLPack tensor on device type " + std::to_string(v.device_type) + ":" +
                            std::to_string(v.device_id) +
                            " is not in host memory (dlpack_host_view reads kDLCPU = 1 and kDLCUDAHost = 3)");
    py::array_t<uint8_t> a({py::ssize_t(v.nbytes)}, {py::ssize_t(1)}, static_cast<const uint8_t*>(v.data), cap);
    a.attr("setflags")(py::arg("write") = false);
    return py::make_tuple(a, dlpack_info(v));
  }, py::arg("capsule"));
  // the same dict for a capsule on any device (the dtype of a GPU array); never touches the data
  m.def("dlpack_describe", [](const py::capsule& cap) { return dlpack_info(dlpack::view(cap)); }, py::arg("capsule"));
  // TEST ONLY: a make_capsule() capsule of malloc'ed bytes (byte i = (131 i + 7) mod 256), freed with free()
  // and counted by _test_capsule_frees(); device_type is only a label (the memory is always host memory).
  m.def("_test_make_capsule", [](const std::vector<int64_t>& shape, int dtype, int device_type) {
    uint64_t n = uint64_t(dtype_size(dtype));
    for (int64_t d : shape) n *= uint64_t(std::max<int64_t>(d, 0));
    auto* p = static_cast<uint8_t*>(std::malloc(std::max<uint64_t>(n, 1)));
    if (!p) throw std::bad_alloc();
    for (uint64_t i = 0; i < n; ++i) p[i] = uint8_t(i * 131 + 7);
    return dlpack::make_capsule(p, device_type, 0, dtype, shape, test_capsule_free);
  }, py::arg("shape"), py::arg("dtype"), py::arg("device_type") = int(dlpack::kCPU));
  m.def("_test_capsule_frees", []() { return g_test_capsule_frees.load(); });  // TEST ONLY
  m.def("build_info", []() {
    py::dict d;
#if defined(__clang__)
    d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    d["compiler"] = std::string("gcc ") + __VERSION__;
#else
    d["compiler"] = "unknown";
#endif
    d["isa"] = active_isa();
#if defined(__x86_64__)
    d["isa_compiled"] = std::vector<std::string>{"generic", "avx2"};
#else
    d["isa_compiled"] = std::vector<std::string>{"generic"};
#endif
    d["default_threads"] = default_threads();
    d["build_type"] = PARAMKIT_BUILD_TYPE;
    d["version"] = PARAMKIT_VERSION;
    return d;
  });
}
