// The CPU engine's diff pass (paramkit.diff): pairs of tensors, each side read from its file with the engines'
// pread layer, compared byte for byte and as float64 values in one pass (diff.hpp, stats.hpp).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine.hpp"
#include "paramkit/diff.hpp"

namespace paramkit {

// One pair: both sides' file index, byte offset, byte count and engine dtype id (a plain dtype, or a GGML
// block type of ggml_blocks.hpp); numel elements on each side, cut into pieces of `step` elements (whole GGML
// blocks of both sides). mode bit 0: compare the values; bit 1: compare the bytes first (same dtype and shape:
// a pair whose pieces all have equal bytes is bytes_equal and its values are not computed; if some piece
// differs, the equal ones are re-read for the sums). A bytes-only pair (mode 2) is given as U8 elements.
struct DiffTask {
  int file_a = -1, file_b = -1;
  uint64_t offset_a = 0, nbytes_a = 0, offset_b = 0, nbytes_b = 0;
  int dtype_a = 0, dtype_b = 0;
  uint64_t numel = 0, step = 1;
  int mode = 0;
};
constexpr int kDiffValues = 1, kDiffBytes = 2;

struct DiffResult {
  bool bytes_equal = false;   // kDiffBytes: every byte equal
  bool has_values = false;    // the sums and delta are set (kDiffValues and not bytes_equal)
  DiffSums sums;
  TensorResult delta;         // statistics of A - B as float64 (no quantiles)
};

struct DiffInfo { std::string isa; int threads = 0; uint64_t pieces = 0, reread = 0; };

// threads: 0 = default_threads(). progress(bytes of both sides done) about every 100 ms on the calling thread,
// false cancels (EngineCancelled). Results are identical for any thread count: every piece's sums depend on its
// bytes alone and are merged in piece order. std::invalid_argument for a malformed task, std::system_error for
// I/O errors (EIO for a truncated file).
std::vector<DiffResult> run_diff_engine(const std::vector<std::string>& files, const std::vector<DiffTask>& tasks,
                                        int threads, const std::function<bool(uint64_t)>& progress,
                                        DiffInfo* info = nullptr);

}  // namespace paramkit
