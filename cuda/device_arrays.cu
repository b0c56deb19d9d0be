// Device-array entry points of the CUDA engine (see stats_engine.cuh): fake quantization of
// DLPack arrays already on the GPU, device memory for results, and the pinned H2D copy ceiling.
#include "stats_engine.cuh"
#include "device_kernels.cuh"

#include <algorithm>
#include <cstring>
#include <vector>

namespace paramkit {
namespace cuda {

namespace {

// decode n elements to float32 (f, or nothing when f is null) and atomicMax their finite absmax
__global__ void __launch_bounds__(kThreads) decode_kernel(const uint8_t* x, int dt, uint64_t n, float* f,
                                                          uint32_t* absmax_bits) {
  __shared__ float shf[kThreads];
  float am = 0.0f;
  for (uint64_t i = uint64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += uint64_t(gridDim.x) * kThreads) {
    float v = load_f32(dt, x, i);
    if (f) f[i] = v;
    float a = finite_abs(v);
    am = a > am ? a : am;
  }
  am = block_reduce(am, shf, MaxOp());
  if (threadIdx.x == 0) atomicMax(absmax_bits, __float_as_uint(am));
}

// paramkit._core.fake_quantize's loop (run_all) over a [rows, row_len] float32 array on the device,
// cut into units that threads take round robin over the grid: runs of kUnit elements (per-tensor
// scale), channels (int8_channel), nf4 blocks, or (row, group) pairs. Block sums -> part[blockIdx.x].
__global__ void __launch_bounds__(kThreads) array_quant_kernel(const float* f, uint64_t rows, uint64_t row_len,
                                                               QuantSpec sp, float* out, QuantSums* part) {
  __shared__ QuantSums shq[kThreads];
  const uint64_t n = rows * row_len;
  const uint64_t stride = uint64_t(gridDim.x) * kThreads, first = uint64_t(blockIdx.x) * kThreads + threadIdx.x;
  QuantSums s;
  quant_sums_clear(s);
  if (quant_kind_needs_tensor_absmax(sp.kind)) {
    for (uint64_t u = first; u * kUnit < n; u += stride) {
      uint64_t a = u * kUnit, len = n - a < kUnit ? n - a : kUnit;
      quant_group(sp, f + a, int64_t(len), out ? out + a : nullptr, s);
    }
  } else if (sp.kind == Q_INT8_CHANNEL) {
    for (uint64_t r = first; r < rows; r += stride)
      quant_group(sp, f + r * row_len, int64_t(row_len), out ? out + r * row_len : nullptr, s);
  } else {
    const uint64_t g = sp.group > 0 ? uint64_t(sp.group) : 1;
    const bool flat = sp.kind == Q_NF4;
    const uint64_t rl = flat ? n : row_len, upr = (rl + g - 1) / g, units = flat ? upr : rows * upr;
    for (uint64_t u = first; u < units; u += stride) {
      uint64_t r = u / upr, a = r * rl + (u % upr) * g, end = r * rl + rl;
      quant_group(sp, f + a, int64_t(end - a < g ? end - a : g), out ? out + a : nullptr, s);
    }
  }
  block_quant_sums(s, shq);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

int grid_for(uint64_t items) {
  return int(std::max<uint64_t>(1, std::min<uint64_t>((items + kThreads - 1) / kThreads, 4096)));
}

}  // namespace

QuantSums quant_device_array(const uint8_t* x, int dtype, int64_t rows, int64_t row_len, QuantSpec spec,
                             float* out, int device) {
  QuantSums total;
  quant_sums_clear(total);
  if (!dtype_is_float(dtype)) throw std::invalid_argument("quantization needs a float dtype");
  if (rows < 0 || row_len < 0) throw std::invalid_argument("rows and row_len must be >= 0");
  const uint64_t n = uint64_t(rows) * uint64_t(row_len);
  if (n == 0) return total;
  PK_CK(cudaSetDevice(device));
  Scratch S;
  PK_CK(cudaStreamCreateWithFlags(&S.stream, cudaStreamNonBlocking));
  // float32 input is used in place; other dtypes are decoded once
  const float* f = dtype == F32 ? reinterpret_cast<const float*>(x) : nullptr;
  float* fd = f ? nullptr : S.alloc<float>(n);
  uint32_t* d_am = S.alloc<uint32_t>(1);
  PK_CK(cudaMemsetAsync(d_am, 0, sizeof(uint32_t), S.stream));
  const bool need_am = quant_kind_needs_tensor_absmax(spec.kind) && spec.tensor_absmax < 0;
  if (fd || need_am) {
    PK_LAUNCH(decode_kernel, grid_for(n), kThreads, S.stream, x, dtype, n, fd, d_am);
    PK_CK(cudaGetLastError());
  }
  if (fd) f = fd;
  if (need_am) {
    uint32_t bits = 0;
    PK_CK(cudaMemcpyAsync(&bits, d_am, sizeof bits, cudaMemcpyDeviceToHost, S.stream));
    PK_CK(cudaStreamSynchronize(S.stream));
    std::memcpy(&spec.tensor_absmax, &bits, 4);
  }
  uint64_t units;
  if (quant_kind_needs_tensor_absmax(spec.kind)) units = (n + kUnit - 1) / kUnit;
  else if (spec.kind == Q_INT8_CHANNEL) units = uint64_t(rows);
  else {
    const uint64_t g = spec.group > 0 ? uint64_t(spec.group) : 1;
    units = spec.kind == Q_NF4 ? (n + g - 1) / g : uint64_t(rows) * ((uint64_t(row_len) + g - 1) / g);
  }
  const int grid = grid_for(units);
  QuantSums* d_part = S.alloc<QuantSums>(size_t(grid));
  PK_LAUNCH(array_quant_kernel, grid, kThreads, S.stream, f, uint64_t(rows), uint64_t(row_len), spec, out, d_part);
  PK_CK(cudaGetLastError());
  std::vector<QuantSums> part(static_cast<size_t>(grid));
  PK_CK(cudaMemcpyAsync(part.data(), d_part, sizeof(QuantSums) * part.size(), cudaMemcpyDeviceToHost, S.stream));
  PK_CK(cudaStreamSynchronize(S.stream));
  for (const QuantSums& p : part) merge_quant_sums(total, p);   // block order: reproducible
  return total;
}

void* alloc_device(uint64_t bytes, int device) {
  PK_CK(cudaSetDevice(device));
  void* p = nullptr;
  PK_CK(cudaMalloc(&p, std::max<uint64_t>(bytes, 1)));
  return p;
}

void free_device(void* p) {
  if (p) cudaFree(p);
}

double h2d_ceiling(uint64_t bytes, int reps) {
  bytes = std::max<uint64_t>(bytes / 2 * 2, 2);
  uint8_t *h = nullptr, *d = nullptr;
  cudaStream_t st[2] = {nullptr, nullptr};
  cudaEvent_t e0 = nullptr, e1 = nullptr, e2 = nullptr;
  auto cleanup = [&]() {
    if (st[0]) cudaStreamSynchronize(st[0]);
    if (st[1]) cudaStreamSynchronize(st[1]);
    if (h) cudaFreeHost(h);
    if (d) cudaFree(d);
    for (auto s : st) if (s) cudaStreamDestroy(s);
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    if (e2) cudaEventDestroy(e2);
  };
  try {
    PK_CK(cudaHostAlloc(reinterpret_cast<void**>(&h), bytes, cudaHostAllocDefault));
    std::memset(h, 1, bytes);
    PK_CK(cudaMalloc(reinterpret_cast<void**>(&d), bytes));
    PK_CK(cudaStreamCreateWithFlags(&st[0], cudaStreamNonBlocking));
    PK_CK(cudaStreamCreateWithFlags(&st[1], cudaStreamNonBlocking));
    PK_CK(cudaEventCreate(&e0));
    PK_CK(cudaEventCreate(&e1));
    uint64_t half = bytes / 2;
    PK_CK(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, st[0]));   // warm-up
    PK_CK(cudaStreamSynchronize(st[0]));
    PK_CK(cudaEventRecord(e0, st[0]));
    PK_CK(cudaStreamWaitEvent(st[1], e0, 0));
    for (int r = 0; r < reps; ++r) {
      PK_CK(cudaMemcpyAsync(d, h, half, cudaMemcpyHostToDevice, st[0]));
      PK_CK(cudaMemcpyAsync(d + half, h + half, bytes - half, cudaMemcpyHostToDevice, st[1]));
    }
    PK_CK(cudaEventCreate(&e2));
    PK_CK(cudaEventRecord(e2, st[1]));
    PK_CK(cudaStreamWaitEvent(st[0], e2, 0));
    PK_CK(cudaEventRecord(e1, st[0]));
    PK_CK(cudaEventSynchronize(e1));
    float ms = 0;
    PK_CK(cudaEventElapsedTime(&ms, e0, e1));
    cleanup();
    return double(bytes) * reps / (double(ms) * 1e-3) / 1e9;
  } catch (...) {
    cleanup();
    throw;
  }
}

}  // namespace cuda
}  // namespace paramkit
