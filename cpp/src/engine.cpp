// The CPU statistics engine (see engine.hpp): scheduling, I/O, per-tensor merging.
#include "engine.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <system_error>
#include <thread>

#include <unistd.h>

#include "kernels.hpp"
#include "paramkit/file_read.hpp"
#include "paramkit/ggml_blocks.hpp"

namespace paramkit {

namespace {

// Elements per block of the quantization pass (float32: 64 KiB, well inside L2)
constexpr uint64_t kQuantBlockElements = 16384;

struct Piece { uint32_t task, index; uint64_t begin, nbytes; };   // begin: byte offset inside the tensor
// offset: in the file, or for a view (view set) the piece's byte offset in the tensor's plain form
struct Unit { int file; uint64_t offset, nbytes; const uint8_t* mem; uint32_t first, count; ViewReader* view; };

struct Bin { uint32_t raw; uint64_t count; };

struct TaskState {
  uint32_t npieces = 0;
  std::atomic<uint32_t> left{0};
  std::mutex mu;
  std::unique_ptr<uint64_t[]> hist;   // merged histogram of a multi-piece tensor
  std::vector<PieceStats> pieces;     // wide dtypes: per-piece partials, merged in order
  std::vector<QuantSums> qpieces;     // [piece][scheme] error sums, merged in order
  std::vector<double> qabsmax;        // [piece] finite absmax of the quantized values
};


// Walk a dense raw-indexed histogram in value order.
template <class C>
void dense_bins(int dt, bool prefix, const C* h, std::vector<Bin>& out) {
  out.clear();
  int nb = prefix ? 65536 : (dtype_key_bits(dt) == 8 ? 256 : 65536);
  for (int key = 0; key < nb; ++key) {
    uint32_t raw = prefix ? float_unkey16(key) : small_unkey(dt, key);
    uint64_t c = h[raw];
    if (c) out.push_back({raw, c});
  }
}

// 8/16-bit dtypes are reduced through their exact bit-pattern histogram (exact quantiles need
// it), except bfloat16 and float16 without quantiles: their one-pass blocked SIMD kernel
// (h16_stats in kernels_impl.inl) beats the histogram's random scatter into 1 MiB of sub-histograms.
bool histogram_path(int dt, bool quantiles) { return dtype_is_small(dt) && (quantiles || (dt != BF16 && dt != F16)); }

}  // namespace

const char* active_isa() { return select_kernels().isa; }

EngineOutput run_engine(const std::vector<std::string>& files, const std::vector<EngineTask>& tasks,
                        const EngineOptions& opt, const std::function<bool(uint64_t)>& progress,
                        EngineInfo* info) {
  const Kernels& K = select_kernels();
  const int nq = int(std::min<size_t>(opt.levels.size(), kMaxQuantiles));
  const double* qs = opt.stats && opt.quantiles && nq > 0 ? opt.levels.data() : nullptr;
  const uint64_t cb = std::max<uint64_t>(64, opt.chunk_bytes / 64 * 64);
  const int ns = int(std::min<size_t>(opt.schemes.size(), kMaxSchemes));
  EngineOutput output;
  std::vector<TensorResult>& results = output.stats;
  results.resize(tasks.size());
  output.quant.resize(tasks.size());

  // --- open files (every read is bounds-checked against the size seen here; a file that shrinks later
  // makes a read end early, an EIO error: the data is always read into our own buffers, never mapped)
  std::vector<OpenedFile> fh;
  fh.reserve(files.size());
  std::vector<std::unique_ptr<ViewReader>> views;
  auto close_all = [&]() {
    for (auto& f : fh) close(f.fd);
  };
  try {
    for (const auto& f : files) fh.push_back(open_for_reading(f));
    std::vector<uint64_t> sizes;
    for (const auto& f : fh) sizes.push_back(f.size);
    for (const auto& t : tasks) {
      if (t.mem != nullptr) continue;
      if (t.file < 0 || size_t(t.file) >= files.size()) throw std::invalid_argument("task names a missing file");
      if (!t.layout) check_range_in_file(files[size_t(t.file)], sizes[size_t(t.file)], t.offset, t.nbytes);
    }
    views = view_readers(tasks, files, sizes);   // each view's span checked against its file
  } catch (...) {
    close_all();
    throw;
  }

  // --- cut into pieces (fixed by chunk size) and group contiguous pieces into units
  std::vector<Piece> pieces;
  std::vector<Unit> units;
  std::unique_ptr<TaskState[]> st(new TaskState[tasks.size()]);
  for (uint32_t t = 0; t < tasks.size(); ++t) {
    const EngineTask& T = tasks[t];
    const StorageUnit c = storage_unit(T.dtype);
    uint64_t es = c.bytes;                                        // bytes per element, or per block
    uint64_t pm_el = std::max<uint64_t>(1, T.piece_multiple);     // in elements: whole rows / groups
    uint64_t pm = pm_el / std::gcd(pm_el, c.elements);            // the same, in units (lcm / unit)
    // units per piece: a block type's piece holds about as many (dequantized) values as an F32 piece
    uint64_t pe = std::max<uint64_t>(1, c.ggml < 0 ? cb / es : cb / (4 * c.elements));
    pe = std::max<uint64_t>(pm, pe / pm * pm);
    uint64_t pb = pe * es;
    uint32_t np = T.nbytes == 0 ? 1 : uint32_t((T.nbytes + pb - 1) / pb);
    st[t].npieces = np;
    st[t].left.store(np);
    if (opt.stats && !histogram_path(c.values, qs != nullptr)) st[t].pieces.resize(np);
    if (T.quant_mask) { st[t].qpieces.resize(size_t(np) * size_t(ns)); st[t].qabsmax.assign(np, 0.0); }
    results[t].numel = T.numel;
    for (uint32_t k = 0; k < np; ++k) {
      uint64_t b = uint64_t(k) * pb, n = std::min(pb, T.nbytes - std::min(T.nbytes, b));
      ViewReader* v = views[t].get();
      uint64_t off = v ? b : T.offset + b;
      Unit* u = units.empty() ? nullptr : &units.back();
      bool join = u && !v && !u->view && T.mem == nullptr && u->mem == nullptr && u->file == T.file &&
                  u->offset + u->nbytes == off && u->nbytes + n <= std::max(cb, pb);
      if (!join) units.push_back({T.file, off, 0, T.mem ? T.mem + b : nullptr, uint32_t(pieces.size()), 0, v});
      units.back().nbytes += n;
      units.back().count += 1;
      pieces.push_back({t, k, b, n});
    }
  }

  uint64_t max_unit = 64;
  for (const Unit& u : units) max_unit = std::max(max_unit, (u.nbytes + 4095) / 4096 * 4096);
  int nthreads = opt.threads > 0 ? opt.threads : default_threads();
  nthreads = int(std::max<size_t>(1, std::min<size_t>(size_t(nthreads), units.size())));
  if (info) { info->isa = K.isa; info->threads = nthreads; info->units = units.size(); }

  std::atomic<size_t> next{0};
  std::atomic<uint64_t> bytes_done{0};
  std::atomic<bool> stop{false};
  std::mutex err_mu;
  std::exception_ptr error;   // the first failure of any worker
  std::atomic<int> running{nthreads};
  std::mutex done_mu; std::condition_variable done_cv;

  auto worker = [&]() {
    // worker-owned buffers: the read buffer and 4 interleaved sub-histograms
    std::unique_ptr<uint8_t, void (*)(void*)> buf(nullptr, std::free);
    std::vector<uint32_t> hist(4 * 65536, 0);
    std::vector<Bin> bins;
    bins.reserve(65536);
    auto fail = [&](std::exception_ptr e) {
      std::lock_guard<std::mutex> g(err_mu);
      if (!error) error = e;
      stop = true;
    };
    // Move the sub-histograms' counts out (as bins, or into a shared dense histogram) and zero them.
    // Sparse path for small pieces: revisit the piece's elements instead of every bin.
    auto drain = [&](int dt, bool prefix, const uint8_t* p, uint64_t n, uint64_t* into) {
      int nb = prefix ? 65536 : (dtype_key_bits(dt) == 8 ? 256 : 65536);
      uint32_t *h0 = hist.data(), *h1 = h0 + nb, *h2 = h1 + nb, *h3 = h2 + nb;
      bins.clear();
      if (n * 4 < uint64_t(nb)) {
        int es = dtype_size(dt);
        for (uint64_t i = 0; i < n; ++i) {
          uint32_t raw;
          if (prefix) {
            uint64_t r = 0; std::memcpy(&r, p + i * es, es);
            if (dtype_is_float(dt) && decode_to_double(dt, r) != decode_to_double(dt, r)) continue;  // NaN
            raw = f32_to_bits(wide_to_f32(dt, r)) >> 16;
          } else if (es == 1) raw = p[i];
          else { uint16_t r; std::memcpy(&r, p + 2 * i, 2); raw = r; }
          uint64_t c = uint64_t(h0[raw]) + h1[raw] + h2[raw] + h3[raw];
          if (!c) continue;
          h0[raw] = h1[raw] = h2[raw] = h3[raw] = 0;
          if (into) into[raw] += c; else bins.push_back({raw, c});
        }
        if (!into) {
          std::sort(bins.begin(), bins.end(), [&](const Bin& a, const Bin& b) {
            uint32_t ka = prefix ? float_sort_key16(a.raw) : small_key(dt, a.raw);
            uint32_t kb = prefix ? float_sort_key16(b.raw) : small_key(dt, b.raw);
            return ka < kb;
          });
        }
      } else if (prefix) {   // the wide kernels (K.wide's qhist) fill the first sub-histogram only
        for (int raw = 0; raw < nb; ++raw) {
          const uint32_t c = h0[raw];
          if (!c) continue;
          if (into) into[raw] += c;
          h0[raw] = 0;
        }
      } else {
        for (int raw = 0; raw < nb; ++raw) {
          uint64_t c = uint64_t(h0[raw]) + h1[raw] + h2[raw] + h3[raw];
          if (c && into) into[raw] += c;
          h0[raw] = h1[raw] = h2[raw] = h3[raw] = 0;
          (void)c;
        }
        if (!into) {
          // not reached: dense single-piece tensors go through a temporary dense copy below
        }
      }
    };
    std::vector<uint64_t> dense_tmp;
    std::vector<float> fbuf;   // a piece decoded to float32 for the quantization schemes
    std::vector<float> dequant;   // a GGML block piece dequantized to float32

    for (;;) {
      if (stop.load(std::memory_order_relaxed)) break;
      size_t ui = next.fetch_add(1);
      if (ui >= units.size()) break;
      const Unit& u = units[ui];
      const uint8_t* base;
      if (u.mem) base = u.mem;
      else {
        if (!buf) {
          void* m = nullptr;
          if (posix_memalign(&m, 4096, max_unit) != 0) {
            fail(std::make_exception_ptr(std::system_error(ENOMEM, std::generic_category(), "cannot allocate the read buffer")));
            break;
          }
          buf.reset(static_cast<uint8_t*>(m));
        }
        try {
          read_op({fh[size_t(u.file)].fd, &files[size_t(u.file)], u.offset, u.nbytes, buf.get(), nullptr, u.view});
        } catch (...) {
          fail(std::current_exception());
          break;
        }
        base = buf.get();
      }
      uint64_t pos = 0;
      for (uint32_t k = 0; k < u.count; ++k) {
        const Piece& pc = pieces[u.first + k];
        const EngineTask& T = tasks[pc.task];
        TaskState& S = st[pc.task];
        const uint8_t* p = base + pos;
        pos += pc.nbytes;
        const StorageUnit c = storage_unit(T.dtype);
        const int dt = c.values;
        uint64_t n = pc.nbytes / c.bytes * c.elements;
        bool small = opt.stats && histogram_path(dt, qs != nullptr);
        bool want_hist = opt.stats && (small || qs != nullptr);
        bool prefix = !small;
        int nb = prefix ? 65536 : (dtype_key_bits(dt) == 8 ? 256 : 65536);
        // a GGML piece whose dequantized values nothing reads again (no quantization schemes, no sparse drain of
        // its histogram) gets its statistics dequantized block by block (K.ggml_stats, the same bits); any
        // other becomes a whole float32 piece and runs below as an F32 one
        const bool fused_ggml = c.ggml >= 0 && opt.stats && !T.quant_mask && !(want_hist && n * 4 < uint64_t(nb));
        if (c.ggml >= 0 && !fused_ggml) {
          dequant.resize(n);
          K.dequantize(c.ggml, p, size_t(pc.nbytes / c.bytes), dequant.data());
          p = reinterpret_cast<const uint8_t*>(dequant.data());
        }
        if (opt.stats) {
          if (fused_ggml) {
            PieceStats ps;
            K.ggml_stats(c.ggml, p, size_t(pc.nbytes / c.bytes), ps, qs ? hist.data() : nullptr);
            S.pieces[pc.index] = ps;
          } else if (small) {
            if (dtype_key_bits(dt) == 8) K.hist8(p, n, hist.data()); else K.hist16(p, n, hist.data());
          } else {
            PieceStats ps;
            K.wide(dt, p, n, ps, qs ? hist.data() : nullptr);
            S.pieces[pc.index] = ps;
          }
          if (want_hist) {
            if (S.npieces == 1) {
              if (n * 4 < uint64_t(nb)) drain(dt, prefix, p, n, nullptr);
              else {
                dense_tmp.assign(nb, 0);
                drain(dt, prefix, p, n, dense_tmp.data());
                dense_bins(dt, prefix, dense_tmp.data(), bins);
              }
            } else {
              std::lock_guard<std::mutex> g(S.mu);
              if (!S.hist) S.hist.reset(new uint64_t[nb]());
              drain(dt, prefix, p, n, S.hist.get());
            }
          }
        }
        if (T.quant_mask) {   // simulated quantization of this piece, every requested scheme
          // in cache-sized blocks that start at multiples of piece_multiple (whole rows, channels
          // and groups, like the pieces themselves): each block is decoded once and stays in L2
          // while every scheme runs over it
          const uint64_t pm = std::max<uint64_t>(T.piece_multiple, 1);
          const uint64_t blk = std::max<uint64_t>(pm, kQuantBlockElements / pm * pm);
          QuantSums* qout = &S.qpieces[size_t(pc.index) * size_t(ns)];
          for (int sc = 0; sc < ns; ++sc) quant_sums_clear(qout[sc]);
          float am = 0;
          const size_t esz = size_t(dtype_size(dt));
          for (uint64_t b = 0; b < n; b += blk) {
            const uint64_t m = std::min(blk, n - b);
            fbuf.resize(m);
            QuantSums base;
            float a = K.decode_for_quant(dt, p + b * esz, m, fbuf.data(), base);
            am = a > am ? a : am;
            for (int sc = 0; sc < ns; ++sc) {
              if (!(T.quant_mask >> sc & 1u)) continue;
              QuantSpec sp = opt.schemes[size_t(sc)];
              if (quant_kind_needs_tensor_absmax(sp.kind)) {
                if (T.tensor_absmax != T.tensor_absmax) continue;   // scale not known yet: second pass
                sp.tensor_absmax = T.tensor_absmax;
              }
              K.quant(sp, T.row_len, T.chan_len, fbuf.data(), m, &base, qout[sc]);
            }
          }
          S.qabsmax[pc.index] = am;
        }
        bytes_done.fetch_add(pc.nbytes, std::memory_order_relaxed);
        if (S.left.fetch_sub(1) == 1) {   // last piece of this tensor: finalize it
          TensorResult& R = results[pc.task];
          R.numel = T.numel;
          if (opt.stats) {
            if (S.npieces > 1 && want_hist) { dense_bins(dt, prefix, S.hist.get(), bins); S.hist.reset(); }
            if (small) {
              finalize_small(dt, bins.data(), int(bins.size()), qs, qs ? nq : 0, R);
              R.numel = T.numel;
            } else {
              PieceStats all = S.pieces[0];
              for (uint32_t j = 1; j < S.npieces; ++j) merge_piece(all, S.pieces[j]);
              finish_piece(dt, R, all);
              if (qs) finalize_prefix_quantiles(bins.data(), int(bins.size()), qs, nq, all.nonnan, R);
              std::vector<PieceStats>().swap(S.pieces);
            }
            if (!qs) R.nq = 0;
          }
          if (T.quant_mask) {
            TensorQuant& Q = output.quant[pc.task];
            for (uint32_t j = 0; j < S.npieces; ++j) {
              Q.absmax_finite = S.qabsmax[j] > Q.absmax_finite ? S.qabsmax[j] : Q.absmax_finite;
              for (int sc = 0; sc < ns; ++sc) merge_quant_sums(Q.sums[sc], S.qpieces[size_t(j) * size_t(ns) + size_t(sc)]);
            }
            std::vector<QuantSums>().swap(S.qpieces);
          }
          R.done = true;
        }
      }
    }
    if (running.fetch_sub(1) == 1) { std::lock_guard<std::mutex> g(done_mu); done_cv.notify_all(); }
  };

  std::vector<std::thread> pool;
  pool.reserve(size_t(nthreads));
  for (int i = 0; i < nthreads; ++i) pool.emplace_back(worker);
  bool cancelled = false;
  {
    std::unique_lock<std::mutex> lk(done_mu);
    while (running.load() > 0) {
      done_cv.wait_for(lk, std::chrono::milliseconds(100));
      if (running.load() == 0) break;
      if (progress && !cancelled) {
        lk.unlock();
        bool ok = progress(bytes_done.load());
        lk.lock();
        if (!ok) { cancelled = true; stop = true; }
      }
    }
  }
  for (auto& th : pool) th.join();
  close_all();
  if (cancelled) throw EngineCancelled{};
  if (error) std::rethrow_exception(error);
  // the last report too: an exception raised there (or Ctrl-C) must not be lost
  if (progress && !progress(bytes_done.load())) throw EngineCancelled{};
  return output;
}

}  // namespace paramkit
