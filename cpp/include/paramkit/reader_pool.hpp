// The reader pool of the cuda engine (host code only): reads a batch's ReadOps (paramkit/read_plan.hpp:
// file ranges, pieces of views, host memory) with the calling thread and helper threads that live as long
// as the run.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "paramkit/read_plan.hpp"

namespace paramkit {

// Reads a batch's segments (pread, or memcpy from host memory) with the calling thread and up to
// `helpers` threads that live as long as the run: no thread is created per batch (at tens of GB/s a
// 32 MiB batch takes about a millisecond, the cost of starting a few threads). The helpers start at
// the first batch worth sharing (device-resident input reads nothing and starts none). Every helper
// takes part in every shared batch, so run() returns only when no helper touches its ops any more.
class ReaderPool {
 public:
  // fail_hook: passed to read_op (a test aid: the CUDA emulator's injected read failures)
  explicit ReaderPool(int helpers, bool (*fail_hook)() = nullptr) : want_(std::max(0, helpers)), fail_hook_(fail_hook) {}
  ~ReaderPool() {
    { std::lock_guard<std::mutex> lk(m_); stop_ = true; }
    cv_work_.notify_all();
    for (auto& t : th_) t.join();
  }
  int readers() const { return want_ + 1; }

  // the batch's reads split into pieces of at most 8 MiB (at least 4 per reader when they are large)
  void run(const std::vector<ReadOp>& ops) {
    uint64_t total = 0;
    for (const ReadOp& r : ops) total += r.len;
    const uint64_t step = std::min<uint64_t>(8ull << 20, std::max<uint64_t>(1ull << 20,
                                             total / uint64_t(4 * readers()) / 65536 * 65536));
    split_.clear();
    for (const ReadOp& r : ops)
      for (uint64_t b = 0; b < r.len; b += step) {
        ReadOp s = r; s.off = r.off + b;   // a view op: a byte range of its plain form (65536-aligned steps: whole elements)
        s.len = std::min(step, r.len - b); s.dst = r.dst + b;
        if (r.mem) s.mem = r.mem + b;
        split_.push_back(s);
      }
    if (want_ == 0 || split_.size() < 2 || total < (1ull << 20)) {   // not worth waking anyone
      for (const ReadOp& r : split_) read_op(r, fail_hook_);
      return;
    }
    if (!started_) start();
    {
      std::lock_guard<std::mutex> lk(m_);
      next_ = 0; finished_ = 0; err_ = nullptr; ++gen_;
    }
    cv_work_.notify_all();
    work();
    std::unique_lock<std::mutex> lk(m_);
    cv_done_.wait(lk, [this] { return finished_ == helpers_; });
    if (err_) std::rethrow_exception(err_);
  }

 private:
  void start() {   // as many helpers as the system gives (fewer readers is not an error)
    started_ = true;
    try {
      th_.reserve(size_t(want_));
      for (int k = 0; k < want_; ++k) {
        th_.emplace_back([this] { loop(); });
        std::lock_guard<std::mutex> lk(m_);
        ++helpers_;      // a helper counts once loop() can see it: finished_ is compared with this
      }
    } catch (...) {}
  }
  void work() {
    try {
      for (size_t i; (i = next_.fetch_add(1)) < split_.size();) read_op(split_[i], fail_hook_);
    } catch (...) {
      std::lock_guard<std::mutex> lk(m_);
      if (!err_) err_ = std::current_exception();
      next_ = split_.size();   // the others stop after their current read
    }
  }
  void loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_work_.wait(lk, [&] { return stop_ || gen_ != seen; });
        if (stop_) return;
        seen = gen_;
      }
      work();
      std::lock_guard<std::mutex> lk(m_);
      if (++finished_ == helpers_) cv_done_.notify_one();
    }
  }

  const int want_;
  bool (*const fail_hook_)();
  bool started_ = false;
  std::vector<std::thread> th_;
  int helpers_ = 0;   // started helpers (guarded by m_)
  std::vector<ReadOp> split_;
  std::atomic<size_t> next_{0};
  std::mutex m_;
  std::condition_variable cv_work_, cv_done_;
  uint64_t gen_ = 0;
  int finished_ = 0;
  bool stop_ = false;
  std::exception_ptr err_;
};

}  // namespace paramkit
