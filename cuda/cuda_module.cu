// paramkit._cuda: reports the CUDA runtime/driver and devices, so Python can say exactly why the
// cuda backend is or is not usable, and runs the GPU statistics engine (stats_engine.cu).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <system_error>

#include "paramkit/stats.hpp"
#include "stats_engine.cuh"

#include "result_records.hpp"   // pack(): the same result layout as paramkit._core.run

namespace py = pybind11;
using namespace paramkit;

namespace {

cuda::Options options(bool quantiles, const std::vector<double>& levels) {
  if (levels.size() > size_t(kMaxQuantiles)) throw std::invalid_argument("too many quantile levels");
  for (size_t i = 1; i < levels.size(); ++i)
    if (!(levels[i - 1] <= levels[i])) throw std::invalid_argument("quantile levels must be ascending");
  cuda::Options o;
  o.quantiles = quantiles; o.levels = levels;
  if (const char* e = std::getenv("PARAMKIT_CUDA_RING_MB")) o.ring_bytes = uint64_t(std::max(1, std::atoi(e))) << 20;
  if (const char* e = std::getenv("PARAMKIT_CUDA_SLOTS")) o.slots = std::max(2, std::atoi(e));
  return o;
}

py::dict run(const std::vector<std::string>& files, const std::vector<cuda::Task>& tasks, const cuda::Options& opt,
             bool stats, py::object progress) {
  ProgressBridge bridge{progress};
  auto cb = [&](uint64_t done) -> bool { return bridge(done); };
  std::vector<TensorResult> out(tasks.size());
  cuda::Info info;
  try {
    py::gil_scoped_release nogil;
    if (stats) out = cuda::run_stats(files, tasks, opt, cb, &info);
  } catch (cuda::Cancelled&) {
    bridge.rethrow();
  } catch (std::system_error& e) {
    PyErr_SetFromErrnoWithFilename(PyExc_OSError, e.what());
    throw py::error_already_set();
  }
  py::dict d = pack(out, opt.quantiles ? int(opt.levels.size()) : 0);
  d["quant"] = py::array_t<double>({tasks.size(), size_t(0), size_t(9)});
  py::array_t<double> am(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) am.mutable_at(i) = NAN;
  d["quant_absmax"] = am;
  d["isa"] = "cuda:" + info.device; d["threads"] = 0; d["units"] = info.batches;
  return d;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "paramkit CUDA backend (private)";
  m.def("probe", []() {
    py::dict d;
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt);
    cudaError_t de = cudaDriverGetVersion(&drv);
    d["runtime_version"] = rt;
    d["driver_version"] = de == cudaSuccess ? drv : 0;
    d["archs"] = PARAMKIT_CUDA_ARCHS;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    d["device_count"] = e == cudaSuccess ? n : 0;
    d["error"] = e == cudaSuccess ? std::string() : std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    py::list devs;
    for (int i = 0; e == cudaSuccess && i < n; ++i) {
      cudaDeviceProp p;
      if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
      py::dict x;
      x["name"] = std::string(p.name);
      x["compute_capability"] = std::to_string(p.major) + "." + std::to_string(p.minor);
      x["total_memory"] = (unsigned long long)p.totalGlobalMem;
      x["multiprocessors"] = p.multiProcessorCount;
      devs.append(x);
    }
    d["devices"] = devs;
    return d;
  });
  // Same signature as paramkit._core.run; quantization schemes are not on the GPU yet (the Python
  // cuda backend sends those runs to the cpu engine), so `schemes` must be empty here.
  m.def("run",
        [](const std::vector<std::string>& files, py::array_t<int64_t, py::array::c_style | py::array::forcecast> spec,
           py::array_t<double, py::array::c_style | py::array::forcecast> absmax, bool stats, bool quantiles, int threads,
           uint64_t chunk_bytes, const std::string& io, const std::vector<double>& levels,
           const std::vector<std::pair<int, int>>& schemes, py::object progress) {
          (void)threads; (void)chunk_bytes; (void)io;
          if (!schemes.empty()) throw std::invalid_argument("paramkit._cuda: quantization schemes are not implemented on the GPU");
          if (spec.ndim() != 2 || spec.shape(1) != 9)
            throw std::invalid_argument("spec must be (n, 9): file, offset, nbytes, numel, dtype, quant_mask, row_len, chan_len, piece_multiple");
          if (absmax.ndim() != 1 || absmax.shape(0) != spec.shape(0)) throw std::invalid_argument("absmax must be (n,)");
          auto s = spec.unchecked<2>();
          std::vector<cuda::Task> tasks(size_t(spec.shape(0)));
          for (size_t i = 0; i < tasks.size(); ++i) {
            cuda::Task& t = tasks[i];
            t.file = int(s(i, 0)); t.offset = uint64_t(s(i, 1)); t.nbytes = uint64_t(s(i, 2));
            t.numel = uint64_t(s(i, 3)); t.dtype = int(s(i, 4));
            if (t.dtype < 0 || t.dtype >= DTYPE_COUNT) throw std::invalid_argument("bad dtype id");
            if (t.nbytes != t.numel * uint64_t(dtype_size(t.dtype))) throw std::invalid_argument("nbytes != numel * element size");
            if (s(i, 5) != 0) throw std::invalid_argument("paramkit._cuda: quant_mask must be 0");
          }
          return run(files, tasks, options(quantiles, levels), stats, progress);
        },
        py::arg("files"), py::arg("spec"), py::arg("absmax"), py::arg("stats"), py::arg("quantiles"), py::arg("threads"),
        py::arg("chunk_bytes"), py::arg("io"), py::arg("levels"), py::arg("schemes"), py::arg("progress"));
  m.def("array_stats",
        [](py::buffer buf, int dtype, bool quantiles, uint64_t chunk_bytes, const std::vector<double>& levels) {
          (void)chunk_bytes;
          py::buffer_info bi = buf.request();
          uint64_t nbytes = 0;
          const uint8_t* data = checked_buffer(bi, dtype, nbytes);
          uint64_t es = uint64_t(dtype_size(dtype));
          cuda::Task t; t.mem = data; t.nbytes = nbytes; t.numel = nbytes / es; t.dtype = dtype;
          return run({}, {t}, options(quantiles, levels), true, py::none());
        },
        py::arg("buffer"), py::arg("dtype"), py::arg("quantiles"), py::arg("chunk_bytes"), py::arg("levels"));
  m.def("h2d_ceiling", [](uint64_t bytes, int reps) {
          py::gil_scoped_release nogil;
          return cuda::h2d_ceiling(bytes, reps);
        },
        py::arg("bytes"), py::arg("reps") = 5, "GB/s of pinned host-to-device cudaMemcpyAsync of `bytes`, on 2 streams");
}
