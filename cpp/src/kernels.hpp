// The hot per-byte loops of the CPU engine, compiled once per instruction set (baseline x86-64,
// AVX2+FMA) from kernels_impl.inl; select_kernels() picks the best one the CPU supports at run time.
#pragma once
#include <cstddef>
#include <cstdint>
#include "paramkit/diff.hpp"
#include "paramkit/quant.hpp"
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
  // Fake quantization of n float32 values (a piece that starts on a row, channel and group
  // boundary; rows of row_len, output channels of chan_len; spec.tensor_absmax set for the
  // per-tensor kinds), its error sums added to `sums`. base: nullptr, or the scheme-independent
  // sums of x (n, nonfinite, sum_w2; from decode_for_quant), which are then taken as they are.
  void (*quant)(const QuantSpec& spec, uint64_t row_len, uint64_t chan_len, const float* x, uint64_t n,
                const QuantSums* base, QuantSums& sums);
  // float32 decode of an 8/16/32/64-bit float piece; returns its finite absmax and sets `base`
  // to the scheme-independent sums (n, nonfinite, sum_w2; the rest zero).
  float (*decode_for_quant)(int dt, const uint8_t* p, size_t n, float* out, QuantSums& base);
  // nblocks whole blocks of GGML type t (one ggml_blocks.hpp dequantizes) -> float32
  void (*dequantize)(int t, const uint8_t* p, size_t nblocks, float* out);
  // n elements of plain dtype dt (dtype.hpp) -> their values as float64 (decode_to_double)
  void (*to_f64)(int dt, const uint8_t* p, size_t n, double* out);
  // the diff of n value pairs (diff.hpp diff_update, element i in lane i % 8, the lanes merged in order into
  // `sums`); d[i] = a[i] - b[i]
  void (*diff)(const double* a, const double* b, size_t n, double* d, DiffSums& sums);
  // n elements of F32, BF16 or F16 -> float32
  void (*to_f32)(int dt, const uint8_t* p, size_t n, float* out);
  // the fused diff of n float32 pairs (kernels_impl.inl): adds their DiffSums to `sums` and the statistics of
  // their float64 differences to `delta`; false, adding nothing, when a value is NaN or +-Inf
  bool (*diff_f32)(const float* a, const float* b, size_t n, DiffSums& sums, PieceStats& delta);
  // wide(F32, ...) of the dequantized values of nblocks whole blocks of GGML type t, bit for bit, dequantized a
  // cache-sized block at a time
  void (*ggml_stats)(int t, const uint8_t* p, size_t nblocks, PieceStats& out, uint32_t* qhist);
};

const Kernels& kernels_generic();
const Kernels& kernels_avx2();
const Kernels& select_kernels();   // honours PARAMKIT_ISA=generic|avx2 for testing

}  // namespace paramkit
