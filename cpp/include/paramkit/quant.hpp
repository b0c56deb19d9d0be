// Fake quantization (quantize + dequantize) of one group of float32 values and its error sums,
// written once for the CPU engine and the CUDA kernels; bit-exact with paramkit.quant.numpy_quant.
#pragma once
#include <math.h>
#include <stdint.h>

#include "config.hpp"
#include "dtype.hpp"
#include "exact_ops.hpp"

// Numerics (see ../../../python/paramkit/quant/numpy_quant.py, the oracle, and
// shared/quant-schemes.md): every float step is ONE correctly rounded float32 operation; nothing
// is fused (the host build uses -ffp-contract=off, device code calls the __f*_rn intrinsics,
// which nvcc never contracts); rounding helpers are exact bit/magic-number code so that they
// need no libm call on the host and give the same bits on the device.

namespace paramkit {

enum QuantKind : int {
  Q_INT8_TENSOR = 0, Q_INT8_CHANNEL = 1, Q_INT8_GROUP = 2, Q_INT4_GROUP = 3, Q_INT4_GROUP_ASYM = 4,
  Q_Q8_0 = 5, Q_Q4_0 = 6, Q_NF4 = 7, Q_FP8_E4M3 = 8, Q_KIND_COUNT = 9
};

// kind: a QuantKind. group: elements per group (32 for q8_0/q4_0, 64 for nf4, N for int*_gN;
// ignored by the tensor / channel kinds). tensor_absmax: the finite max |x| of the WHOLE tensor
// (int8_tensor, fp8_e4m3 only; finite and >= 0).
struct QuantSpec {
  int kind;
  int group;
  float tensor_absmax;
};

// Mergeable error sums over the finite input elements w with fake-quantized value q (float64):
// sse = Σ(w-q)², sum_w2 = Σw², sum_q2 = Σq², sum_wq = Σw·q, max_abs_err = max|w-q|;
// n = finite elements, nonfinite = NaN/±Inf elements, clipped = finite elements whose code
// (rounded without the range limit) lay outside the code range, scale_clamped = fp16 scales
// clamped into [2^-24, 65504]. A trivial type (zero it with `QuantSums s{}` or quant_sums_clear)
// so that it can live in __shared__ memory.
struct QuantSums {
  double sse, sum_w2, sum_q2, sum_wq, max_abs_err;
  uint64_t n, nonfinite, clipped, scale_clamped;
};

PK_HD PK_INLINE void quant_sums_clear(QuantSums& s) {
  s.sse = s.sum_w2 = s.sum_q2 = s.sum_wq = s.max_abs_err = 0.0;
  s.n = s.nonfinite = s.clipped = s.scale_clamped = 0;
}
PK_HD PK_INLINE QuantSums quant_sums_zero() {
  QuantSums s;
  quant_sums_clear(s);
  return s;
}

namespace qdetail {

// one correctly rounded operation each (exact_ops.hpp)
using exact::dadd;
using exact::dmul;
using exact::dsub;
using exact::fadd;
using exact::fdiv;
using exact::fmul;
using exact::fsub;

// ---- classification and sign by bits (immune to -ffast-math) ---------------------------------
PK_HD PK_INLINE bool is_nan(float x) { return (f32_to_bits(x) & 0x7FFFFFFFu) > 0x7F800000u; }
PK_HD PK_INLINE bool is_finite(float x) { return (f32_to_bits(x) & 0x7F800000u) != 0x7F800000u; }
PK_HD PK_INLINE float fabs_(float x) { return bits_to_f32(f32_to_bits(x) & 0x7FFFFFFFu); }
PK_HD PK_INLINE float copysign_(float mag, float sgn) {
  return bits_to_f32((f32_to_bits(mag) & 0x7FFFFFFFu) | (f32_to_bits(sgn) & 0x80000000u));
}
// 2^k for -126 <= k <= 127
PK_HD PK_INLINE float pow2f(int k) { return bits_to_f32(uint32_t(k + 127) << 23); }

// ---- exact rounding to integers (current rounding mode = nearest even) ------------------------
// rint: half to even; -0 kept for a negative tie to 0 (like C rintf / np.rint); NaN, ±Inf kept.
PK_HD PK_INLINE float rint_(float t) {
#ifdef __CUDA_ARCH__
  return rintf(t);
#else
  float a = fabs_(t);
  if (!(a < 8388608.0f)) return t;          // |t| >= 2^23 is an integer already; NaN, Inf
  float r = fsub(fadd(a, 8388608.0f), 8388608.0f);
  return copysign_(r, t);
#endif
}
// trunc toward zero; sign kept (trunc(-0.5) = -0); NaN, ±Inf kept.
PK_HD PK_INLINE float trunc_(float t) {
#ifdef __CUDA_ARCH__
  return truncf(t);
#else
  float a = fabs_(t);
  if (!(a < 8388608.0f)) return t;
  float r = fsub(fadd(a, 8388608.0f), 8388608.0f);
  if (r > a) r = fsub(r, 1.0f);
  return copysign_(r, t);
#endif
}
// floor of a >= 0 (or NaN / +Inf, returned as they are)
PK_HD PK_INLINE float floor_nonneg(float a) { return trunc_(a); }

// C roundf (half away from zero) exactly as the oracle writes it: floor(|t|) + (|t|-floor >= 0.5),
// sign of t copied back.
PK_HD PK_INLINE float round_half_away(float t) {
  float a = fabs_(t);
  float f = floor_nonneg(a);
  float r = fadd(f, fsub(a, f) >= 0.5f ? 1.0f : 0.0f);
  return copysign_(r, t);
}

// numpy's clip for float32: NaN passes, and a bound replaces x only when x is strictly beyond it
// (so clip(-0, 0, 15) stays -0, as np.clip does).
PK_HD PK_INLINE float clip_(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

}  // namespace qdetail

// ---- fp16 storage of a scale -----------------------------------------------------------------
// float32 -> IEEE binary16 bits, round to nearest even (subnormals, overflow to Inf, NaN quiet).
PK_HD PK_INLINE uint16_t f32_to_f16_bits(float f) {
  uint32_t b = f32_to_bits(f);
  uint32_t sign = (b >> 16) & 0x8000u, a = b & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return uint16_t(sign | 0x7E00u | ((a >> 13) & 0x3FFu));  // NaN
  if (a >= 0x477FF000u) return uint16_t(sign | 0x7C00u);  // >= 65520 (and Inf): Inf
  if (a < 0x38800000u) {                                   // below 2^-14: subnormal or zero
    // |f|·2^24 is exact; rounding it to an integer is the subnormal code (1024 = 2^-14, also right)
    float v = qdetail::rint_(qdetail::fmul(bits_to_f32(a), 16777216.0f));
    return uint16_t(sign | uint32_t(v));
  }
  uint32_t r = a + 0xFFFu + ((a >> 13) & 1u);              // round the 13 dropped bits, ties even
  return uint16_t(sign | ((r - (112u << 23)) >> 13));
}

// The scale as stored in fp16, back in float32: fp16(scale) with |scale| clamped to
// [2^-24, 65504] where the conversion gives 0 (scale != 0) or Inf; each clamp adds 1 to clamped.
PK_HD PK_INLINE float fp16_stored(float scale, uint64_t& clamped) {
  float s16 = decode_f16(f32_to_f16_bits(scale));
  if (s16 == 0.0f && scale != 0.0f) { ++clamped; return qdetail::copysign_(5.9604644775390625e-08f, scale); }
  if (!qdetail::is_finite(s16) && !qdetail::is_nan(s16)) { ++clamped; return qdetail::copysign_(65504.0f, scale); }
  return s16;
}

// ---- FP8 E4M3FN ------------------------------------------------------------------------------
// Round float32 y with |y| <= 448 (or NaN) to the nearest OCP E4M3FN value, ties to even:
// the quantum is 2^(max(floor(log2|y|), -6) - 3); scaling by powers of two is exact.
PK_HD PK_INLINE float round_e4m3(float y) {
  if (qdetail::is_nan(y)) return y;
  float a = qdetail::fabs_(y);
  int e = int((f32_to_bits(a) >> 23) & 0xFFu) - 127;       // floor(log2 a); -127 for 0/subnormal
  int qe = (e > -6 ? e : -6) - 3;                          // in [-9, 5] for a <= 448
  float r = qdetail::fmul(qdetail::rint_(qdetail::fmul(a, qdetail::pow2f(-qe))), qdetail::pow2f(qe));
  return qdetail::copysign_(r, y);
}

// ---- NF4 -------------------------------------------------------------------------------------
// The 16 NF4 codes (bitsandbytes) and the 15 thresholds between them: float64 midpoints of
// neighbouring codes rounded to float32. index = number of thresholds strictly below y
// (np.searchsorted side="left"), so a y exactly on a threshold takes the lower code.
PK_HD PK_INLINE float nf4_code(int i) {
  switch (i) {
    case 0: return -1.0f;
    case 1: return -0x1.647362p-1f;   // -0.6961928009986877
    case 2: return -0x1.0cd66p-1f;    // -0.5250730514526367
    case 3: return -0x1.94654p-2f;    // -0.39491748809814453
    case 4: return -0x1.23449ap-2f;   // -0.28444138169288635
    case 5: return -0x1.7a6a7ep-3f;   // -0.18477343022823334
    case 6: return -0x1.74f0e2p-4f;   // -0.09105003625154495
    case 7: return 0.0f;
    case 8: return 0x1.45f5fep-4f;    // 0.07958029955625534
    case 9: return 0x1.4995c6p-3f;    // 0.16093020141124725
    case 10: return 0x1.f809bap-3f;   // 0.24611230194568634
    case 11: return 0x1.5a0674p-2f;   // 0.33791524171829224
    case 12: return 0x1.c3497p-2f;    // 0.44070982933044434
    case 13: return 0x1.200f56p-1f;   // 0.5626170039176941
    case 14: return 0x1.722766p-1f;   // 0.7229568362236023
    default: return 1.0f;
  }
}
PK_HD PK_INLINE int nf4_index(float y) {
  return int(y > -0x1.b239bp-1f) + int(y > -0x1.38a4ep-1f) + int(y > -0x1.d709p-2f) +
         int(y > -0x1.5bd4ecp-2f) + int(y > -0x1.e079d8p-3f) + int(y > -0x1.1a7178p-3f) +
         int(y > -0x1.74f0e2p-5f) + int(y > 0x1.45f5fep-5f) + int(y > 0x1.ec90c4p-4f) +
         int(y > 0x1.a0cfcp-3f) + int(y > 0x1.2b05a8p-2f) + int(y > 0x1.8ea7f2p-2f) +
         int(y > 0x1.00da08p-1f) + int(y > 0x1.491b5ep-1f) + int(y > 0x1.b913b4p-1f);
}

// ---- statistics of a run ---------------------------------------------------------------------
// max |x| over the finite elements (0 when there is none): the tensor_absmax of int8_tensor /
// fp8_e4m3 (max is exact, so pieces combine with max in any order).
PK_HD PK_INLINE float quant_finite_absmax(const float* x, int64_t len) {
  float m = 0.0f;
  for (int64_t i = 0; i < len; ++i) {
    float v = x[i];
    if (qdetail::is_finite(v)) { float a = qdetail::fabs_(v); if (a > m) m = a; }
  }
  return m;
}

PK_HD PK_INLINE bool quant_kind_valid(int kind) { return kind >= 0 && kind < Q_KIND_COUNT; }
// scale from QuantSpec::tensor_absmax (the streaming engine needs the tensor's absmax first)
PK_HD PK_INLINE bool quant_kind_needs_tensor_absmax(int kind) { return kind == Q_INT8_TENSOR || kind == Q_FP8_E4M3; }
// groups along the row with a short last group, restarted at every row
PK_HD PK_INLINE bool quant_kind_row_groups(int kind) {
  return kind == Q_INT8_GROUP || kind == Q_INT4_GROUP || kind == Q_INT4_GROUP_ASYM || kind == Q_Q8_0 || kind == Q_Q4_0;
}
// ggml block types: the row length must be a multiple of the block (32)
PK_HD PK_INLINE bool quant_kind_ggml(int kind) { return kind == Q_Q8_0 || kind == Q_Q4_0; }

// Add one element (w original, q fake-quantized) to the sums, in float64; non-finite w only count.
PK_HD PK_INLINE void quant_sums_add(QuantSums& s, float w, float q) {
  using namespace qdetail;
  if (!is_finite(w)) { ++s.nonfinite; return; }
  double w64 = double(w), q64 = double(q);
  double e = dsub(w64, q64);
  ++s.n;
  s.sse = dadd(s.sse, dmul(e, e));
  s.sum_w2 = dadd(s.sum_w2, dmul(w64, w64));
  s.sum_q2 = dadd(s.sum_q2, dmul(q64, q64));
  s.sum_wq = dadd(s.sum_wq, dmul(w64, q64));
  double ae = e < 0 ? -e : e;
  if (ae > s.max_abs_err || ae != ae) s.max_abs_err = ae;   // a NaN sticks, as in np.max
}

// Sums of two disjoint parts: counts and float64 sums add, max_abs_err takes the max (NaN wins).
PK_HD PK_INLINE void merge_quant_sums(QuantSums& a, const QuantSums& b) {
  using namespace qdetail;
  a.sse = dadd(a.sse, b.sse); a.sum_w2 = dadd(a.sum_w2, b.sum_w2);
  a.sum_q2 = dadd(a.sum_q2, b.sum_q2); a.sum_wq = dadd(a.sum_wq, b.sum_wq);
  if (b.max_abs_err > a.max_abs_err || b.max_abs_err != b.max_abs_err) a.max_abs_err = b.max_abs_err;
  a.n += b.n; a.nonfinite += b.nonfinite; a.clipped += b.clipped; a.scale_clamped += b.scale_clamped;
}

namespace qdetail {

PK_HD PK_INLINE void emit(float* out, int64_t i, float w, float v, QuantSums& s) {
  if (out) out[i] = v;
  quant_sums_add(s, w, v);
}

// Symmetric integer code: q = clamp(rint(x·inv) or rint(x/scale), qmin, qmax) (+0 for -0),
// value q·stored. A zero scale or x = 0 gives code 0; NaN stays NaN; ±Inf take the extreme code.
template <bool Reciprocal>
PK_HD PK_INLINE void symmetric_run(const float* x, int64_t len, float scale, float inv, float stored,
                                   float qmin, float qmax, float* out, QuantSums& s) {
  for (int64_t i = 0; i < len; ++i) {
    float w = x[i];
    float q = rint_(Reciprocal ? fmul(w, inv) : fdiv(w, scale));
    bool nan = is_nan(w);
    if ((scale == 0.0f || w == 0.0f) && !nan) q = 0.0f;
    if (is_finite(w) && (q < qmin || q > qmax)) ++s.clipped;
    q = fadd(clip_(q, qmin, qmax), 0.0f);
    emit(out, i, w, fmul(q, stored), s);
  }
}

PK_HD PK_INLINE void int8_reciprocal(const float* x, int64_t len, float amax, float* out, QuantSums& s) {
  float scale = fdiv(amax, 127.0f);
  float inv = fdiv(1.0f, scale);
  symmetric_run<true>(x, len, scale, inv, scale, -127.0f, 127.0f, out, s);
}

PK_HD PK_INLINE void int_group(const float* x, int64_t len, float qmin, float qmax, float* out, QuantSums& s) {
  float scale = fdiv(quant_finite_absmax(x, len), qmax);
  float stored = fp16_stored(scale, s.scale_clamped);
  symmetric_run<false>(x, len, scale, 0.0f, stored, qmin, qmax, out, s);
}

// GPTQ-style asymmetric int4: range [min(xmin,0), max(xmax,0)] (-1/+1 when both are 0),
// scale = (xmax-xmin)/15, zero = rint(-xmin/scale), q = clamp(rint(x/scale)+zero, 0, 15),
// value fp16(scale)·(q-zero); a scale that underflows to 0 gives exact zeros.
PK_HD PK_INLINE void int4_asym(const float* x, int64_t len, float* out, QuantSums& s) {
  float xmin = 0.0f, xmax = 0.0f;
  for (int64_t i = 0; i < len; ++i) {
    float v = x[i];
    if (is_finite(v)) { if (v < xmin) xmin = v; if (v > xmax) xmax = v; }
  }
  if (xmin == 0.0f && xmax == 0.0f) { xmin = -1.0f; xmax = 1.0f; }
  float scale = fdiv(fsub(xmax, xmin), 15.0f);
  bool zscale = scale == 0.0f;
  float safe = zscale ? 1.0f : scale;
  float zero = zscale ? 0.0f : rint_(fdiv(-xmin, safe));
  float stored = fp16_stored(scale, s.scale_clamped);
  for (int64_t i = 0; i < len; ++i) {
    float w = x[i];
    float q = fadd(rint_(fdiv(w, safe)), zero);
    bool nan = is_nan(w);
    if (is_finite(w) && (q < 0.0f || q > 15.0f)) ++s.clipped;
    q = clip_(q, 0.0f, 15.0f);
    float v = fmul(stored, fsub(q, zero));
    if (zscale && !nan) v = 0.0f;
    emit(out, i, w, v, s);
  }
}

// ggml Q8_0: d = amax/127, q = roundf(x·(1/d)) (half away from zero), value q·fp16(d).
// A subnormal d whose reciprocal overflows would turn x = 0 into 0·Inf = NaN (ggml does); like the oracle,
// zeros are kept exactly 0 instead (q4_0 too; a documented deviation).
PK_HD PK_INLINE void q8_0(const float* x, int64_t len, float* out, QuantSums& s) {
  float d = fdiv(quant_finite_absmax(x, len), 127.0f);
  float inv = d == 0.0f ? 0.0f : fdiv(1.0f, d);
  float stored = fp16_stored(d, s.scale_clamped);
  for (int64_t i = 0; i < len; ++i) {
    float w = x[i];
    float q = round_half_away(fmul(w, inv));
    if ((d == 0.0f || w == 0.0f) && !is_nan(w)) q = 0.0f;   // 0·Inf when 1/d overflows
    if (is_finite(w) && fabs_(q) > 127.0f) ++s.clipped;
    q = fadd(clip_(q, -127.0f, 127.0f), 0.0f);
    emit(out, i, w, fmul(q, stored), s);
  }
}

// ggml Q4_0: m = the first element of largest |x| (sign kept, non-finite read as +0), d = m/-8,
// q = min(15, trunc(x·(1/d) + 8.5)) with x·id and +8.5 rounded separately, value (q-8)·fp16(d).
PK_HD PK_INLINE void q4_0(const float* x, int64_t len, float* out, QuantSums& s) {
  float m = 0.0f, amax = -1.0f;
  for (int64_t i = 0; i < len; ++i) {
    float v = is_finite(x[i]) ? x[i] : 0.0f;
    float a = fabs_(v);
    if (a > amax) { amax = a; m = v; }
  }
  float d = fdiv(m, -8.0f);
  float inv = d == 0.0f ? 0.0f : fdiv(1.0f, d);
  float stored = fp16_stored(d, s.scale_clamped);
  for (int64_t i = 0; i < len; ++i) {
    float w = x[i];
    float t = fadd(fmul(w, inv), 8.5f);
    if ((d == 0.0f || w == 0.0f) && !is_nan(w)) t = 8.5f;   // 0·Inf when 1/d overflows
    float q = trunc_(t);
    if (is_finite(w) && (q > 15.0f || q < 0.0f)) ++s.clipped;
    q = clip_(q, 0.0f, 15.0f);
    emit(out, i, w, fmul(fsub(q, 8.0f), stored), s);
  }
}

// bitsandbytes NF4: y = x·(1/absmax), nearest code (ties to the lower), value code·absmax.
PK_HD PK_INLINE void nf4(const float* x, int64_t len, float* out, QuantSums& s) {
  float absmax = quant_finite_absmax(x, len);
  float inv = fdiv(1.0f, absmax == 0.0f ? 1.0f : absmax);
  for (int64_t i = 0; i < len; ++i) {
    float w = x[i];
    float v;
    if (is_nan(w)) {
      v = w;
    } else {
      int idx = (absmax == 0.0f || w == 0.0f) ? 7 : nf4_index(fmul(w, inv));
      v = fmul(nf4_code(idx), absmax);
    }
    emit(out, i, w, v, s);
  }
}

// FP8 E4M3FN with the per-tensor scale amax/448: saturate(x/scale) rounded to E4M3, ·scale.
PK_HD PK_INLINE void fp8_e4m3(const float* x, int64_t len, float amax, float* out, QuantSums& s) {
  float scale = fdiv(amax, 448.0f);
  for (int64_t i = 0; i < len; ++i) {
    float w = x[i];
    float v;
    if (scale == 0.0f) {
      v = is_nan(w) ? w : 0.0f;
    } else {
      float y = fdiv(w, scale);
      if (is_finite(w) && fabs_(y) > 464.0f) ++s.clipped;   // beyond what RNE keeps at 448
      v = fmul(round_e4m3(clip_(y, -448.0f, 448.0f)), scale);
    }
    emit(out, i, w, v, s);
  }
}

}  // namespace qdetail

// Fake-quantize `len` consecutive float32 values x[0..len) that start at a scale boundary:
//   int8_tensor, fp8_e4m3   any run of the tensor; scale from spec.tensor_absmax
//   int8_channel            exactly one output channel (one row of [shape[0], numel/shape[0]])
//   int8/int4 group, asym,  one row (or the start of one): consecutive groups of spec.group,
//   q8_0, q4_0              the last one short if len is not a multiple (ggml callers check rows)
//   nf4                     a run of the flattened tensor: blocks of spec.group (short last block)
// Writes the dequantized values to out[0..len) when out != nullptr and adds every element, in
// order, to `sums`. Unknown kinds leave out and sums untouched.
PK_HD PK_INLINE void quant_group(const QuantSpec& spec, const float* x, int64_t len, float* out, QuantSums& sums) {
  if (len <= 0) return;
  switch (spec.kind) {
    case Q_INT8_TENSOR: qdetail::int8_reciprocal(x, len, spec.tensor_absmax, out, sums); return;
    case Q_INT8_CHANNEL: qdetail::int8_reciprocal(x, len, quant_finite_absmax(x, len), out, sums); return;
    case Q_FP8_E4M3: qdetail::fp8_e4m3(x, len, spec.tensor_absmax, out, sums); return;
    default: break;
  }
  if (!quant_kind_valid(spec.kind)) return;
  int64_t g = spec.group > 0 ? int64_t(spec.group) : len;
  for (int64_t a = 0; a < len; a += g) {
    int64_t n = len - a < g ? len - a : g;
    const float* xs = x + a;
    float* os = out ? out + a : nullptr;
    switch (spec.kind) {
      case Q_INT8_GROUP: qdetail::int_group(xs, n, -127.0f, 127.0f, os, sums); break;
      case Q_INT4_GROUP: qdetail::int_group(xs, n, -8.0f, 7.0f, os, sums); break;
      case Q_INT4_GROUP_ASYM: qdetail::int4_asym(xs, n, os, sums); break;
      case Q_Q8_0: qdetail::q8_0(xs, n, os, sums); break;
      case Q_Q4_0: qdetail::q4_0(xs, n, os, sums); break;
      case Q_NF4: qdetail::nf4(xs, n, os, sums); break;
      default: return;
    }
  }
}

}  // namespace paramkit
