// paramkit._cuda: reports the CUDA runtime/driver and devices, so Python can say exactly why the
// cuda backend is or is not usable. It includes the shared PK_HD headers so they stay nvcc-clean.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <cuda_runtime.h>

#include <string>
#include "paramkit/stats.hpp"

namespace py = pybind11;

namespace {
// Compiles the shared decode math for the device, so a header that breaks under nvcc fails the build.
__global__ void decode_probe(const uint16_t* in, float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = paramkit::decode_bf16(in[i]) + paramkit::decode_f16(in[i]);
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
    (void)&decode_probe;
    return d;
  });
}
