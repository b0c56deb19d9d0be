// The CPU engine's diff pass (see diff_engine.hpp): fixed pieces of each pair, read with pread on worker
// threads, compared byte for byte, then as float64 values (diff.hpp per element, stats.hpp's F64 kernel for
// A - B; pairs of float32 values in one fused pass, kernels_impl.inl diff_f32), merged per pair in piece order.
#include "diff_engine.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>

#include <unistd.h>

#include "kernels.hpp"
#include "paramkit/file_read.hpp"
#include "paramkit/ggml_blocks.hpp"

namespace paramkit {

namespace {

// Value pairs per block of the value loop: three float64 blocks of 16 KiB stay in L1/L2 while the block's sums
// and the statistics of its differences are taken.
constexpr size_t kDiffBlock = 2048;

struct DPiece { uint32_t task; uint64_t begin, count; };   // elements [begin, begin + count) of both sides
struct PieceOut { bool equal = false, computed = false; DiffSums sums; PieceStats delta; };

// Byte range of elements [begin, begin + count) of a side of dtype dt (whole blocks of a GGML block type).
struct Range { uint64_t off, len; };
Range side_range(int dt, uint64_t offset, uint64_t begin, uint64_t count) {
  const StorageUnit u = storage_unit(dt);
  return {offset + begin / u.elements * u.bytes, count / u.elements * u.bytes};
}

void check_side(const std::vector<OpenedFile>& fh, const std::vector<std::string>& files, int file, int dt,
                uint64_t offset, uint64_t nbytes, uint64_t numel, uint64_t step) {
  if (file < 0 || size_t(file) >= files.size()) throw std::invalid_argument("diff task names a missing file");
  if ((dt < 0 || dt >= DTYPE_COUNT) && ggml_type_of_dtype(dt) < 0) throw std::invalid_argument("bad dtype id");
  const StorageUnit u = storage_unit(dt);
  if (numel % u.elements || nbytes != numel / u.elements * u.bytes)
    throw std::invalid_argument("nbytes != numel * element size (whole blocks of a GGML block type)");
  if (step % u.elements) throw std::invalid_argument("diff step is not a whole number of blocks");
  check_range_in_file(files[size_t(file)], fh[size_t(file)].size, offset, nbytes);
}

// Runs work(i, w) for i in [0, n) on `nthreads` threads (w: the worker's number, 0..nthreads-1) (the calling one waits and reports progress about every
// 100 ms); the first exception stops the others and is rethrown; progress returning false cancels.
template <class Work>
void parallel(size_t n, int nthreads, Work&& work, const std::atomic<uint64_t>& bytes_done,
              const std::function<bool(uint64_t)>& progress) {
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  std::exception_ptr error;
  std::mutex mu;
  std::condition_variable cv;
  int running = nthreads;
  auto worker = [&](int w) {
    try {
      for (size_t i; !stop.load(std::memory_order_relaxed) && (i = next.fetch_add(1)) < n;) work(i, w);
    } catch (...) {
      std::lock_guard<std::mutex> g(mu);
      if (!error) error = std::current_exception();
      stop = true;
    }
    std::lock_guard<std::mutex> g(mu);
    if (--running == 0) cv.notify_all();
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < nthreads; ++t) pool.emplace_back(worker, t);
  bool cancelled = false;
  {
    std::unique_lock<std::mutex> lk(mu);
    while (running > 0) {
      cv.wait_for(lk, std::chrono::milliseconds(100));
      if (running == 0 || !progress || cancelled) continue;
      lk.unlock();
      const bool ok = progress(bytes_done.load());
      lk.lock();
      if (!ok) { cancelled = true; stop = true; }
    }
  }
  for (auto& th : pool) th.join();
  if (cancelled) throw EngineCancelled{};
  if (error) std::rethrow_exception(error);
}

}  // namespace

std::vector<DiffResult> run_diff_engine(const std::vector<std::string>& files, const std::vector<DiffTask>& tasks,
                                        int threads, const std::function<bool(uint64_t)>& progress, DiffInfo* info) {
  const Kernels& K = select_kernels();
  std::vector<OpenedFile> fh;
  struct Closer { std::vector<OpenedFile>& f; ~Closer() { for (auto& x : f) close(x.fd); } } closer{fh};
  for (const auto& f : files) fh.push_back(open_for_reading(f));

  // pieces: fixed by each task's step, never by the thread count
  std::vector<DPiece> pieces;
  std::vector<uint32_t> first(tasks.size() + 1, 0);
  for (uint32_t t = 0; t < tasks.size(); ++t) {
    const DiffTask& T = tasks[t];
    if (T.step == 0) throw std::invalid_argument("diff step must be positive");
    if (!(T.mode & (kDiffValues | kDiffBytes))) throw std::invalid_argument("diff task compares nothing");
    check_side(fh, files, T.file_a, T.dtype_a, T.offset_a, T.nbytes_a, T.numel, T.step);
    check_side(fh, files, T.file_b, T.dtype_b, T.offset_b, T.nbytes_b, T.numel, T.step);
    first[t] = uint32_t(pieces.size());
    for (uint64_t b = 0; b < T.numel; b += T.step) pieces.push_back({t, b, std::min(T.step, T.numel - b)});
  }
  first[tasks.size()] = uint32_t(pieces.size());
  std::vector<PieceOut> out(pieces.size());

  uint64_t max_bytes = 64;
  for (const DPiece& p : pieces) {
    const DiffTask& T = tasks[p.task];
    max_bytes = std::max({max_bytes, side_range(T.dtype_a, 0, 0, p.count).len, side_range(T.dtype_b, 0, 0, p.count).len});
  }
  int nthreads = threads > 0 ? threads : default_threads();
  nthreads = int(std::max<size_t>(1, std::min<size_t>(size_t(nthreads), pieces.size())));
  std::atomic<uint64_t> bytes_done{0};

  // the buffers of each worker thread (allocated by it on first use)
  struct Buffers { std::vector<uint8_t> ra, rb; std::vector<float> fa, fb, xa, xb; std::vector<double> da, db, dd; };
  std::vector<Buffers> bufs(static_cast<size_t>(nthreads));
  auto buffers = [&](int w) -> Buffers& {
    Buffers& b = bufs[size_t(w)];
    if (b.ra.empty()) {
      b.ra.resize(max_bytes); b.rb.resize(max_bytes);
      b.da.resize(kDiffBlock); b.db.resize(kDiffBlock); b.dd.resize(kDiffBlock);
      b.xa.resize(kDiffBlock); b.xb.resize(kDiffBlock);
    }
    return b;
  };

  // the values of one side of a piece: the raw bytes as they are, or a GGML block type's float32 values
  auto side_values = [&](int dt, const uint8_t* raw, uint64_t len, std::vector<float>& f, int& vdt) -> const uint8_t* {
    const StorageUnit u = storage_unit(dt);
    vdt = u.values;
    if (u.ggml < 0) return raw;
    f.resize(size_t(len / u.bytes * u.elements));
    K.dequantize(u.ggml, raw, size_t(len / u.bytes), f.data());
    return reinterpret_cast<const uint8_t*>(f.data());
  };

  auto do_piece = [&](size_t i, int w, bool force) {
    const DPiece& p = pieces[i];
    const DiffTask& T = tasks[p.task];
    PieceOut& o = out[i];
    Buffers& B = buffers(w);
    const Range a = side_range(T.dtype_a, T.offset_a, p.begin, p.count), b = side_range(T.dtype_b, T.offset_b, p.begin, p.count);
    pread_fully(fh[size_t(T.file_a)].fd, files[size_t(T.file_a)], B.ra.data(), a.len, a.off);
    pread_fully(fh[size_t(T.file_b)].fd, files[size_t(T.file_b)], B.rb.data(), b.len, b.off);
    if (!force) bytes_done.fetch_add(a.len + b.len, std::memory_order_relaxed);
    if (T.mode & kDiffBytes) o.equal = a.len == b.len && std::memcmp(B.ra.data(), B.rb.data(), a.len) == 0;
    if (!(T.mode & kDiffValues) || (o.equal && !force)) return;
    int dta, dtb;
    const uint8_t* pa = side_values(T.dtype_a, B.ra.data(), a.len, B.fa, dta);
    const uint8_t* pb = side_values(T.dtype_b, B.rb.data(), b.len, B.fb, dtb);
    const size_t ea = size_t(dtype_size(dta)), eb = size_t(dtype_size(dtb));
    o.sums = DiffSums{};
    o.delta = PieceStats{};
    auto is_f32_value = [](int dt) { return dt == F32 || dt == BF16 || dt == F16; };
    const bool fused = is_f32_value(dta) && is_f32_value(dtb);
    for (uint64_t s = 0; s < p.count; s += kDiffBlock) {
      const size_t m = size_t(std::min<uint64_t>(kDiffBlock, p.count - s));
      if (fused) {   // float32 values on both sides: one pass (a block with a NaN or Inf goes the long way)
        K.to_f32(dta, pa + s * ea, m, B.xa.data());
        K.to_f32(dtb, pb + s * eb, m, B.xb.data());
        if (K.diff_f32(B.xa.data(), B.xb.data(), m, o.sums, o.delta)) continue;
      }
      K.to_f64(dta, pa + s * ea, m, B.da.data());
      K.to_f64(dtb, pb + s * eb, m, B.db.data());
      DiffSums bs;
      K.diff(B.da.data(), B.db.data(), m, B.dd.data(), bs);
      merge_diff_sums(o.sums, bs);
      PieceStats ps;
      K.wide(F64, reinterpret_cast<const uint8_t*>(B.dd.data()), m, ps, nullptr);
      merge_piece(o.delta, ps);
    }
    o.computed = true;
  };

  parallel(pieces.size(), nthreads, [&](size_t i, int w) { do_piece(i, w, false); }, bytes_done, progress);

  // pairs that turned out to differ: their pieces with equal bytes, read again for the sums
  std::vector<size_t> again;
  std::vector<DiffResult> res(tasks.size());
  for (uint32_t t = 0; t < tasks.size(); ++t) {
    DiffResult& R = res[t];
    const DiffTask& T = tasks[t];
    R.bytes_equal = (T.mode & kDiffBytes) != 0 && T.nbytes_a == T.nbytes_b;
    for (uint32_t k = first[t]; k < first[t + 1]; ++k) R.bytes_equal = R.bytes_equal && out[k].equal;
    R.has_values = (T.mode & kDiffValues) && !R.bytes_equal;
    if (R.has_values)
      for (uint32_t k = first[t]; k < first[t + 1]; ++k)
        if (!out[k].computed) again.push_back(k);
  }
  if (!again.empty())
    parallel(again.size(), int(std::min<size_t>(size_t(nthreads), again.size())),
             [&](size_t j, int w) { do_piece(again[j], w, true); }, bytes_done, progress);

  for (uint32_t t = 0; t < tasks.size(); ++t) {
    DiffResult& R = res[t];
    R.delta.numel = tasks[t].numel;
    if (!R.has_values) continue;
    PieceStats all;
    for (uint32_t k = first[t]; k < first[t + 1]; ++k) {
      merge_diff_sums(R.sums, out[k].sums);
      merge_piece(all, out[k].delta);
    }
    finish_piece(F64, R.delta, all);
    R.delta.nq = 0;
  }
  if (info) { info->isa = K.isa; info->threads = nthreads; info->pieces = pieces.size(); info->reread = again.size(); }
  if (progress && !progress(bytes_done.load())) throw EngineCancelled{};
  return res;
}

}  // namespace paramkit
