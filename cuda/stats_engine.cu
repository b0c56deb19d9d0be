// The CUDA statistics engine (see stats_engine.cuh): pinned ring + 2 streams + one work-list kernel
// whose per-block partials use the CPU's PK_HD math (dtype.hpp, stats.hpp) and are merged on the host.
#include "stats_engine.cuh"

#include <cuda_runtime.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <system_error>
#include <thread>

namespace paramkit {
namespace cuda {

namespace {

#define PK_CK(call)                                                                                  \
  do {                                                                                               \
    cudaError_t e_ = (call);                                                                         \
    if (e_ != cudaSuccess)                                                                           \
      throw std::runtime_error(std::string("CUDA error in ") + #call + ": " + cudaGetErrorName(e_) + \
                               ": " + cudaGetErrorString(e_));                                      \
  } while (0)

constexpr int kThreads = 256;
constexpr uint32_t kBlockElems = 32768;   // elements per work item (one CUDA block each)
constexpr int kHistSlots = 64;            // tensors with a histogram per batch
constexpr int kMaxWork = 8192;            // work items per batch
constexpr uint32_t kBins = 65536;

struct Work {
  uint64_t off;    // byte offset in the slot's buffer (16-aligned at segment starts)
  uint32_t n;      // elements
  int dt;
  int hslot;       // histogram slot, -1: none
  int pad;
};

// ---------------------------------------------------------------- device side

struct Acc {   // one thread's (then the block's) partial of a wide item
  unsigned long long nan, pinf, ninf, zer, sub, fin;
  double fmn, fmx, sum;
  long long imn, imx;
  unsigned long long umn, umx;
};

__device__ __forceinline__ uint64_t load_raw(const uint8_t* p, int es, uint32_t i) {
  if (es == 8) return reinterpret_cast<const unsigned long long*>(p)[i];
  return reinterpret_cast<const uint32_t*>(p)[i];
}

__device__ __forceinline__ void combine(Acc& a, const Acc& b) {
  a.nan += b.nan; a.pinf += b.pinf; a.ninf += b.ninf; a.zer += b.zer; a.sub += b.sub; a.fin += b.fin;
  a.fmn = b.fmn < a.fmn ? b.fmn : a.fmn; a.fmx = b.fmx > a.fmx ? b.fmx : a.fmx;
  a.sum += b.sum;
  a.imn = b.imn < a.imn ? b.imn : a.imn; a.imx = b.imx > a.imx ? b.imx : a.imx;
  a.umn = b.umn < a.umn ? b.umn : a.umn; a.umx = b.umx > a.umx ? b.umx : a.umx;
}

// fixed-shape tree reduction: bit-identical run to run
__device__ double block_sum(double v, double* sh) {
  int t = threadIdx.x;
  sh[t] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) sh[t] += sh[t + s];
    __syncthreads();
  }
  double r = sh[0];
  __syncthreads();
  return r;
}
__device__ double block_max(double v, double* sh) {
  int t = threadIdx.x;
  sh[t] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) sh[t] = sh[t + s] > sh[t] ? sh[t + s] : sh[t];
    __syncthreads();
  }
  double r = sh[0];
  __syncthreads();
  return r;
}

// 8/16-bit dtypes: the exact bit-pattern histogram (16-byte loads; runs of equal codes in a
// thread's 16 bytes are added once). Everything else follows on the host from finalize_small.
__device__ void small_item(const uint8_t* p, uint32_t n, int es, uint32_t* h) {
  __shared__ uint32_t h8[256];
  if (es == 1) {
    for (int i = threadIdx.x; i < 256; i += kThreads) h8[i] = 0;
    __syncthreads();
  }
  uint32_t per = 16 / es, nv = n / per;
  const uint4* v = reinterpret_cast<const uint4*>(p);
  for (uint32_t i = threadIdx.x; i < nv; i += kThreads) {
    uint4 q = v[i];
    uint32_t w[4] = {q.x, q.y, q.z, q.w};
    if (es == 1) {
      for (int k = 0; k < 16; ++k) atomicAdd(&h8[(w[k >> 2] >> (8 * (k & 3))) & 0xFFu], 1u);
    } else {
      uint32_t prev = w[0] & 0xFFFFu, c = 0;
      for (int k = 0; k < 8; ++k) {
        uint32_t r = (w[k >> 1] >> (16 * (k & 1))) & 0xFFFFu;
        if (r == prev) { ++c; continue; }
        atomicAdd(h + prev, c);
        prev = r; c = 1;
      }
      atomicAdd(h + prev, c);
    }
  }
  for (uint32_t i = nv * per + threadIdx.x; i < n; i += kThreads) {
    uint32_t r = es == 1 ? uint32_t(p[i]) : uint32_t(reinterpret_cast<const uint16_t*>(p)[i]);
    if (es == 1) atomicAdd(&h8[r], 1u); else atomicAdd(h + r, 1u);
  }
  if (es == 1) {
    __syncthreads();
    for (int i = threadIdx.x; i < 256; i += kThreads)
      if (h8[i]) atomicAdd(h + i, h8[i]);
  }
}

// 32/64-bit dtypes: exact counts and extremes, and a corrected two-pass mean / M2 of the block,
// written as a PieceStats (the same struct and field meaning as the CPU kernels' pieces).
__device__ void wide_item(const uint8_t* p, uint32_t n, int dt, uint32_t* h, PieceStats* out) {
  __shared__ Acc sh[kThreads];
  __shared__ double shd[kThreads];
  const int es = dtype_size(dt);
  const bool fl = dtype_is_float(dt), sg = dtype_is_signed_int(dt);
  double f1 = 1.0, f2 = 1.0;
  int e = 0;
  if (dt == F64) {   // scale by 2^-e (e of the finite absmax) so sums neither overflow nor underflow
    double am = 0;
    for (uint32_t i = threadIdx.x; i < n; i += kThreads) {
      double x = decode_to_double(F64, load_raw(p, 8, i)), a = fabs(x);
      am = (a > am && a - a == 0) ? a : am;
    }
    am = block_max(am, shd);
    if (am > 0) {
      frexp(am, &e);
      f1 = ldexp(1.0, -(e / 2));
      f2 = ldexp(1.0, -(e - e / 2));
    }
  }
  Acc a;
  a.nan = a.pinf = a.ninf = a.zer = a.sub = a.fin = 0;
  a.fmn = INFINITY; a.fmx = -INFINITY; a.sum = 0;
  a.imn = INT64_MAX; a.imx = INT64_MIN; a.umn = UINT64_MAX; a.umx = 0;
  for (uint32_t i = threadIdx.x; i < n; i += kThreads) {
    uint64_t raw = load_raw(p, es, i);
    if (fl) {
      double v = decode_to_double(dt, raw);
      bool isn = v != v, fin = v - v == 0;
      a.nan += isn;
      a.pinf += !isn && !fin && v > 0;
      a.ninf += !isn && !fin && v < 0;
      a.zer += v == 0;
      a.sub += raw_is_subnormal(dt, raw);
      a.fmn = v < a.fmn ? v : a.fmn;
      a.fmx = v > a.fmx ? v : a.fmx;
      a.fin += fin;
      a.sum += fin ? v * f1 * f2 : 0.0;
      if (h && !isn) atomicAdd(h + (f32_to_bits(wide_to_f32(dt, raw)) >> 16), 1u);
    } else {
      a.zer += raw == 0;
      if (sg) {
        long long x = dt == I32 ? (long long)int32_t(uint32_t(raw)) : (long long)raw;
        a.imn = x < a.imn ? x : a.imn; a.imx = x > a.imx ? x : a.imx;
      } else {
        a.umn = raw < a.umn ? raw : a.umn; a.umx = raw > a.umx ? raw : a.umx;
      }
      a.fin += 1;
      a.sum += decode_to_double(dt, raw);
      if (h) atomicAdd(h + (f32_to_bits(wide_to_f32(dt, raw)) >> 16), 1u);
    }
  }
  int t = threadIdx.x;
  sh[t] = a;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) combine(sh[t], sh[t + s]);
    __syncthreads();
  }
  Acc r = sh[0];
  __syncthreads();
  double nfin = double(r.fin), mean = nfin > 0 ? r.sum / nfin : 0.0, s1 = 0, s2 = 0;
  if (nfin > 0) {
    for (uint32_t i = threadIdx.x; i < n; i += kThreads) {
      uint64_t raw = load_raw(p, es, i);
      double v = decode_to_double(dt, raw);
      double d = v - v == 0 ? v * f1 * f2 - mean : 0.0;
      s1 += d; s2 += d * d;
    }
  }
  s1 = block_sum(s1, shd);
  s2 = block_sum(s2, shd);
  if (t == 0) {
    PieceStats ps;
    ps.nan = r.nan; ps.posinf = r.pinf; ps.neginf = r.ninf; ps.zeros = r.zer; ps.subnormal = r.sub;
    ps.nonnan = n - r.nan;
    if (fl) { ps.fmin = r.fmn; ps.fmax = r.fmx; }
    else if (sg) { if (n) { ps.imin = r.imn; ps.imax = r.imx; } }
    else if (n) { ps.umin = r.umn; ps.umax = r.umx; }
    if (nfin > 0) {
      ps.mom.n = nfin; ps.mom.mean = mean + s1 / nfin;
      ps.mom.m2 = s2 - s1 * s1 / nfin;
      if (ps.mom.m2 < 0) ps.mom.m2 = 0;
      ps.mom.exp = e;
    }
    *out = ps;
  }
}

__global__ void __launch_bounds__(kThreads) stats_kernel(const uint8_t* buf, const Work* work, PieceStats* part,
                                                         uint32_t* hist) {
  const Work w = work[blockIdx.x];
  uint32_t* h = w.hslot >= 0 ? hist + size_t(w.hslot) * kBins : nullptr;
  if (dtype_is_small(w.dt)) small_item(buf + w.off, w.n, dtype_size(w.dt), h);
  else wide_item(buf + w.off, w.n, w.dt, h, part + blockIdx.x);
}

// ---------------------------------------------------------------- host side

struct Bin { uint32_t raw; uint64_t count; };

template <class C>
void dense_bins(int dt, bool prefix, const C* h, std::vector<Bin>& out) {
  out.clear();
  int nb = prefix ? 65536 : (dtype_key_bits(dt) == 8 ? 256 : 65536);
  for (int key = 0; key < nb; ++key) {
    uint32_t raw = prefix ? float_unkey16(uint32_t(key)) : small_unkey(dt, uint32_t(key));
    uint64_t c = h[raw];
    if (c) out.push_back({raw, c});
  }
}

struct Segment { uint32_t task; uint64_t begin, nbytes; int hslot; uint32_t first_work, nwork; };

struct Slot {
  uint8_t* h_in = nullptr; uint8_t* d_in = nullptr;
  Work* h_work = nullptr; Work* d_work = nullptr;
  PieceStats* h_part = nullptr; PieceStats* d_part = nullptr;
  uint32_t* h_hist = nullptr; uint32_t* d_hist = nullptr;
  cudaEvent_t done = nullptr;
  cudaStream_t stream = nullptr;
  std::vector<Segment> segs;
  int nh = 0;
  bool pending = false;
};

struct Ring {
  std::vector<Slot> slots;
  cudaStream_t streams[2] = {nullptr, nullptr};
  ~Ring() {   // errors ignored: this runs while unwinding too
    for (auto s : streams) if (s) cudaStreamSynchronize(s);
    for (auto& s : slots) {
      if (s.h_in) cudaFreeHost(s.h_in);
      if (s.h_work) cudaFreeHost(s.h_work);
      if (s.h_part) cudaFreeHost(s.h_part);
      if (s.h_hist) cudaFreeHost(s.h_hist);
      if (s.d_in) cudaFree(s.d_in);
      if (s.d_work) cudaFree(s.d_work);
      if (s.d_part) cudaFree(s.d_part);
      if (s.d_hist) cudaFree(s.d_hist);
      if (s.done) cudaEventDestroy(s.done);
    }
    for (auto s : streams) if (s) cudaStreamDestroy(s);
  }
};

struct Files {
  std::vector<int> fd;
  std::vector<uint64_t> size;
  ~Files() { for (int f : fd) if (f >= 0) close(f); }
};

struct ReadOp { int fd; uint64_t off, len; uint8_t* dst; const uint8_t* mem; };

void do_read(const ReadOp& r) {
  if (r.mem) { std::memcpy(r.dst, r.mem, r.len); return; }
  uint64_t got = 0;
  while (got < r.len) {
    ssize_t k = pread(r.fd, r.dst + got, r.len - got, off_t(r.off + got));
    if (k < 0) { if (errno == EINTR) continue; throw std::system_error(errno, std::generic_category(), "pread"); }
    if (k == 0) throw std::system_error(EIO, std::generic_category(), "unexpected end of file");
    got += uint64_t(k);
  }
}

// pread/memcpy the batch's segments, split into 8 MiB reads over up to 4 threads
void fill(std::vector<ReadOp>& ops) {
  std::vector<ReadOp> split;
  const uint64_t step = 8ull << 20;
  uint64_t total = 0;
  for (const ReadOp& r : ops)
    for (uint64_t b = 0; b < r.len; b += step) {
      ReadOp s = r; s.off = r.off + b; s.len = std::min(step, r.len - b); s.dst = r.dst + b;
      if (r.mem) s.mem = r.mem + b;
      split.push_back(s); total += s.len;
    }
  int nt = int(std::min<size_t>(4, split.size()));
  if (nt <= 1 || total < (16ull << 20)) { for (auto& r : split) do_read(r); return; }
  std::atomic<size_t> next{0};
  std::vector<std::exception_ptr> errs(static_cast<size_t>(nt));
  std::vector<std::thread> th;
  for (int k = 0; k < nt; ++k)
    th.emplace_back([&, k]() {
      try { for (size_t i; (i = next.fetch_add(1)) < split.size();) do_read(split[i]); }
      catch (...) { errs[size_t(k)] = std::current_exception(); next = split.size(); }
    });
  for (auto& t : th) t.join();
  for (auto& e : errs) if (e) std::rethrow_exception(e);
}

}  // namespace

std::vector<TensorResult> run_stats(const std::vector<std::string>& files, const std::vector<Task>& tasks,
                                    const Options& opt, const std::function<bool(uint64_t)>& progress, Info* info) {
  const int nq = int(std::min<size_t>(opt.levels.size(), kMaxQuantiles));
  const double* qs = opt.quantiles && nq > 0 ? opt.levels.data() : nullptr;
  std::vector<TensorResult> results(tasks.size());

  Files fh;
  for (const auto& f : files) {
    int fd = open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), f);
    fh.fd.push_back(fd);
    struct stat st;
    if (fstat(fd, &st) != 0) throw std::system_error(errno, std::generic_category(), f);
    fh.size.push_back(uint64_t(st.st_size));
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  }
  for (const auto& t : tasks)
    if (t.mem == nullptr && (t.file < 0 || size_t(t.file) >= files.size() || t.offset > fh.size[size_t(t.file)] ||
                             t.nbytes > fh.size[size_t(t.file)] - t.offset))
      throw std::system_error(EINVAL, std::generic_category(),
                              "tensor bytes lie beyond the end of the file (was it truncated after the header was read?)");

  PK_CK(cudaSetDevice(opt.device));
  if (info) {
    cudaDeviceProp p;
    PK_CK(cudaGetDeviceProperties(&p, opt.device));
    info->device = p.name;
  }
  // 1 MiB .. 1 GiB per slot: per-batch histogram bins are uint32 (at most 2^30 elements per batch)
  const uint64_t ring = std::min<uint64_t>(1ull << 30, std::max<uint64_t>(1ull << 20, opt.ring_bytes / 16 * 16));
  Ring R;
  PK_CK(cudaStreamCreateWithFlags(&R.streams[0], cudaStreamNonBlocking));
  PK_CK(cudaStreamCreateWithFlags(&R.streams[1], cudaStreamNonBlocking));
  R.slots.resize(size_t(std::max(2, opt.slots)));
  for (size_t k = 0; k < R.slots.size(); ++k) {
    Slot& s = R.slots[k];
    PK_CK(cudaHostAlloc(reinterpret_cast<void**>(&s.h_in), ring, cudaHostAllocDefault));
    PK_CK(cudaHostAlloc(reinterpret_cast<void**>(&s.h_work), sizeof(Work) * kMaxWork, cudaHostAllocDefault));
    PK_CK(cudaHostAlloc(reinterpret_cast<void**>(&s.h_part), sizeof(PieceStats) * kMaxWork, cudaHostAllocDefault));
    PK_CK(cudaHostAlloc(reinterpret_cast<void**>(&s.h_hist), sizeof(uint32_t) * kBins * kHistSlots, cudaHostAllocDefault));
    PK_CK(cudaMalloc(reinterpret_cast<void**>(&s.d_in), ring));
    PK_CK(cudaMalloc(reinterpret_cast<void**>(&s.d_work), sizeof(Work) * kMaxWork));
    PK_CK(cudaMalloc(reinterpret_cast<void**>(&s.d_part), sizeof(PieceStats) * kMaxWork));
    PK_CK(cudaMalloc(reinterpret_cast<void**>(&s.d_hist), sizeof(uint32_t) * kBins * kHistSlots));
    PK_CK(cudaMemset(s.d_hist, 0, sizeof(uint32_t) * kBins * kHistSlots));
    PK_CK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
    s.stream = R.streams[k % 2];
  }

  // per-tensor host state: running merge of partials, dense histogram of a multi-batch tensor
  std::vector<PieceStats> acc(tasks.size());
  std::vector<std::unique_ptr<uint64_t[]>> hist(tasks.size());
  std::vector<Bin> bins;
  uint64_t bytes_done = 0;
  auto needs_hist = [&](int dt) { return dtype_is_small(dt) || qs != nullptr; };
  auto finalize = [&](uint32_t t, const uint32_t* h32) {
    const Task& T = tasks[t];
    TensorResult& r = results[t];
    const int dt = T.dtype;
    bins.clear();
    if (needs_hist(dt) && T.nbytes) {
      bool prefix = !dtype_is_small(dt);
      if (h32) dense_bins(dt, prefix, h32, bins); else dense_bins(dt, prefix, hist[t].get(), bins);
    }
    hist[t].reset();
    if (dtype_is_small(dt)) {
      finalize_small(dt, bins.data(), int(bins.size()), qs, qs ? nq : 0, r);
    } else {
      finish_piece(dt, r, acc[t]);
      if (qs) finalize_prefix_quantiles(bins.data(), int(bins.size()), qs, nq, acc[t].nonnan, r);
    }
    r.numel = T.numel;
    if (!qs) r.nq = 0;
    r.done = true;
  };
  // merge a finished batch's results, in segment (= tensor, piece) order
  auto collect = [&](Slot& s) {
    PK_CK(cudaEventSynchronize(s.done));
    for (const Segment& g : s.segs) {
      const Task& T = tasks[g.task];
      if (!dtype_is_small(T.dtype))
        for (uint32_t w = 0; w < g.nwork; ++w) merge_piece(acc[g.task], s.h_part[g.first_work + w]);
      bool last = g.begin + g.nbytes == T.nbytes;
      const uint32_t* h32 = g.hslot >= 0 ? s.h_hist + size_t(g.hslot) * kBins : nullptr;
      if (h32 && !(g.begin == 0 && last)) {   // a tensor over several batches: accumulate in uint64
        if (!hist[g.task]) hist[g.task].reset(new uint64_t[kBins]());
        uint64_t* H = hist[g.task].get();
        for (uint32_t i = 0; i < kBins; ++i) H[i] += h32[i];
        h32 = nullptr;
      }
      if (last) finalize(g.task, h32);
      bytes_done += g.nbytes;
    }
    s.segs.clear();
    s.pending = false;
  };

  size_t t = 0;
  uint64_t b = 0;
  size_t k = 0;
  std::vector<ReadOp> ops;
  while (true) {
    // skip empty tensors (nothing to read)
    while (t < tasks.size() && tasks[t].nbytes == 0) { finalize(uint32_t(t), nullptr); ++t; b = 0; }
    if (t >= tasks.size()) break;
    Slot& s = R.slots[k % R.slots.size()];
    if (s.pending) collect(s);
    if (progress && !progress(bytes_done)) throw Cancelled();
    // pack segments into this slot
    uint64_t pos = 0;
    uint32_t nwork = 0;
    s.nh = 0;
    ops.clear();
    while (t < tasks.size()) {
      const Task& T = tasks[t];
      if (T.nbytes == 0) { finalize(uint32_t(t), nullptr); ++t; b = 0; continue; }
      uint64_t es = uint64_t(dtype_size(T.dtype));
      uint64_t at = (pos + 15) / 16 * 16;
      if (at >= ring) break;
      uint64_t take = std::min(T.nbytes - b, (ring - at) / es * es);
      take = std::min<uint64_t>(take, uint64_t(kMaxWork - nwork) * kBlockElems * es);
      bool hneed = needs_hist(T.dtype);
      if (take == 0 || (hneed && s.nh >= kHistSlots)) break;
      Segment g{uint32_t(t), b, take, hneed ? s.nh++ : -1, nwork, 0};
      uint64_t n = take / es;
      for (uint64_t e0 = 0; e0 < n; e0 += kBlockElems) {
        Work w{at + e0 * es, uint32_t(std::min<uint64_t>(kBlockElems, n - e0)), T.dtype, g.hslot, 0};
        s.h_work[nwork++] = w;
        ++g.nwork;
      }
      ops.push_back({T.mem ? -1 : fh.fd[size_t(T.file)], T.offset + b, take, s.h_in + at, T.mem ? T.mem + b : nullptr});
      s.segs.push_back(g);
      pos = at + take;
      b += take;
      if (b == T.nbytes) { ++t; b = 0; }
    }
    if (s.segs.empty()) continue;   // only empty tensors were left
    fill(ops);
    PK_CK(cudaMemcpyAsync(s.d_in, s.h_in, pos, cudaMemcpyHostToDevice, s.stream));
    PK_CK(cudaMemcpyAsync(s.d_work, s.h_work, sizeof(Work) * nwork, cudaMemcpyHostToDevice, s.stream));
    stats_kernel<<<nwork, kThreads, 0, s.stream>>>(s.d_in, s.d_work, s.d_part, s.d_hist);
    PK_CK(cudaGetLastError());
    PK_CK(cudaMemcpyAsync(s.h_part, s.d_part, sizeof(PieceStats) * nwork, cudaMemcpyDeviceToHost, s.stream));
    if (s.nh) {
      size_t hb = sizeof(uint32_t) * kBins * size_t(s.nh);
      PK_CK(cudaMemcpyAsync(s.h_hist, s.d_hist, hb, cudaMemcpyDeviceToHost, s.stream));
      PK_CK(cudaMemsetAsync(s.d_hist, 0, hb, s.stream));
    }
    PK_CK(cudaEventRecord(s.done, s.stream));
    s.pending = true;
    if (info) { info->batches++; info->launches++; }
    ++k;
  }
  for (size_t j = 0; j < R.slots.size(); ++j) {   // drain in submission order
    Slot& s = R.slots[(k + j) % R.slots.size()];
    if (s.pending) collect(s);
  }
  if (progress && !progress(bytes_done)) throw Cancelled();   // an error raised at the last report
  return results;
}

double h2d_ceiling(uint64_t bytes, int reps) {
  bytes = std::max<uint64_t>(bytes / 2 * 2, 2);
  uint8_t *h = nullptr, *d = nullptr;
  cudaStream_t st[2] = {nullptr, nullptr};
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  auto cleanup = [&]() {
    if (st[0]) cudaStreamSynchronize(st[0]);
    if (st[1]) cudaStreamSynchronize(st[1]);
    if (h) cudaFreeHost(h);
    if (d) cudaFree(d);
    for (auto s : st) if (s) cudaStreamDestroy(s);
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
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
    cudaEvent_t e2 = nullptr;
    PK_CK(cudaEventCreate(&e2));
    PK_CK(cudaEventRecord(e2, st[1]));
    PK_CK(cudaStreamWaitEvent(st[0], e2, 0));
    PK_CK(cudaEventRecord(e1, st[0]));
    PK_CK(cudaEventSynchronize(e1));
    cudaEventDestroy(e2);
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
