// Device side of the CUDA engine: the work-item structs and kernels (statistics, simulated
// quantization) that stats_engine.cu and device_arrays.cu launch; the math is the shared PK_HD code.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "paramkit/ggml_blocks.hpp"
#include "paramkit/quant.hpp"
#include "paramkit/stats.hpp"

namespace paramkit {
namespace cuda {
namespace {   // internal linkage: each .cu that includes this has its own copy

#define PK_CK(call)                                                                                  \
  do {                                                                                               \
    cudaError_t e_ = (call);                                                                         \
    if (e_ != cudaSuccess)                                                                           \
      throw std::runtime_error(std::string("CUDA error in ") + #call + ": " + cudaGetErrorName(e_) + \
                               ": " + cudaGetErrorString(e_));                                      \
  } while (0)

// kernel<<<grid, block, 0, stream>>>(args...), spelled so that the CPU emulator (cuda/emu) runs it too
#ifdef PARAMKIT_CUDA_EMULATOR
#define PK_LAUNCH(kernel, grid, block, stream, ...) ::pk_emu::launch_on((stream), (grid), (block), kernel, __VA_ARGS__)
#else
#define PK_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

#ifdef PARAMKIT_CUDA_EMULATOR
constexpr int kThreads = 32;    // CPU threads per emulated block: the same code, narrower trees
#else
constexpr int kThreads = 256;
#endif
constexpr uint32_t kBlockElems = 32768;   // elements per statistics work item (one CUDA block each)
constexpr int kHistSlots = 64;            // tensors with a histogram per batch
constexpr int kMaxWork = 8192;            // work items of each kind per batch
constexpr uint32_t kBins = 65536;
constexpr uint32_t kUnit = 16;            // elements per thread step of the per-tensor-scale schemes
constexpr uint32_t kMaxHoldItems = 1024;  // work items of one held tensor's second pass

struct Work {      // statistics of n elements at p
  const uint8_t* p;   // device address (16-aligned for 8/16-bit dtypes)
  uint32_t n;
  int dt;
  int hslot;          // histogram slot, -1: none
  int pad;
};

struct DWork {     // GGML blocks -> float32 (ggml_blocks.hpp): nblocks blocks of type ggml at src, values to dst
  const uint8_t* src;
  float* dst;
  uint32_t nblocks;
  int ggml;
};
constexpr uint32_t kDeqBlocks = 1024;     // GGML blocks per dequantization work item (one CUDA block each)

struct QWork {     // quantization pass over n elements at p (whole rows / channels / groups)
  const uint8_t* p;
  float* f;           // where the group schemes find the float32 decode, or null (none in mask)
  uint64_t row_len, chan_len;
  uint32_t n, task, mask;   // mask: the schemes run on this item
  int dt;
  float absmax;       // tensor absmax for the per-tensor-scale schemes in mask
  uint32_t pad;
};

struct HWork {     // second pass of a held tensor: per-tensor-scale schemes over n elements at p
  const uint8_t* p;
  uint32_t n, task, mask;
  int dt;
};

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

// fixed-shape tree reduction over the block with op(a, b) (a = a op b): bit-identical run to run;
// every thread gets the result
template <class T, class Op>
__device__ T block_reduce(T v, T* sh, Op op) {
  int t = threadIdx.x;
  sh[t] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) op(sh[t], sh[t + s]);
    __syncthreads();
  }
  T r = sh[0];
  __syncthreads();
  return r;
}
struct AddOp { template <class T> __device__ void operator()(T& a, const T& b) const { a += b; } };
struct MaxOp { template <class T> __device__ void operator()(T& a, const T& b) const { a = b > a ? b : a; } };
struct CombineOp { __device__ void operator()(Acc& a, const Acc& b) const { combine(a, b); } };
struct MergeSumsOp { __device__ void operator()(QuantSums& a, const QuantSums& b) const { merge_quant_sums(a, b); } };

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
    am = block_reduce(am, shd, MaxOp());
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
  const int t = threadIdx.x;
  Acc r = block_reduce(a, sh, CombineOp());
  double nfin = double(r.fin), mean = nfin > 0 ? r.sum / nfin : 0.0, s1 = 0, s2 = 0;
  if (nfin > 0) {
    for (uint32_t i = threadIdx.x; i < n; i += kThreads) {
      uint64_t raw = load_raw(p, es, i);
      double v = decode_to_double(dt, raw);
      double d = v - v == 0 ? v * f1 * f2 - mean : 0.0;
      s1 += d; s2 += d * d;
    }
  }
  s1 = block_reduce(s1, shd, AddOp());
  s2 = block_reduce(s2, shd, AddOp());
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


// ---------------------------------------------------------------- simulated quantization

// element i of a float dtype as float32, exactly as the cpu engine's decode_for_quant (F64 rounds)
__device__ __forceinline__ float load_f32(int dt, const uint8_t* p, uint64_t i) {
  switch (dt) {
    case F32: return reinterpret_cast<const float*>(p)[i];
    case F64: return __double2float_rn(reinterpret_cast<const double*>(p)[i]);
    case BF16: return decode_bf16(reinterpret_cast<const uint16_t*>(p)[i]);
    case F16: return decode_f16(reinterpret_cast<const uint16_t*>(p)[i]);
    case F8_E4M3: return decode_f8_e4m3(p[i]);
    case F8_E5M2: return decode_f8_e5m2(p[i]);
    default: return 0.0f;
  }
}

// the block's total of every thread's sums, in thread 0's s (fixed-shape tree, as block_reduce)
__device__ void block_quant_sums(QuantSums& s, QuantSums* sh) {
  QuantSums r = block_reduce(s, sh, MergeSumsOp());
  if (threadIdx.x == 0) s = r;
}

__device__ __forceinline__ float finite_abs(float v) {
  return qdetail::is_finite(v) ? qdetail::fabs_(v) : 0.0f;
}

// int8_tensor / fp8_e4m3 (sp.tensor_absmax set), or any elementwise run with a fixed scale: every
// thread takes runs of kUnit elements, decoded straight from the raw bytes (no float copy needed)
__device__ void fixed_scale_sums(const uint8_t* p, const float* f, uint64_t n, int dt, const QuantSpec& sp,
                                 float* out, QuantSums& s) {
  float x[kUnit];
  for (uint64_t u = uint64_t(threadIdx.x) * kUnit; u < n; u += uint64_t(kThreads) * kUnit) {
    uint32_t len = uint32_t(n - u < kUnit ? n - u : kUnit);
    for (uint32_t j = 0; j < len; ++j) x[j] = f ? f[u + j] : load_f32(dt, p, u + j);
    quant_group(sp, x, int64_t(len), out ? out + u : nullptr, s);
  }
}

// One output channel of int8_channel by the whole block: its absmax (block max), then the same
// int8_reciprocal steps as quant_group's Q_INT8_CHANNEL, elementwise with that absmax.
__device__ void channel_by_block(const float* f, uint64_t len, float* out, QuantSums& s, float* shf) {
  float am = 0.0f;
  for (uint64_t i = threadIdx.x; i < len; i += kThreads) { float a = finite_abs(f[i]); am = a > am ? a : am; }
  am = block_reduce(am, shf, MaxOp());
  QuantSpec sp{Q_INT8_TENSOR, 0, am};
  fixed_scale_sums(nullptr, f, len, F32, sp, out, s);
}

// The group schemes over n decoded values f that start at a row / channel / group boundary, with
// the cpu engine's grouping (quant_piece): int8_channel per chan_len, nf4 blocks over the flat run,
// the rest groups of sp.group along rows of row_len with a short last group per row. Units go to
// threads round robin; every thread of the block must call this (channel_by_block synchronizes).
__device__ void group_sums(const float* f, uint64_t n, uint64_t row_len, uint64_t chan_len, const QuantSpec& sp,
                           float* out, QuantSums& s, float* shf) {
  if (sp.kind == Q_INT8_CHANNEL) {
    const uint64_t c = chan_len ? chan_len : 1;
    if (c >= 512) {   // long channels: the whole block per channel
      for (uint64_t a = 0; a < n; a += c)
        channel_by_block(f + a, n - a < c ? n - a : c, out ? out + a : nullptr, s, shf);
      return;
    }
    for (uint64_t a = uint64_t(threadIdx.x) * c; a < n; a += uint64_t(kThreads) * c)
      quant_group(sp, f + a, int64_t(n - a < c ? n - a : c), out ? out + a : nullptr, s);
    return;
  }
  const uint64_t g = sp.group > 0 ? uint64_t(sp.group) : 1;
  if (sp.kind == Q_NF4) {
    for (uint64_t a = uint64_t(threadIdx.x) * g; a < n; a += uint64_t(kThreads) * g)
      quant_group(sp, f + a, int64_t(n - a < g ? n - a : g), out ? out + a : nullptr, s);
    return;
  }
  const uint64_t rl = row_len ? row_len : 1, upr = (rl + g - 1) / g, units = (n + rl - 1) / rl * upr;
  for (uint64_t u = threadIdx.x; u < units; u += kThreads) {
    uint64_t r = u / upr, a = r * rl + (u % upr) * g;
    uint64_t end = r * rl + rl < n ? r * rl + rl : n;
    if (a >= end) continue;
    quant_group(sp, f + a, int64_t(end - a < g ? end - a : g), out ? out + a : nullptr, s);
  }
}

// ---------------------------------------------------------------- host helpers

// RAII for the scratch of one call: frees device memory, the stream and events, errors ignored
struct Scratch {
  std::vector<void*> dev;
  cudaStream_t stream = nullptr;
  std::vector<cudaEvent_t> events;
  template <class T>
  T* alloc(size_t n) {
    void* p = nullptr;
    PK_CK(cudaMalloc(&p, std::max<size_t>(1, sizeof(T) * n)));
    dev.push_back(p);
    return static_cast<T*>(p);
  }
  cudaEvent_t event() {
    cudaEvent_t e = nullptr;
    PK_CK(cudaEventCreate(&e));
    events.push_back(e);
    return e;
  }
  ~Scratch() {
    if (stream) { cudaStreamSynchronize(stream); cudaStreamDestroy(stream); }
    for (void* p : dev) cudaFree(p);
    for (auto e : events) cudaEventDestroy(e);
  }
};

}  // namespace
}  // namespace cuda
}  // namespace paramkit
