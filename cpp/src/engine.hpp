// The CPU statistics engine: cuts tensors into fixed pieces, groups contiguous pieces into
// byte-range work units read once (pread into reused aligned buffers; a piece of a view is a unit of its
// own, read by paramkit/read_plan.hpp's ViewReader), runs the kernels on worker threads and merges
// each tensor's pieces in order, so results are bit-identical for any thread count.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>
#include "paramkit/host_threads.hpp"
#include "paramkit/quant.hpp"
#include "paramkit/read_plan.hpp"
#include "paramkit/stats.hpp"

namespace paramkit {

struct EngineTask {
  int file = -1;               // index into files, or -1 when `mem` holds the bytes
  uint64_t offset = 0;         // absolute byte offset in the file
  uint64_t nbytes = 0;
  uint64_t numel = 0;
  int dtype = 0;               // paramkit::DType
  const uint8_t* mem = nullptr;
  // quantization simulation (float dtypes): which schemes apply, and the shape facts they need
  uint32_t quant_mask = 0;     // bit s: apply EngineOptions::schemes[s]
  uint64_t row_len = 1;        // last dimension (groups run along it)
  uint64_t chan_len = 1;       // elements per output channel (numel / shape[0]) for int8_channel
  uint64_t piece_multiple = 1; // pieces of this tensor start at multiples of this many elements
  float tensor_absmax = NAN;   // finite absmax, for the per-tensor-scale schemes (second pass)
  // a strided or big-endian view of a storage in `file` (offset is then unused): read by its ViewReader
  std::shared_ptr<const ReadLayout> layout;
};

constexpr int kMaxSchemes = 16;

// Per-tensor quantization results: error sums per scheme (in EngineOptions::schemes order) and
// the finite absmax seen while quantizing (what a per-tensor-scale scheme needs next).
struct TensorQuant {
  QuantSums sums[kMaxSchemes] = {};
  double absmax_finite = 0;
};

struct EngineOptions {
  bool quantiles = true;
  int threads = 0;                         // 0: every core this process may use
  uint64_t chunk_bytes = 4ull << 20;       // piece size; independent of the thread count
  std::vector<double> levels;              // quantile levels, ascending
  bool stats = true;                       // false: a quantization-only pass
  std::vector<QuantSpec> schemes;          // at most kMaxSchemes
};

struct EngineOutput {
  std::vector<TensorResult> stats;
  std::vector<TensorQuant> quant;
};

struct EngineInfo {
  std::string isa;
  int threads = 0;
  uint64_t units = 0;
};

// progress(bytes_done) is called on the calling thread about every 100 ms; returning false
// cancels the run (the engine then throws EngineCancelled). I/O errors throw std::system_error with the
// errno (EIO when a file is shorter than its tasks, or ends early while it is read: truncated).
struct EngineCancelled {};
EngineOutput run_engine(const std::vector<std::string>& files, const std::vector<EngineTask>& tasks,
                        const EngineOptions& opt, const std::function<bool(uint64_t)>& progress,
                        EngineInfo* info = nullptr);

const char* active_isa();

}  // namespace paramkit
