// The CUDA engine behind paramkit._cuda: a ring of pinned host buffers filled by pread, copied on
// 2 streams, reduced by work-list kernels (statistics and simulated quantization) with the PK_HD math.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>
#include "paramkit/quant.hpp"
#include "paramkit/read_plan.hpp"
#include "paramkit/stats.hpp"

namespace paramkit {
namespace cuda {

constexpr int kMaxSchemes = 16;   // as the cpu engine (cpp/src/engine.hpp)

struct Task {
  int file = -1;                 // index into files, or -1 when `mem` or `dev` holds the bytes
  uint64_t offset = 0, nbytes = 0, numel = 0;
  int dtype = 0;
  const uint8_t* mem = nullptr;  // host bytes (copied through the ring)
  const uint8_t* dev = nullptr;  // device bytes, 16-byte aligned (reduced where they are; statistics only)
  // simulated quantization, as paramkit._core's EngineTask: bit s applies Options::schemes[s]
  uint32_t quant_mask = 0;
  uint64_t row_len = 1, chan_len = 1, piece_multiple = 1;
  float tensor_absmax = NAN;     // known finite absmax (a re-read pass), NaN: find it in this pass
  // a strided or big-endian view of a storage in `file` (offset is then unused): read by its ViewReader
  std::shared_ptr<const ReadLayout> layout;
};

struct Options {
  bool stats = true;
  bool quantiles = true;
  std::vector<double> levels;
  std::vector<QuantSpec> schemes;      // at most kMaxSchemes
  uint64_t ring_bytes = 32ull << 20;   // bytes per ring slot (pinned host + device)
  int slots = 3;                       // ring slots (>= 2), alternating over 2 streams
  int readers = 0;                     // threads that read a batch (pread); 0: one per core, at most 8
  int device = 0;
  // device memory that may keep tensors with per-tensor-scale schemes (int8_tensor, fp8_e4m3)
  // for their second pass; also capped at half the memory free after the ring is allocated
  uint64_t hold_bytes = 8ull << 30;
};

// Per-task quantization results: error sums per scheme (Options::schemes order), the finite
// absmax of the float32-decoded values, and whether the per-tensor-scale schemes were completed
// on the device (held = true) or still need a pass with tensor_absmax set (held = false).
struct TaskQuant {
  QuantSums sums[kMaxSchemes] = {};
  float absmax = 0;
  bool held = false;
};

struct Output {
  std::vector<TensorResult> stats;
  std::vector<TaskQuant> quant;
};

struct Info {
  uint64_t batches = 0, launches = 0, held = 0, held_bytes = 0, hold_capacity = 0;
  int readers = 0;
  std::string device;
};

// progress(bytes_done) after each batch; false cancels (throws Cancelled). CUDA errors throw
// std::runtime_error with the CUDA error string; I/O errors std::system_error; a quantized tensor
// whose piece_multiple does not fit one ring slot std::invalid_argument.
struct Cancelled {};
Output run(const std::vector<std::string>& files, const std::vector<Task>& tasks, const Options& opt,
           const std::function<bool(uint64_t)>& progress, Info* info);

// Fake quantization of a float array already on the device (DLPack input): x has dtype `dtype`
// (a float DType), rows*row_len elements, 16-byte aligned. Groups as paramkit._core.fake_quantize
// (rows = channels for int8_channel, rows of groups, nf4 over the flattened array). When out is not
// null the dequantized float32 values are written there (device memory, rows*row_len floats).
// tensor_absmax < 0: computed on the device. Returns the error sums.
QuantSums quant_device_array(const uint8_t* x, int dtype, int64_t rows, int64_t row_len, QuantSpec spec,
                             float* out, int device);

// Pinned H2D copy ceiling: GB/s of repeated cudaMemcpyAsync of `bytes` from pinned memory on 2 streams.
double h2d_ceiling(uint64_t bytes, int reps);

// Device-resident timings for the benchmark: the statistics kernel over `bytes` of `dtype` already on
// the device (kernel only: no host merge), and a device-to-device copy of the same bytes; GB/s of
// `bytes` for each (best of reps).
struct DeviceBench { double kernel_gbps = 0, d2d_gbps = 0, kernel_ms = 0, d2d_ms = 0; };
DeviceBench device_bench(uint64_t bytes, int dtype, bool quantiles, int reps, int device);

// Allocation helpers for results handed to Python (DLPack capsules free with free_device).
void* alloc_device(uint64_t bytes, int device);
void free_device(void* p);

}  // namespace cuda
}  // namespace paramkit
