// The CUDA emulator's stand-in for <cuda_runtime.h>: just enough of the runtime API and of the
// device language (threads, __syncthreads, __shared__, atomics) to run paramkit's CUDA engine on
// CPU threads, so that its host logic and kernels are tested where no GPU exists (paramkit._cuda_emu).
// Each block runs as blockDim.x std::threads (one block at a time: __shared__ is a function-static);
// "device" memory is host memory. Streams are deferred: work queued on a stream (copies, memsets,
// launches, event records) runs only when something waits for it (an event or stream synchronize,
// a cudaStreamWaitEvent reached by another stream, cudaDeviceSynchronize, cudaFree), so a missing wait
// shows up as stale data, as it can on a GPU. The legacy stream (no stream given: cudaMemcpy, cudaMemset)
// is one more such stream, unordered with the non-blocking ones; a copy to or from the host waits for it.
// Not for speed measurements.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#define PARAMKIT_CUDA_EMULATOR 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned a) : x(a) {}
};
struct alignas(16) uint4 { unsigned x, y, z, w; };

inline thread_local dim3 threadIdx;
inline dim3 blockIdx, blockDim, gridDim;

namespace pk_emu {

struct Barrier {   // __syncthreads for the blockDim.x threads of the running block
  std::mutex m;
  std::condition_variable cv;
  unsigned n = 0, count = 0;
  uint64_t gen = 0;
  void wait() {
    std::unique_lock<std::mutex> l(m);
    uint64_t g = gen;
    if (++count == n) { count = 0; ++gen; cv.notify_all(); }
    else cv.wait(l, [&] { return gen != g; });
  }
};
inline Barrier barrier;
inline std::mutex launch_mu;

// kernel<<<grid, block>>>(...): the blocks one after another, each as `block` threads
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
  std::lock_guard<std::mutex> g(launch_mu);
  gridDim = grid; blockDim = block;
  barrier.n = block.x; barrier.count = 0;
  std::vector<std::thread> th;
  th.reserve(block.x);
  for (unsigned b = 0; b < grid.x; ++b) {
    blockIdx = dim3(b);
    th.clear();
    for (unsigned t = 0; t < block.x; ++t)
      th.emplace_back([t, &body] { threadIdx = dim3(t); body(); });
    for (auto& x : th) x.join();
  }
}

inline double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace pk_emu

inline void __syncthreads() { pk_emu::barrier.wait(); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicMax(unsigned* p, unsigned v) {
  unsigned old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
  return old;
}
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __double2float_rn(double d) { return static_cast<float>(d); }

// ---- runtime API ----
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorInvalidDevice = 101 };
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
                      cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };
// a stream: its queued work, of which the first `done` items have run
struct CUstream_st {
  std::vector<std::function<void()>> ops;
  size_t done = 0;
};
// an event: the work of `s` before position `upto` (recorded with no stream: complete at once)
struct CUevent_st {
  double ms = 0;
  CUstream_st* s = nullptr;
  size_t upto = 0;
};
typedef CUstream_st* cudaStream_t;
typedef CUevent_st* cudaEvent_t;
constexpr unsigned cudaStreamNonBlocking = 1, cudaEventDisableTiming = 2, cudaHostAllocDefault = 0;
struct cudaDeviceProp {
  char name[256];
  int major, minor, multiProcessorCount;
  size_t totalGlobalMem;
};

namespace pk_emu {
// fail_allocs_after = N > 0: the N-th allocation from then on fails (tests of the error paths)
inline int fail_allocs_after = 0;
// fail_reads_after = N > 0: the N-th file read (pread) from then on fails with EIO, whichever reader
// thread makes it (tests of the reader pool's error path)
inline std::atomic<int> fail_reads_after{0};
inline bool read_fails() {
  int n = fail_reads_after.load();
  while (n > 0 && !fail_reads_after.compare_exchange_weak(n, n - 1)) {}
  return n == 1;
}
// live_allocs: device + pinned allocations not yet freed (the leak checks of the tests read it)
inline std::atomic<long> live_allocs{0};
inline std::mutex alloc_mu;
inline cudaError_t alloc(void** p, size_t n) {
  {
    std::lock_guard<std::mutex> g(alloc_mu);
    if (fail_allocs_after > 0 && --fail_allocs_after == 0) { *p = nullptr; return cudaErrorMemoryAllocation; }
  }
  *p = std::aligned_alloc(256, (n + 255) / 256 * 256 + 256);
  if (!*p) return cudaErrorMemoryAllocation;
  ++live_allocs;
  return cudaSuccess;
}
inline cudaError_t release(void* p) {
  if (p) { --live_allocs; std::free(p); }
  return cudaSuccess;
}

inline std::recursive_mutex stream_mu;   // the queues (flushing can run a wait that flushes another stream)
inline std::set<CUstream_st*> streams;
// others_first: before a stream's work runs, every other stream's queued work runs (a GPU may run
// independent streams in any order: a later batch on another stream before an earlier one, unless a
// cudaStreamWaitEvent orders them). Off: each stream runs only when waited for (lazy).
inline bool others_first = false;
inline void flush(CUstream_st* s, size_t upto);
inline void flush_others(CUstream_st* s) {
  for (CUstream_st* o : streams)
    if (o != s && o->done < o->ops.size()) flush(o, o->ops.size());
}
// run s's queued work up to position `upto`
inline void flush(CUstream_st* s, size_t upto) {
  std::lock_guard<std::recursive_mutex> g(stream_mu);
  if (others_first && s->done < upto && s->done < s->ops.size()) {
    static thread_local int depth = 0;   // one level: the others' own flushes stay lazy
    if (depth == 0) { ++depth; flush_others(s); --depth; }
  }
  while (s->done < upto && s->done < s->ops.size()) {
    std::function<void()> op = std::move(s->ops[s->done]);
    ++s->done;   // before running: a wait inside op may flush this stream again
    op();
  }
}
inline void flush_all() {
  std::lock_guard<std::recursive_mutex> g(stream_mu);
  for (bool again = true; again;) {
    again = false;
    for (CUstream_st* s : streams)
      if (s->done < s->ops.size()) { flush(s, s->ops.size()); again = true; }
  }
}
// the legacy default stream (stream 0 / nullptr): asynchronous like the others, and, as on a GPU, not
// ordered with streams created cudaStreamNonBlocking (all of paramkit's)
inline CUstream_st* legacy() {
  static CUstream_st* l = [] {
    std::lock_guard<std::recursive_mutex> g(stream_mu);
    auto* p = new CUstream_st;
    streams.insert(p);
    return p;
  }();
  return l;
}
// work on stream s (nullptr: the legacy stream), queued
inline void enqueue(CUstream_st* s, std::function<void()> op) {
  std::lock_guard<std::recursive_mutex> g(stream_mu);
  (s ? s : legacy())->ops.push_back(std::move(op));
}
// kernel<<<grid, block, 0, stream>>>(args): the arguments converted to the kernel's parameter types and
// kept by value now, as a real launch does, then the grid run when the stream gets there
template <class... P, class... A>
void launch_on(cudaStream_t s, dim3 grid, dim3 block, void (*kernel)(P...), A&&... a) {
  auto args = std::make_tuple(P(std::forward<A>(a))...);
  enqueue(s, [=]() { launch(grid, block, [&]() { std::apply(kernel, args); }); });
}
}  // namespace pk_emu

inline cudaError_t cudaMalloc(void** p, size_t n) { return pk_emu::alloc(p, n); }
inline cudaError_t cudaHostAlloc(void** p, size_t n, unsigned) { return pk_emu::alloc(p, n); }
// cudaFree / cudaFreeHost synchronize the device first, as on a GPU
inline cudaError_t cudaFree(void* p) { pk_emu::flush_all(); return pk_emu::release(p); }
inline cudaError_t cudaFreeHost(void* p) { pk_emu::flush_all(); return pk_emu::release(p); }
// cudaMemcpy / cudaMemset run on the legacy stream: a device-to-device copy and a memset of device memory
// may return before they are done; a copy to or from host memory returns when it is done
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind k) {
  pk_emu::enqueue(nullptr, [=]() { if (n) std::memmove(d, s, n); });
  if (k != cudaMemcpyDeviceToDevice) pk_emu::flush(pk_emu::legacy(), pk_emu::legacy()->ops.size());
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t st = nullptr) {
  pk_emu::enqueue(st, [=]() { if (n) std::memmove(d, s, n); });
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* d, int v, size_t n) {
  pk_emu::enqueue(nullptr, [=]() { if (n) std::memset(d, v, n); });
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t st = nullptr) {
  pk_emu::enqueue(st, [=]() { if (n) std::memset(d, v, n); });
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  std::lock_guard<std::recursive_mutex> g(pk_emu::stream_mu);
  *s = new CUstream_st;
  pk_emu::streams.insert(*s);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (!s) s = pk_emu::legacy();
  pk_emu::flush(s, s->ops.size());
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {   // its queued work still completes
  std::lock_guard<std::recursive_mutex> g(pk_emu::stream_mu);
  pk_emu::flush(s, s->ops.size());
  pk_emu::streams.erase(s);
  delete s;
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr) {
  std::lock_guard<std::recursive_mutex> g(pk_emu::stream_mu);
  if (!s) s = pk_emu::legacy();
  pk_emu::enqueue(s, [e]() { e->ms = pk_emu::now_ms(); });
  e->s = s;
  e->upto = s->ops.size();
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (e->s) pk_emu::flush(e->s, e->upto);
  return cudaSuccess;
}
// stream s waits for e as recorded now: when s gets there, e's stream runs up to e first
inline cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  std::lock_guard<std::recursive_mutex> g(pk_emu::stream_mu);
  if (!e->s) return cudaSuccess;
  CUstream_st* from = e->s;
  size_t upto = e->upto;
  pk_emu::enqueue(s, [from, upto]() { pk_emu::flush(from, upto); });
  return cudaSuccess;
}
inline cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = new CUevent_st; return cudaSuccess; }
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {   // its record may still be queued: run up to it
  cudaEventSynchronize(e);
  delete e;
  return cudaSuccess;
}
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  cudaEventSynchronize(a);
  cudaEventSynchronize(b);
  *ms = float(b->ms - a->ms);
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
inline cudaError_t cudaDeviceSynchronize() { pk_emu::flush_all(); return cudaSuccess; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaRuntimeGetVersion(int* v) { *v = 0; return cudaSuccess; }
inline cudaError_t cudaDriverGetVersion(int* v) { *v = 0; return cudaSuccess; }
inline cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) { *free_b = size_t(4) << 30; *total_b = size_t(8) << 30; return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return cudaErrorInvalidDevice;
  std::memset(p, 0, sizeof *p);
  std::strcpy(p->name, "paramkit CUDA emulator (CPU threads)");
  p->major = 9; p->minor = 0; p->multiProcessorCount = 1; p->totalGlobalMem = size_t(8) << 30;
  return cudaSuccess;
}
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    default: return "cudaErrorInvalidValue";
  }
}
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : e == cudaErrorMemoryAllocation ? "out of memory (emulated)" : "error (emulated)";
}
