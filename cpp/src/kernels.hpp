// The hot per-byte loops of the CPU engine, compiled once per instruction set (baseline x86-64,
// AVX2+FMA) from kernels_impl.inl; select_kernels() picks the best one the CPU supports at run time.
#pragma once
#include <cstddef>
#include <cstdint>
#include "paramkit/stats.hpp"

namespace paramkit {

struct Kernels {
  const char* isa;
  // Bit-pattern histograms of 8- and 16-bit elements into 4 interleaved sub-histograms
  // (h + k*256 / h + k*65536, k = 0..3) so runs of equal values do not serialise on one counter.
  void (*hist8)(const uint8_t* p, size_t n, uint32_t* h);
  void (*hist16)(const uint8_t* p, size_t n, uint32_t* h);
  // Exact statistics of a piece of a 32/64-bit tensor; with qhist, also its bf16-prefix histogram.
  void (*wide)(int dt, const uint8_t* p, size_t n, PieceStats& out, uint32_t* qhist);
};

const Kernels& kernels_generic();
const Kernels& kernels_avx2();
const Kernels& select_kernels();   // honours PARAMKIT_ISA=generic|avx2 for testing

}  // namespace paramkit
