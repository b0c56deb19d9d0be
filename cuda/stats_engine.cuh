// The CUDA statistics engine behind paramkit._cuda.run: a ring of pinned host buffers filled by
// pread, copied on 2 streams, reduced by one work-list kernel with the shared PK_HD math.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>
#include "paramkit/stats.hpp"

namespace paramkit {
namespace cuda {

struct Task {
  int file = -1;                 // index into files, or -1 when `mem` holds the bytes
  uint64_t offset = 0, nbytes = 0, numel = 0;
  int dtype = 0;
  const uint8_t* mem = nullptr;
};

struct Options {
  bool quantiles = true;
  std::vector<double> levels;
  uint64_t ring_bytes = 32ull << 20;   // bytes per ring slot (pinned host + device)
  int slots = 3;                       // ring slots (>= 2), alternating over 2 streams
  int device = 0;
};

struct Info {
  uint64_t batches = 0, launches = 0;
  std::string device;
};

// progress(bytes_done) after each batch; false cancels (throws Cancelled). CUDA errors throw
// std::runtime_error with the CUDA error string; I/O errors std::system_error.
struct Cancelled {};
std::vector<TensorResult> run_stats(const std::vector<std::string>& files, const std::vector<Task>& tasks,
                                    const Options& opt, const std::function<bool(uint64_t)>& progress, Info* info);

// Pinned H2D copy ceiling: GB/s of repeated cudaMemcpyAsync of `bytes` from pinned memory on 2 streams.
double h2d_ceiling(uint64_t bytes, int reps);

}  // namespace cuda
}  // namespace paramkit
