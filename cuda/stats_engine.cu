// The CUDA engine's host side (see stats_engine.cuh): a pinned ring over 2 streams feeds the
// statistics, quantization and held-tensor kernels below; partials merge in fixed order. Also the
// benchmark's kernel-only timing of the statistics kernel.
#include "stats_engine.cuh"
#include "device_kernels.cuh"
#include "paramkit/file_read.hpp"
#include "paramkit/host_threads.hpp"
#include "paramkit/reader_pool.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <numeric>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>

namespace paramkit {
namespace cuda {

namespace {

// ---------------------------------------------------------------- kernels

// The dtype a task's values are reduced as: float32 for a GGML block type (dequantized first), else its own.
PK_HD PK_INLINE int reduced(int dt) { return storage_unit(dt).values; }

__global__ void __launch_bounds__(kThreads) stats_kernel(const Work* work, PieceStats* part, uint32_t* hist) {
  const Work w = work[blockIdx.x];
  uint32_t* h = w.hslot >= 0 ? hist + size_t(w.hslot) * kBins : nullptr;
  if (dtype_is_small(w.dt)) small_item(w.p, w.n, dtype_size(w.dt), h);
  else wide_item(w.p, w.n, w.dt, h, part + blockIdx.x);
}

// One block per DWork: its GGML blocks dequantized to float32, a thread per GGML block. A block tensor's
// values live in the slot's d_deq from here on: statistics, quantization and the hold arena read them as F32.
__global__ void __launch_bounds__(kThreads) dequant_kernel(const DWork* dw) {
  const DWork w = dw[blockIdx.x];
  const GgmlBlock b = ggml_block(w.ggml);
  for (uint32_t i = threadIdx.x; i < w.nblocks; i += kThreads)
    ggml_dequantize_block(w.ggml, w.src + size_t(i) * size_t(b.bytes), w.dst + size_t(i) * size_t(b.elements));
}

// One block per QWork: decode (into w.f when a group scheme needs it) and the finite absmax
// (atomicMax into tabs[w.task]: exact, so the order does not matter), then every scheme of w.mask;
// the block's sums of scheme sc go to part[blockIdx.x * ns + sc].
__global__ void __launch_bounds__(kThreads) quant_kernel(const QWork* qw, const QuantSpec* specs, int ns,
                                                         QuantSums* part, uint32_t* tabs) {
  __shared__ float shf[kThreads];
  __shared__ QuantSums shq[kThreads];
  const QWork w = qw[blockIdx.x];
  float am = 0.0f;
  for (uint32_t i = threadIdx.x; i < w.n; i += kThreads) {
    float v = load_f32(w.dt, w.p, i);
    if (w.f && static_cast<const void*>(w.f) != static_cast<const void*>(w.p)) w.f[i] = v;   // f == p: F32 in place
    float a = finite_abs(v);
    am = a > am ? a : am;
  }
  am = block_reduce(am, shf, MaxOp());   // its __syncthreads also publishes w.f to the whole block
  if (threadIdx.x == 0) atomicMax(tabs + w.task, __float_as_uint(am));
  for (int sc = 0; sc < ns; ++sc) {
    if (!(w.mask >> sc & 1u)) continue;
    QuantSpec sp = specs[sc];
    QuantSums s;
    quant_sums_clear(s);
    if (quant_kind_needs_tensor_absmax(sp.kind)) {
      sp.tensor_absmax = w.absmax;
      fixed_scale_sums(w.p, nullptr, w.n, w.dt, sp, nullptr, s);
    } else {
      group_sums(w.f, w.n, w.row_len, w.chan_len, sp, nullptr, s, shf);
    }
    block_quant_sums(s, shq);
    if (threadIdx.x == 0) part[size_t(blockIdx.x) * size_t(ns) + size_t(sc)] = s;
  }
}

// The second pass of a held tensor: its absmax is final in tabs[w.task] (the launch waits for
// every batch that held a piece of it); per-tensor-scale schemes of w.mask over the held bytes.
__global__ void __launch_bounds__(kThreads) hold_kernel(const HWork* hw, const QuantSpec* specs, int ns,
                                                        QuantSums* part, const uint32_t* tabs) {
  __shared__ QuantSums shq[kThreads];
  const HWork w = hw[blockIdx.x];
  const float am = __uint_as_float(tabs[w.task]);
  for (int sc = 0; sc < ns; ++sc) {
    if (!(w.mask >> sc & 1u)) continue;
    QuantSpec sp = specs[sc];
    sp.tensor_absmax = am;
    QuantSums s;
    quant_sums_clear(s);
    fixed_scale_sums(w.p, nullptr, w.n, w.dt, sp, nullptr, s);
    block_quant_sums(s, shq);
    if (threadIdx.x == 0) part[size_t(blockIdx.x) * size_t(ns) + size_t(sc)] = s;
  }
}

// a deterministic bf16/f16/f32 test pattern (about N(0, 0.02)) for the benchmark's device buffer
__global__ void fill_kernel(uint8_t* p, uint64_t n, int dt) {
  for (uint64_t i = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += uint64_t(gridDim.x) * blockDim.x) {
    uint64_t h = i * 0x9E3779B97F4A7C15ull;
    float v = 0.0f;
    for (int k = 0; k < 4; ++k) {
      h ^= h >> 29; h *= 0xBF58476D1CE4E5B9ull; h ^= h >> 32;
      v += float(h & 0xFFFFFF) * (1.0f / 16777216.0f);
    }
    v = (v - 2.0f) * 0.035f;
    if (dt == F32) reinterpret_cast<float*>(p)[i] = v;
    else if (dt == F16) reinterpret_cast<uint16_t*>(p)[i] = f32_to_f16_bits(v);
    else reinterpret_cast<uint16_t*>(p)[i] = uint16_t(__float_as_uint(v) >> 16);
  }
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

struct Files {
  std::vector<int> fd;
  std::vector<uint64_t> size;
  ~Files() { for (int f : fd) if (f >= 0) close(f); }
};

// Options::readers == 0: one reader per core (as the cpu engine's threads), at most 8 (a 32 MiB batch
// in 1 MiB+ pieces)
int reader_count(int want) { return want > 0 ? std::min(want, 64) : std::min(8, default_threads()); }


struct Segment {
  uint32_t task; uint64_t begin, nbytes; int hslot;
  uint32_t first_work, nwork;   // statistics items
  uint32_t first_q, nq;         // quantization items
};
struct HoldLaunch { uint32_t task, first, n; };   // a held tensor's second-pass items in this batch
struct HoldCopy { uint8_t* dst; const uint8_t* src; uint64_t bytes; };

template <class T>
void host_alloc(T** p, size_t n) { PK_CK(cudaHostAlloc(reinterpret_cast<void**>(p), sizeof(T) * n, cudaHostAllocDefault)); }
template <class T>
void dev_alloc(T** p, size_t n) { PK_CK(cudaMalloc(reinterpret_cast<void**>(p), sizeof(T) * n)); }

struct Slot {
  uint8_t* h_in = nullptr; uint8_t* d_in = nullptr;
  Work* h_work = nullptr; Work* d_work = nullptr;
  PieceStats* h_part = nullptr; PieceStats* d_part = nullptr;
  uint32_t* h_hist = nullptr; uint32_t* d_hist = nullptr;
  QWork* h_qwork = nullptr; QWork* d_qwork = nullptr;
  QuantSums* h_qpart = nullptr; QuantSums* d_qpart = nullptr;
  HWork* h_hwork = nullptr; HWork* d_hwork = nullptr;
  QuantSums* h_hpart = nullptr; QuantSums* d_hpart = nullptr;
  float* d_f = nullptr;
  float* d_deq = nullptr;   // the dequantized values of this batch's GGML block tensors
  DWork* h_dwork = nullptr; DWork* d_dwork = nullptr;
  cudaEvent_t done = nullptr;
  cudaStream_t stream = nullptr;
  std::vector<Segment> segs;
  std::vector<HoldLaunch> holds;
  int nh = 0;
  bool pending = false;
};

struct Ring {
  std::vector<Slot> slots;
  cudaStream_t streams[2] = {nullptr, nullptr};
  QuantSpec* d_specs = nullptr;
  uint32_t* d_tabs = nullptr;     // per task: finite absmax bits (atomicMax)
  uint8_t* d_arena = nullptr;     // held tensors
  ~Ring() {   // errors ignored: this runs while unwinding too
    for (auto s : streams) if (s) cudaStreamSynchronize(s);
    for (auto& s : slots) {
      for (void* h : {(void*)s.h_in, (void*)s.h_work, (void*)s.h_part, (void*)s.h_hist, (void*)s.h_qwork,
                      (void*)s.h_qpart, (void*)s.h_hwork, (void*)s.h_hpart, (void*)s.h_dwork})
        if (h) cudaFreeHost(h);
      for (void* d : {(void*)s.d_in, (void*)s.d_work, (void*)s.d_part, (void*)s.d_hist, (void*)s.d_qwork,
                      (void*)s.d_qpart, (void*)s.d_hwork, (void*)s.d_hpart, (void*)s.d_f, (void*)s.d_deq, (void*)s.d_dwork})
        if (d) cudaFree(d);
      if (s.done) cudaEventDestroy(s.done);
    }
    for (void* d : {(void*)d_specs, (void*)d_tabs, (void*)d_arena}) if (d) cudaFree(d);
    for (auto s : streams) if (s) cudaStreamDestroy(s);
  }
};

uint64_t round256(uint64_t x) { return (x + 255) / 256 * 256; }
// The bytes of a task's values on the device: a GGML block tensor's are its dequantized float32 values.
uint64_t held_bytes(const Task& T) { return ggml_type_of_dtype(T.dtype) >= 0 ? T.numel * 4 : T.nbytes; }

}  // namespace

Output run(const std::vector<std::string>& files, const std::vector<Task>& tasks, const Options& opt,
           const std::function<bool(uint64_t)>& progress, Info* info) {
  const int nq = int(std::min<size_t>(opt.levels.size(), kMaxQuantiles));
  const double* qs = opt.stats && opt.quantiles && nq > 0 ? opt.levels.data() : nullptr;
  const int ns = int(opt.schemes.size());
  if (ns > kMaxSchemes) throw std::invalid_argument("too many quantization schemes");
  Output out;
  out.stats.resize(tasks.size());
  out.quant.resize(ns ? tasks.size() : 0);

  // 1 MiB .. 1 GiB per slot: per-batch histogram bins are uint32 (at most 2^30 elements per batch)
  const uint64_t ring = std::min<uint64_t>(1ull << 30, std::max<uint64_t>(1ull << 20, opt.ring_bytes / 16 * 16));
  uint32_t second_bits = 0, group_bits = 0;
  for (int k = 0; k < ns; ++k) {
    if (quant_kind_needs_tensor_absmax(opt.schemes[size_t(k)].kind)) second_bits |= 1u << k;
    else group_bits |= 1u << k;
  }
  // per task: schemes of the streaming pass, and the per-tensor-scale schemes left for a second pass
  std::vector<uint32_t> mask1(tasks.size(), 0), mask2(tasks.size(), 0);
  bool any_quant = false, any_group = false, any_block = false;
  uint64_t want_hold = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const Task& T = tasks[i];
    if (T.mem == nullptr && T.dev == nullptr && (T.file < 0 || size_t(T.file) >= files.size()))
      throw std::invalid_argument("task names a missing file");
    const bool block = ggml_type_of_dtype(T.dtype) >= 0;
    if (block && T.dev) throw std::invalid_argument("device-resident tasks cannot be GGML block types");
    any_block = any_block || (block && T.nbytes && (opt.stats || T.quant_mask));
    if (!T.quant_mask) continue;
    if (T.quant_mask >> std::min(ns, 31)) throw std::invalid_argument("quant_mask names a missing scheme");
    if (!block && !dtype_is_float(T.dtype)) throw std::invalid_argument("quantization needs a float dtype");
    if (T.dev) throw std::invalid_argument("device-resident tasks take no quantization schemes");
    const uint64_t pm = std::max<uint64_t>(T.piece_multiple, 1);
    if (pm > ring / uint64_t(dtype_size(reduced(T.dtype))) || pm > (1ull << 31))
      throw std::invalid_argument("a quantization unit of " + std::to_string(pm) +
                                  " elements does not fit one ring slot (raise PARAMKIT_CUDA_RING_MB)");
    const bool known = T.tensor_absmax == T.tensor_absmax;
    mask1[i] = T.quant_mask & (known ? ~0u : ~second_bits);
    mask2[i] = known ? 0u : (T.quant_mask & second_bits);
    any_quant = true;
    any_group = any_group || (mask1[i] & group_bits);
    if (mask2[i]) want_hold += round256(held_bytes(T));
  }

  Files fh;
  for (const auto& f : files) {
    OpenedFile o = open_for_reading(f);
    fh.fd.push_back(o.fd);
    fh.size.push_back(o.size);
  }
  for (const auto& t : tasks)
    if (t.mem == nullptr && t.dev == nullptr && !t.layout)
      check_range_in_file(files[size_t(t.file)], fh.size[size_t(t.file)], t.offset, t.nbytes);
  std::vector<std::unique_ptr<ViewReader>> views = view_readers(tasks, files, fh.size);   // each span checked

  PK_CK(cudaSetDevice(opt.device));
  if (info) {
    cudaDeviceProp p;
    PK_CK(cudaGetDeviceProperties(&p, opt.device));
    info->device = p.name;
  }
  Ring R;
  PK_CK(cudaStreamCreateWithFlags(&R.streams[0], cudaStreamNonBlocking));
  PK_CK(cudaStreamCreateWithFlags(&R.streams[1], cudaStreamNonBlocking));
  R.slots.resize(size_t(std::max(2, opt.slots)));
  const size_t nsq = size_t(std::max(ns, 1));
  for (size_t k = 0; k < R.slots.size(); ++k) {
    Slot& s = R.slots[k];
    host_alloc(&s.h_in, ring); dev_alloc(&s.d_in, ring);
    host_alloc(&s.h_work, kMaxWork); dev_alloc(&s.d_work, kMaxWork);
    host_alloc(&s.h_part, kMaxWork); dev_alloc(&s.d_part, kMaxWork);
    if (opt.stats) {
      host_alloc(&s.h_hist, size_t(kBins) * kHistSlots); dev_alloc(&s.d_hist, size_t(kBins) * kHistSlots);
      PK_CK(cudaMemset(s.d_hist, 0, sizeof(uint32_t) * kBins * kHistSlots));
    }
    if (any_quant) {
      host_alloc(&s.h_qwork, kMaxWork); dev_alloc(&s.d_qwork, kMaxWork);
      host_alloc(&s.h_qpart, kMaxWork * nsq); dev_alloc(&s.d_qpart, kMaxWork * nsq);
      if (any_group) dev_alloc(&s.d_f, ring);   // one float per ring byte: enough for any dtype
    }
    if (any_block) {   // ring / 4 floats: a batch dequantizes at most as many values as an F32 ring holds
      dev_alloc(&s.d_deq, ring / 4);
      host_alloc(&s.h_dwork, kMaxWork); dev_alloc(&s.d_dwork, kMaxWork);
    }
    if (want_hold) {
      host_alloc(&s.h_hwork, kMaxWork); dev_alloc(&s.d_hwork, kMaxWork);
      host_alloc(&s.h_hpart, kMaxWork * nsq); dev_alloc(&s.d_hpart, kMaxWork * nsq);
    }
    PK_CK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
  }
  std::vector<uint8_t> held(tasks.size(), 0);
  uint64_t arena = 0;
  if (any_quant) {
    dev_alloc(&R.d_specs, nsq);
    PK_CK(cudaMemcpy(R.d_specs, opt.schemes.data(), sizeof(QuantSpec) * size_t(ns), cudaMemcpyHostToDevice));
    dev_alloc(&R.d_tabs, tasks.size());
    PK_CK(cudaMemset(R.d_tabs, 0, sizeof(uint32_t) * tasks.size()));
  }
  if (want_hold) {   // the hold arena: bounded by the option and by half the free device memory
    size_t free_b = 0, total_b = 0;
    PK_CK(cudaMemGetInfo(&free_b, &total_b));
    arena = std::min<uint64_t>({opt.hold_bytes, uint64_t(free_b) / 2, want_hold}) / 256 * 256;
    if (arena) PK_CK(cudaMalloc(reinterpret_cast<void**>(&R.d_arena), arena));
    for (size_t i = 0; i < tasks.size(); ++i) held[i] = mask2[i] && round256(held_bytes(tasks[i])) <= arena;
    if (info) info->hold_capacity = arena;
  }
  // the setup's cudaMemset / cudaMemcpy ran on the legacy stream and may still be in flight: the
  // non-blocking streams below do not wait for it
  PK_CK(cudaDeviceSynchronize());
#ifdef PARAMKIT_CUDA_EMULATOR
  ReaderPool readers(reader_count(opt.readers) - 1, &pk_emu::read_fails);
#else
  ReaderPool readers(reader_count(opt.readers) - 1);
#endif
  if (info) info->readers = readers.readers();

  // per-tensor host state: running merge of partials, dense histogram of a multi-batch tensor
  std::vector<PieceStats> acc(opt.stats ? tasks.size() : 0);
  std::vector<std::unique_ptr<uint64_t[]>> hist(tasks.size());
  std::vector<uint64_t> aoff(tasks.size(), 0);   // a held tensor's place in the arena
  std::vector<Bin> bins;
  uint64_t bytes_done = 0;
  auto needs_hist = [&](int dt) { return opt.stats && (dtype_is_small(reduced(dt)) || qs != nullptr); };
  auto finalize = [&](uint32_t t, const uint32_t* h32) {
    if (!opt.stats) return;
    const Task& T = tasks[t];
    TensorResult& r = out.stats[t];
    const int dt = reduced(T.dtype);
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
      if (opt.stats && !dtype_is_small(reduced(T.dtype)))
        for (uint32_t w = 0; w < g.nwork; ++w) merge_piece(acc[g.task], s.h_part[g.first_work + w]);
      for (uint32_t q = 0; q < g.nq; ++q)
        for (int sc = 0; sc < ns; ++sc)
          if (mask1[g.task] >> sc & 1u)
            merge_quant_sums(out.quant[g.task].sums[sc], s.h_qpart[size_t(g.first_q + q) * nsq + size_t(sc)]);
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
    for (const HoldLaunch& h : s.holds) {
      for (uint32_t q = 0; q < h.n; ++q)
        for (int sc = 0; sc < ns; ++sc)
          if (mask2[h.task] >> sc & 1u)
            merge_quant_sums(out.quant[h.task].sums[sc], s.h_hpart[size_t(h.first + q) * nsq + size_t(sc)]);
      out.quant[h.task].held = true;
      if (info) { info->held++; info->held_bytes += tasks[h.task].nbytes; }
    }
    s.segs.clear();
    s.holds.clear();
    s.pending = false;
  };
  size_t k = 0;   // batches submitted; batch k uses slot k % slots
  // collect every pending slot but `keep` (batch k's), oldest batch first: a tensor's pieces must be
  // merged in order before its last one finalizes it
  auto drain_others = [&](const Slot* keep) {
    for (size_t j = 1; j < R.slots.size(); ++j) {
      Slot& o = R.slots[(k + j) % R.slots.size()];
      if (&o != keep && o.pending) collect(o);
    }
  };
  // the second-pass items of held tensor t: at most kMaxHoldItems, each a multiple of kUnit elements
  auto hold_items = [&](size_t t, uint64_t& per) {
    uint64_t n = tasks[t].numel;
    per = std::max<uint64_t>(kBlockElems, (n + kMaxHoldItems - 1) / kMaxHoldItems);
    per = (per + kUnit - 1) / kUnit * kUnit;
    return uint32_t((n + per - 1) / per);
  };

  size_t t = 0;
  uint64_t b = 0, arena_head = 0;
  std::vector<ReadOp> ops;
  std::vector<HoldCopy> copies;
  auto active = [&](size_t i) { return tasks[i].nbytes > 0 && (opt.stats || tasks[i].quant_mask); };
  while (true) {
    while (t < tasks.size() && !active(t)) { finalize(uint32_t(t), nullptr); ++t; b = 0; }
    if (t >= tasks.size()) break;
    Slot& s = R.slots[k % R.slots.size()];
    if (s.pending) collect(s);
    s.stream = R.streams[k % 2];   // per batch, not per slot: with 3 slots consecutive batches still alternate
    if (progress && !progress(bytes_done)) throw Cancelled();
    // pack segments into this slot
    uint64_t pos = 0, fpos = 0, dpos = 0;   // dpos: floats of d_deq taken
    uint32_t nwork = 0, nqw = 0, nhw = 0, ndw = 0;
    s.nh = 0;
    ops.clear();
    copies.clear();
    while (t < tasks.size()) {
      if (!active(t)) { finalize(uint32_t(t), nullptr); ++t; b = 0; continue; }
      const Task& T = tasks[t];
      // a unit: es bytes read, el values (one element, or one GGML block dequantized to el float32 values
      // at vp in d_deq; from there on the values are F32 for statistics, quantization and the hold arena)
      const StorageUnit su = storage_unit(T.dtype);
      const int gt = su.ggml;
      const uint64_t es = su.bytes, el = su.elements;
      const int vdt = su.values;
      const uint64_t ves = uint64_t(dtype_size(vdt));   // bytes per value
      const bool dev = T.dev != nullptr, quant = T.quant_mask != 0;
      const uint64_t at = dev ? 0 : (pos + 15) / 16 * 16;
      if (!dev && at >= ring) break;
      const uint64_t left = (T.nbytes - b) / es;
      uint64_t take = dev ? left : std::min(left, (ring - at) / es);
      if (opt.stats) take = std::min<uint64_t>(take, uint64_t(kMaxWork - nwork) * kBlockElems / el);
      if (gt >= 0) {
        take = std::min<uint64_t>(take, (ring / 4 - dpos) / el);              // room in d_deq
        take = std::min<uint64_t>(take, uint64_t(kMaxWork - ndw) * kDeqBlocks);   // and in the DWork list
      }
      const uint64_t pm = std::max<uint64_t>(T.piece_multiple, 1);
      const uint64_t qblk = std::max<uint64_t>(pm, kBlockElems / pm * pm);
      if (quant) {
        take = std::min<uint64_t>(take, uint64_t(kMaxWork - nqw) * qblk / el);
        const uint64_t pmu = pm / std::gcd(pm, el);   // units of whole rows / channels / groups
        if (take < left) take = take / pmu * pmu;     // pieces of whole rows / channels / groups
      }
      const bool hneed = needs_hist(T.dtype);
      if (take == 0 || (hneed && s.nh >= kHistSlots)) break;
      uint32_t hn = 0;
      uint64_t hper = 0;
      if (held[t] && take == left) {   // the tensor ends here: its second pass goes in this batch
        hn = hold_items(t, hper);
        if (nhw + hn > uint32_t(kMaxWork)) break;   // the next batch has room
      }
      if (held[t] && b == 0) {   // a place in the arena for the whole tensor
        uint64_t need = round256(held_bytes(T));
        if (arena_head + need > arena) {
          if (!s.holds.empty()) break;   // a tensor finishing in this batch still uses its place
          drain_others(&s);              // every earlier second pass is done: start over
          arena_head = 0;
        }
        aoff[t] = arena_head;
        arena_head += need;
      }
      Segment g{uint32_t(t), b, take * es, hneed ? s.nh++ : -1, nwork, 0, nqw, 0};
      const uint8_t* dp = dev ? T.dev + b : s.d_in + at;   // the bytes read
      const uint8_t* vp = dp;                              // the values
      const uint64_t nv = take * el, v0 = b / es * el;     // values in this segment, the first one's index
      if (gt >= 0) {
        float* dst = s.d_deq + dpos;
        for (uint64_t u = 0; u < take; u += kDeqBlocks)
          s.h_dwork[ndw++] = DWork{dp + u * es, dst + u * el, uint32_t(std::min<uint64_t>(kDeqBlocks, take - u)), gt};
        vp = reinterpret_cast<const uint8_t*>(dst);
        dpos += nv;
      }
      if (opt.stats)
        for (uint64_t e0 = 0; e0 < nv; e0 += kBlockElems) {
          s.h_work[nwork++] = Work{vp + e0 * ves, uint32_t(std::min<uint64_t>(kBlockElems, nv - e0)), vdt, g.hslot, 0};
          ++g.nwork;
        }
      if (quant) {
        const bool f = (mask1[t] & group_bits) != 0;
        for (uint64_t e0 = 0; e0 < nv; e0 += qblk) {
          QWork q{};
          q.p = vp + e0 * ves; q.n = uint32_t(std::min(qblk, nv - e0));
          // group schemes read float32: a block tensor's dequantized values in place, else a decoded copy
          q.f = !f ? nullptr : gt >= 0 ? reinterpret_cast<float*>(const_cast<uint8_t*>(q.p)) : s.d_f + fpos;
          q.row_len = T.row_len; q.chan_len = T.chan_len; q.task = uint32_t(t); q.mask = mask1[t]; q.dt = vdt;
          q.absmax = T.tensor_absmax;
          if (f && gt < 0) fpos += q.n;
          s.h_qwork[nqw++] = q;
          ++g.nq;
        }
      }
      if (!dev) {
        ViewReader* v = views[t].get();   // a view: the bytes [b, b + take * es) of its plain form
        ops.push_back({T.mem ? -1 : fh.fd[size_t(T.file)], T.mem ? nullptr : &files[size_t(T.file)],
                       v ? b : T.offset + b, take * es, s.h_in + at, T.mem ? T.mem + b : nullptr, v});
        pos = at + take * es;
      }
      if (held[t]) copies.push_back({R.d_arena + aoff[t] + v0 * ves, vp, nv * ves});
      s.segs.push_back(g);
      b += take * es;
      if (hn) {
        HoldLaunch h{uint32_t(t), nhw, hn};
        for (uint32_t i = 0; i < hn; ++i) {
          uint64_t e0 = uint64_t(i) * hper;
          s.h_hwork[nhw++] = HWork{R.d_arena + aoff[t] + e0 * ves, uint32_t(std::min(hper, T.numel - e0)),
                                   uint32_t(t), mask2[t], vdt};
        }
        s.holds.push_back(h);
      }
      if (b == T.nbytes) { ++t; b = 0; }
    }
    if (s.segs.empty()) {
      if (t < tasks.size() && active(t)) throw std::logic_error("paramkit._cuda: a batch could take nothing");
      continue;   // only inactive tensors were left
    }
    readers.run(ops);
    if (pos) PK_CK(cudaMemcpyAsync(s.d_in, s.h_in, pos, cudaMemcpyHostToDevice, s.stream));
    if (ndw) {   // GGML blocks -> float32 first: everything below (and the hold copies) reads those values
      PK_CK(cudaMemcpyAsync(s.d_dwork, s.h_dwork, sizeof(DWork) * ndw, cudaMemcpyHostToDevice, s.stream));
      PK_LAUNCH(dequant_kernel, ndw, kThreads, s.stream, s.d_dwork);
      PK_CK(cudaGetLastError());
      if (info) info->launches++;
    }
    for (const HoldCopy& c : copies) PK_CK(cudaMemcpyAsync(c.dst, c.src, c.bytes, cudaMemcpyDeviceToDevice, s.stream));
    if (nwork) {
      PK_CK(cudaMemcpyAsync(s.d_work, s.h_work, sizeof(Work) * nwork, cudaMemcpyHostToDevice, s.stream));
      PK_LAUNCH(stats_kernel, nwork, kThreads, s.stream, s.d_work, s.d_part, s.d_hist);
      PK_CK(cudaGetLastError());
      PK_CK(cudaMemcpyAsync(s.h_part, s.d_part, sizeof(PieceStats) * nwork, cudaMemcpyDeviceToHost, s.stream));
      if (info) info->launches++;
    }
    if (nqw) {
      PK_CK(cudaMemcpyAsync(s.d_qwork, s.h_qwork, sizeof(QWork) * nqw, cudaMemcpyHostToDevice, s.stream));
      PK_LAUNCH(quant_kernel, nqw, kThreads, s.stream, s.d_qwork, R.d_specs, ns, s.d_qpart, R.d_tabs);
      PK_CK(cudaGetLastError());
      PK_CK(cudaMemcpyAsync(s.h_qpart, s.d_qpart, sizeof(QuantSums) * nqw * nsq, cudaMemcpyDeviceToHost, s.stream));
      if (info) info->launches++;
    }
    if (nhw) {   // held tensors completed here: wait for every earlier batch (their absmax, their bytes)
      for (auto& o : R.slots)
        if (&o != &s && o.pending) PK_CK(cudaStreamWaitEvent(s.stream, o.done, 0));
      PK_CK(cudaMemcpyAsync(s.d_hwork, s.h_hwork, sizeof(HWork) * nhw, cudaMemcpyHostToDevice, s.stream));
      PK_LAUNCH(hold_kernel, nhw, kThreads, s.stream, s.d_hwork, R.d_specs, ns, s.d_hpart, R.d_tabs);
      PK_CK(cudaGetLastError());
      PK_CK(cudaMemcpyAsync(s.h_hpart, s.d_hpart, sizeof(QuantSums) * nhw * nsq, cudaMemcpyDeviceToHost, s.stream));
      if (info) info->launches++;
    }
    if (s.nh) {
      size_t hb = sizeof(uint32_t) * kBins * size_t(s.nh);
      PK_CK(cudaMemcpyAsync(s.h_hist, s.d_hist, hb, cudaMemcpyDeviceToHost, s.stream));
      PK_CK(cudaMemsetAsync(s.d_hist, 0, hb, s.stream));
    }
    PK_CK(cudaEventRecord(s.done, s.stream));
    s.pending = true;
    if (info) info->batches++;
    ++k;
  }
  for (size_t j = 0; j < R.slots.size(); ++j) {   // drain in submission order
    Slot& s = R.slots[(k + j) % R.slots.size()];
    if (s.pending) collect(s);
  }
  if (any_quant) {
    std::vector<uint32_t> tabs(tasks.size());
    PK_CK(cudaMemcpy(tabs.data(), R.d_tabs, sizeof(uint32_t) * tasks.size(), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < tasks.size(); ++i) {
      float a;
      std::memcpy(&a, &tabs[i], 4);
      out.quant[i].absmax = a;
    }
  }
  if (progress && !progress(bytes_done)) throw Cancelled();   // an error raised at the last report
  return out;
}

DeviceBench device_bench(uint64_t bytes, int dtype, bool quantiles, int reps, int device) {
  if (dtype != BF16 && dtype != F16 && dtype != F32) throw std::invalid_argument("device_bench takes BF16, F16 or F32");
  const uint64_t es = uint64_t(dtype_size(dtype));
  const uint64_t n = std::max<uint64_t>(bytes / es / kBlockElems, 1) * kBlockElems;
  bytes = n * es;
  PK_CK(cudaSetDevice(device));
  Scratch S;
  PK_CK(cudaStreamCreateWithFlags(&S.stream, cudaStreamNonBlocking));
  uint8_t* a = S.alloc<uint8_t>(bytes);
  uint8_t* c = S.alloc<uint8_t>(bytes);
  PK_LAUNCH(fill_kernel, 1024, kThreads, S.stream, a, n, dtype);
  PK_CK(cudaGetLastError());
  // the engine's work list over the whole buffer, one launch (the 16-bit histogram when needed)
  const uint64_t items = n / kBlockElems;
  const bool h = dtype_is_small(dtype) || quantiles;
  std::vector<Work> work(items);
  for (uint64_t i = 0; i < items; ++i) work[i] = Work{a + i * kBlockElems * es, kBlockElems, dtype, h ? 0 : -1, 0};
  Work* d_work = S.alloc<Work>(items);
  PieceStats* d_part = S.alloc<PieceStats>(items);
  uint32_t* d_hist = S.alloc<uint32_t>(kBins);
  PK_CK(cudaMemcpyAsync(d_work, work.data(), sizeof(Work) * items, cudaMemcpyHostToDevice, S.stream));
  cudaEvent_t e0 = S.event(), e1 = S.event();
  DeviceBench r;
  float best_k = 1e30f, best_c = 1e30f;
  for (int rep = 0; rep <= reps; ++rep) {   // rep 0 warms up
    PK_CK(cudaMemsetAsync(d_hist, 0, sizeof(uint32_t) * kBins, S.stream));
    PK_CK(cudaEventRecord(e0, S.stream));
    PK_LAUNCH(stats_kernel, unsigned(items), kThreads, S.stream, d_work, d_part, d_hist);
    PK_CK(cudaGetLastError());
    PK_CK(cudaEventRecord(e1, S.stream));
    PK_CK(cudaEventSynchronize(e1));
    float ms = 0;
    PK_CK(cudaEventElapsedTime(&ms, e0, e1));
    if (rep) best_k = std::min(best_k, ms);
    PK_CK(cudaEventRecord(e0, S.stream));
    PK_CK(cudaMemcpyAsync(c, a, bytes, cudaMemcpyDeviceToDevice, S.stream));
    PK_CK(cudaEventRecord(e1, S.stream));
    PK_CK(cudaEventSynchronize(e1));
    PK_CK(cudaEventElapsedTime(&ms, e0, e1));
    if (rep) best_c = std::min(best_c, ms);
  }
  r.kernel_ms = best_k; r.d2d_ms = best_c;
  r.kernel_gbps = double(bytes) / (best_k * 1e-3) / 1e9;
  r.d2d_gbps = double(bytes) / (best_c * 1e-3) / 1e9;
  return r;
}

}  // namespace cuda
}  // namespace paramkit
