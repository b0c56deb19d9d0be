// paramkit._cuda: reports the CUDA runtime/driver and devices, so Python can say exactly why the
// cuda backend is or is not usable, and runs the GPU engine (stats_engine.cu, device_arrays.cu).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <system_error>

#include "paramkit/quant.hpp"
#include "paramkit/stats.hpp"
#include "stats_engine.cuh"

#include "dlpack_view.hpp"      // DLPack capsules in and out (device arrays)
#include "os_error.hpp"         // std::system_error -> OSError with its errno
#include "result_records.hpp"   // pack(), pack_quant(), sums_dict(): the layouts of paramkit._core

namespace py = pybind11;
using namespace paramkit;

namespace {

cuda::Options options(bool quantiles, const std::vector<double>& levels, bool stats = true,
                      const std::vector<std::pair<int, int>>& schemes = {}, int64_t hold_bytes = -1) {
  if (levels.size() > size_t(kMaxQuantiles)) throw std::invalid_argument("too many quantile levels");
  for (size_t i = 1; i < levels.size(); ++i)
    if (!(levels[i - 1] <= levels[i])) throw std::invalid_argument("quantile levels must be ascending");
  cuda::Options o;
  o.quantiles = quantiles; o.levels = levels; o.stats = stats;
  o.schemes = quant_specs(schemes, size_t(cuda::kMaxSchemes));
  if (const char* e = std::getenv("PARAMKIT_CUDA_RING_MB")) o.ring_bytes = uint64_t(std::max(1, std::atoi(e))) << 20;
  if (const char* e = std::getenv("PARAMKIT_CUDA_SLOTS")) o.slots = std::max(2, std::atoi(e));
  if (hold_bytes >= 0) o.hold_bytes = uint64_t(hold_bytes);
  return o;
}

py::dict run(const std::vector<std::string>& files, const std::vector<cuda::Task>& tasks, const cuda::Options& opt,
             py::object progress) {
  ProgressBridge bridge{progress};
  auto cb = [&](uint64_t done) -> bool { return bridge(done); };
  cuda::Output out;
  cuda::Info info;
  try {
    py::gil_scoped_release nogil;
    out = cuda::run(files, tasks, opt, cb, &info);
  } catch (cuda::Cancelled&) {
    bridge.rethrow();
  } catch (std::system_error& e) {
    raise_os_error(e);
  }
  if (!opt.stats) out.stats.assign(tasks.size(), TensorResult{});
  py::dict d = pack(out.stats, opt.quantiles ? int(opt.levels.size()) : 0);
  const int ns = int(opt.schemes.size());
  if (out.quant.size() != tasks.size()) out.quant.resize(tasks.size());
  d["quant"] = pack_quant(out.quant, ns);
  py::array_t<double> am(tasks.size());
  py::array_t<bool> held(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) {
    am.mutable_at(i) = ns ? double(out.quant[i].absmax) : NAN;
    held.mutable_at(i) = out.quant[i].held;
  }
  d["quant_absmax"] = am;
  d["held"] = held;
  d["isa"] = "cuda:" + info.device; d["threads"] = info.readers; d["units"] = info.batches;
  d["launches"] = info.launches; d["held_tensors"] = info.held; d["held_bytes"] = info.held_bytes;
  d["hold_capacity"] = info.hold_capacity;
  return d;
}

// A DLPack capsule of a CUDA array: its view, with the device made current and every stream's
// earlier work on it finished (the producer's writes are then visible to our streams, which are
// non-blocking: this device-wide synchronization, not stream order, is what makes the read safe).
dlpack::View device_view(const py::capsule& cap) {
  dlpack::View v = dlpack::view(cap);
  if (v.device_type != dlpack::kCUDA && v.device_type != dlpack::kCUDAManaged)
    throw py::value_error("paramkit._cuda: the array is not on a CUDA device (DLPack device type " +
                          std::to_string(v.device_type) + ")");
  if (v.dtype < 0) throw py::type_error("paramkit._cuda: unsupported DLPack dtype");
  cudaError_t e = cudaSetDevice(v.device_id);
  if (e == cudaSuccess) {
    py::gil_scoped_release nogil;   // the producer's pending work may take a while
    e = cudaDeviceSynchronize();
  }
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
  return v;
}

// device memory owned by a unique_ptr-like guard until handed to a capsule
struct DeviceBuffer {
  void* p = nullptr;
  DeviceBuffer(uint64_t bytes, int device) : p(cuda::alloc_device(bytes, device)) {}
  ~DeviceBuffer() { cuda::free_device(p); }
  void* release() { void* r = p; p = nullptr; return r; }
};

// a 16-byte-aligned device pointer to v's bytes (the kernels' vector loads need it): v.data itself,
// or a device-to-device copy into `copy`
const uint8_t* aligned_bytes(const dlpack::View& v, std::unique_ptr<DeviceBuffer>& copy) {
  if (reinterpret_cast<uintptr_t>(v.data) % 16 == 0) return static_cast<const uint8_t*>(v.data);
  copy.reset(new DeviceBuffer(v.nbytes, v.device_id));
  cudaError_t e = cudaMemcpy(copy->p, v.data, v.nbytes, cudaMemcpyDeviceToDevice);
  // a device-to-device cudaMemcpy may return before it completes, and the engines' non-blocking
  // streams do not wait for the legacy stream it ran on
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
  return static_cast<const uint8_t*>(copy->p);
}

py::dict dlpack_stats(const py::capsule& cap, bool quantiles, const std::vector<double>& levels, int dtype) {
  dlpack::View v = device_view(cap);
  if (dtype >= 0 && dtype != v.dtype) {   // the caller reads the bytes as another dtype (uint16 bits as BF16)
    if (dtype >= DTYPE_COUNT || v.nbytes % uint64_t(dtype_size(dtype)))
      throw py::value_error("the array's bytes are not a whole number of elements of the requested dtype");
    v.dtype = dtype;
    v.numel = v.nbytes / uint64_t(dtype_size(dtype));
  }
  std::unique_ptr<DeviceBuffer> copy;
  cuda::Task t;
  t.dev = v.nbytes ? aligned_bytes(v, copy) : nullptr;
  t.nbytes = v.nbytes; t.numel = v.numel; t.dtype = v.dtype;
  cuda::Options o = options(quantiles, levels);
  o.device = v.device_id;
  o.ring_bytes = 1ull << 20;   // the smallest ring: a device-resident array never goes through it
  if (!t.dev) t.mem = reinterpret_cast<const uint8_t*>(&t);   // empty: never read
  py::dict d = run({}, {t}, o, py::none());
  d["dtype"] = v.dtype;
  return d;
}

py::tuple dlpack_quant(const py::capsule& cap, int kind, int group, int64_t rows, int64_t row_len,
                       const py::object& tensor_absmax, bool want_values) {
  dlpack::View v = device_view(cap);
  if (!dtype_is_float(v.dtype)) throw py::type_error("quantization needs a floating-point array");
  QuantSpec spec = checked_array_quant(kind, group, rows, row_len, v.numel, tensor_absmax);
  std::unique_ptr<DeviceBuffer> copy, out;
  const uint8_t* x = v.nbytes ? aligned_bytes(v, copy) : nullptr;
  if (want_values) out.reset(new DeviceBuffer(v.numel * 4, v.device_id));
  QuantSums s;
  {
    py::gil_scoped_release nogil;
    s = cuda::quant_device_array(x, v.dtype, rows, row_len, spec, out ? static_cast<float*>(out->p) : nullptr,
                                 v.device_id);
  }
  py::object values = py::none();
  if (out) {   // make_capsule owns the memory from the call on (it frees it itself if it throws)
    void* p = out->release();
    values = dlpack::make_capsule(p, dlpack::kCUDA, v.device_id, F32, v.shape, &cuda::free_device);
  }
  return py::make_tuple(values, sums_dict(s));
}

}  // namespace

#ifndef PARAMKIT_CUDA_MODULE
#define PARAMKIT_CUDA_MODULE _cuda   // the emulator build (cuda/emu) names it _cuda_emu
#endif

PYBIND11_MODULE(PARAMKIT_CUDA_MODULE, m) {
  m.doc() = "paramkit CUDA backend (private)";
#ifdef PARAMKIT_CUDA_EMULATOR
  m.attr("emulated") = true;
  m.def("fail_allocation", [](int n) { pk_emu::fail_allocs_after = n; },
        "Emulator only: make the n-th device/pinned allocation from now fail (0: none), to test error paths.");
  m.def("fail_read", [](int n) { pk_emu::fail_reads_after = n; },
        "Emulator only: make the n-th file read from now fail with EIO (0: none), to test error paths.");
  m.def("live_allocations", []() { return long(pk_emu::live_allocs); },
        "Emulator only: device and pinned allocations not yet freed (the tests' leak checks).");
  m.def("set_schedule", [](const std::string& mode) {
    if (mode != "lazy" && mode != "others-first") throw py::value_error("schedule: 'lazy' or 'others-first'");
    pk_emu::others_first = mode == "others-first";
  }, "Emulator only: the order queued stream work runs in: 'lazy' (a stream runs when waited for) or "
     "'others-first' (every other stream's queued work runs first: later batches before earlier ones).");
#else
  m.attr("emulated") = false;
#endif
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
  // paramkit._core.run's signature (threads: the threads that read the file, 0 = one per core, at most 8;
  // chunk_bytes is the cpu engine's and ignored),
  // plus hold_bytes: device memory that may keep tensors for their per-tensor-scale second pass
  // (-1: the default, 8 GiB; also capped at half the free memory). The result adds `held`: per
  // tensor, whether those schemes were completed on the device (else run again with its absmax).
  // views: the layouts of strided / big-endian view tasks, as paramkit._core.run's.
  m.def("run",
        [](const std::vector<std::string>& files, py::array_t<int64_t, py::array::c_style | py::array::forcecast> spec,
           py::array_t<double, py::array::c_style | py::array::forcecast> absmax, bool stats, bool quantiles, int threads,
           uint64_t chunk_bytes, const std::vector<double>& levels,
           const std::vector<std::pair<int, int>>& schemes, py::object progress, int64_t hold_bytes,
           const std::vector<ViewSpec>& views) {
          (void)chunk_bytes;
          if (threads < 0) throw std::invalid_argument("threads must be >= 0 (0: one reader per core, at most 8)");
          auto tasks = tasks_from_spec<cuda::Task>(spec, absmax, schemes.size(), views);
          cuda::Options o = options(quantiles, levels, stats, schemes, hold_bytes);
          o.readers = threads;
          return run(files, tasks, o, progress);
        },
        py::arg("files"), py::arg("spec"), py::arg("absmax"), py::arg("stats"), py::arg("quantiles"), py::arg("threads"),
        py::arg("chunk_bytes"), py::arg("levels"), py::arg("schemes"), py::arg("progress"),
        py::arg("hold_bytes") = -1, py::arg("views") = std::vector<ViewSpec>{});
  m.def("array_stats",
        [](py::buffer buf, int dtype, bool quantiles, uint64_t chunk_bytes, const std::vector<double>& levels) {
          (void)chunk_bytes;
          py::buffer_info bi = buf.request();
          uint64_t nbytes = 0;
          const uint8_t* data = checked_buffer(bi, dtype, nbytes);
          uint64_t es = uint64_t(dtype_size(dtype));
          cuda::Task t; t.mem = data; t.nbytes = nbytes; t.numel = nbytes / es; t.dtype = dtype;
          return run({}, {t}, options(quantiles, levels), py::none());
        },
        py::arg("buffer"), py::arg("dtype"), py::arg("quantiles"), py::arg("chunk_bytes"), py::arg("levels"));
  m.def("dlpack_stats", &dlpack_stats, py::arg("capsule"), py::arg("quantiles"), py::arg("levels"), py::arg("dtype") = -1,
        "Statistics of a CUDA array given as a DLPack capsule, reduced where it lies (no copy to the host); "
        "dtype: a paramkit dtype id to read the bytes as (-1: the capsule's). The result layout of array_stats "
        "plus `dtype` (the id used).");
  m.def("dlpack_quant", &dlpack_quant, py::arg("capsule"), py::arg("kind"), py::arg("group"), py::arg("rows"),
        py::arg("row_len"), py::arg("tensor_absmax") = py::none(), py::arg("want_values") = true,
        "paramkit._core.fake_quantize for a CUDA array given as a DLPack capsule: (a DLPack capsule of the "
        "float32 dequantized values on the same device, or None when want_values is False; error-sums dict).");
  m.def("h2d_ceiling", [](uint64_t bytes, int reps) {
          py::gil_scoped_release nogil;
          return cuda::h2d_ceiling(bytes, reps);
        },
        py::arg("bytes"), py::arg("reps") = 5, "GB/s of pinned host-to-device cudaMemcpyAsync of `bytes`, on 2 streams");
  m.def("device_bench", [](uint64_t bytes, int dtype, bool quantiles, int reps) {
          cuda::DeviceBench r;
          {
            py::gil_scoped_release nogil;
            r = cuda::device_bench(bytes, dtype, quantiles, reps, 0);
          }
          py::dict d;
          d["kernel_gbps"] = r.kernel_gbps; d["d2d_gbps"] = r.d2d_gbps;
          d["kernel_ms"] = r.kernel_ms; d["d2d_ms"] = r.d2d_ms;
          return d;
        },
        py::arg("bytes"), py::arg("dtype"), py::arg("quantiles") = true, py::arg("reps") = 5,
        "Kernel-only timing: the statistics kernel over `bytes` of dtype (BF16, F16, F32 ids) already on the device, "
        "against a device-to-device copy of the same bytes (GB/s of `bytes`, best of reps).");
}
