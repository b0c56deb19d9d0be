// GGML block dequantizers, written once for the CPU engine and the CUDA kernels: one block of a GGUF tensor's
// bytes -> its float32 values, bit-identical to gguf-py's gguf.quants.dequantize (the oracle; the tests check
// every type on random and real blocks). Each float step is the oracle's, in its order, one correctly rounded
// float32 operation (exact_ops.hpp): Q4_1 is (d * q) + m, the K types (d * sc) * q - (dmin * m).
#pragma once
#include <stdint.h>

#include "config.hpp"
#include "dtype.hpp"
#include "exact_ops.hpp"

namespace paramkit {

// GGML type ids (the GGUF tensor type field; ggml.h's enum ggml_type)
enum GgmlType : int {
  GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q5_0 = 6, GGML_Q5_1 = 7, GGML_Q8_0 = 8, GGML_Q2_K = 10, GGML_Q3_K = 11,
  GGML_Q4_K = 12, GGML_Q5_K = 13, GGML_Q6_K = 14, GGML_IQ4_NL = 20, GGML_IQ4_XS = 23, GGML_MXFP4 = 39
};

namespace ggml {

using exact::fadd;
using exact::fmul;
using exact::fsub;

PK_HD PK_INLINE float f16_at(const uint8_t* p) { return decode_f16(uint16_t(p[0] | (p[1] << 8))); }

// the 4-bit code of element j of a 32-element run packed as low nibbles of bytes 0..15, then high nibbles
PK_HD PK_INLINE int nibble32(const uint8_t* qs, int j) { return j < 16 ? (qs[j] & 0xF) : (qs[j - 16] >> 4); }

PK_HD PK_INLINE int8_t iq4nl_value(int k) {
  const int8_t v[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  return v[k];
}
PK_HD PK_INLINE int8_t e2m1x2_value(int k) {   // MXFP4's E2M1 values, doubled
  const int8_t v[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  return v[k];
}

// Q4_K / Q5_K: the 6-bit scale and min of sub-block i (0..7) from the 12 packed bytes
PK_HD PK_INLINE void k_scale_min(const uint8_t* s, int i, int& sc, int& mn) {
  if (i < 4) { sc = s[i] & 0x3F; mn = s[i + 4] & 0x3F; }
  else { sc = (s[i + 4] & 0x0F) | ((s[i - 4] >> 2) & 0x30); mn = (s[i + 4] >> 4) | ((s[i] >> 2) & 0x30); }
}

// The 32-element types loop over the two halves of a run (low nibbles, then high), a fixed shift each, so the
// compiler vectorises them; element j = 16 h + k is nibble32(qs, j).
PK_HD PK_INLINE void q4_0(const uint8_t* b, float* y) {
  float d = f16_at(b);
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 16; ++k) y[16 * h + k] = fmul(d, float(((b[2 + k] >> (4 * h)) & 0xF) - 8));
}
PK_HD PK_INLINE void q4_1(const uint8_t* b, float* y) {
  float d = f16_at(b), m = f16_at(b + 2);
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 16; ++k) y[16 * h + k] = fadd(fmul(d, float((b[4 + k] >> (4 * h)) & 0xF)), m);
}
PK_HD PK_INLINE uint32_t u32_at(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
PK_HD PK_INLINE void q5_0(const uint8_t* b, float* y) {
  float d = f16_at(b);
  uint32_t qh = u32_at(b + 2);
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 16; ++k) {
      const int j = 16 * h + k;
      y[j] = fmul(d, float(int(((b[6 + k] >> (4 * h)) & 0xF) | (((qh >> j) & 1) << 4)) - 16));
    }
}
PK_HD PK_INLINE void q5_1(const uint8_t* b, float* y) {
  float d = f16_at(b), m = f16_at(b + 2);
  uint32_t qh = u32_at(b + 4);
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 16; ++k) {
      const int j = 16 * h + k;
      y[j] = fadd(fmul(d, float(((b[8 + k] >> (4 * h)) & 0xF) | (((qh >> j) & 1) << 4))), m);
    }
}
PK_HD PK_INLINE void q8_0(const uint8_t* b, float* y) {
  float d = f16_at(b);
  for (int j = 0; j < 32; ++j) y[j] = fmul(float(int8_t(b[2 + j])), d);
}
// The 256-element types: value j = 128 g + 32 r + 16 h + k takes 2 bits at shift 2r of qs[32 g + 16 h + k] and the
// scale of sub-block j / 16 = 8 g + 2 r + h; one scale and fixed shifts per 16-value inner loop (vectorised).
PK_HD PK_INLINE void q2_k(const uint8_t* b, float* y) {   // scales[16] qs[64] d dmin
  const uint8_t *sc = b, *qs = b + 16;
  float d = f16_at(b + 80), dmin = f16_at(b + 82);
  for (int g = 0; g < 2; ++g)
    for (int r = 0; r < 4; ++r)
      for (int h = 0; h < 2; ++h) {
        const int i = 8 * g + 2 * r + h;
        const float dl = fmul(d, float(sc[i] & 0xF)), ml = fmul(dmin, float(sc[i] >> 4));
        const uint8_t* q = qs + 32 * g + 16 * h;
        float* o = y + 128 * g + 32 * r + 16 * h;
        for (int k = 0; k < 16; ++k) o[k] = fsub(fmul(dl, float((q[k] >> (2 * r)) & 3)), ml);
      }
}
PK_HD PK_INLINE void q3_k(const uint8_t* b, float* y) {   // hmask[32] qs[64] scales[12] d
  const uint8_t *hm = b, *qs = b + 32, *s = b + 96;
  float d = f16_at(b + 108);
  for (int g = 0; g < 2; ++g)
    for (int r = 0; r < 4; ++r)
      for (int h = 0; h < 2; ++h) {
        const int i = 8 * g + 2 * r + h, bit = 4 * g + r;   // the high bit: bit j / 32 of hm[j % 32]
        const int lo = i < 8 ? (s[i] & 0xF) : (s[i - 8] >> 4);
        const int hi = (s[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
        const float dl = fmul(d, float(int8_t(uint8_t(lo | (hi << 4))) - 32));
        const uint8_t *q = qs + 32 * g + 16 * h, *m = hm + 16 * h;
        float* o = y + 128 * g + 32 * r + 16 * h;
        for (int k = 0; k < 16; ++k) {
          const int ql = (q[k] >> (2 * r)) & 3, hb = ((m[k] >> bit) & 1) ^ 1;
          o[k] = fmul(dl, float(ql - (hb << 2)));
        }
      }
}
PK_HD PK_INLINE void q4_k(const uint8_t* b, float* y) {   // d dmin scales[12] qs[128]
  float d = f16_at(b), dmin = f16_at(b + 2);
  const uint8_t *s = b + 4, *qs = b + 16;
  // sub-block i (32 values): the low (i even) or high (i odd) nibbles of qs[32 * (i / 2) ...]; one fixed shift
  // per inner loop, so the compiler vectorises it
  for (int i = 0; i < 8; ++i) {
    int sc, mn;
    k_scale_min(s, i, sc, mn);
    const float ds = fmul(d, float(sc)), dm = fmul(dmin, float(mn));
    const uint8_t* q = qs + 32 * (i >> 1);
    const int sh = 4 * (i & 1);
    float* o = y + 32 * i;
    for (int k = 0; k < 32; ++k) o[k] = fsub(fmul(ds, float((q[k] >> sh) & 0xF)), dm);
  }
}
PK_HD PK_INLINE void q5_k(const uint8_t* b, float* y) {   // d dmin scales[12] qh[32] qs[128]
  float d = f16_at(b), dmin = f16_at(b + 2);
  const uint8_t *s = b + 4, *qh = b + 16, *qs = b + 48;
  for (int i = 0; i < 8; ++i) {   // as q4_k, the fifth bit from bit i of qh[k]
    int sc, mn;
    k_scale_min(s, i, sc, mn);
    const float ds = fmul(d, float(sc)), dm = fmul(dmin, float(mn));
    const uint8_t* q = qs + 32 * (i >> 1);
    const int sh = 4 * (i & 1);
    float* o = y + 32 * i;
    for (int k = 0; k < 32; ++k) o[k] = fsub(fmul(ds, float(((q[k] >> sh) & 0xF) | (((qh[k] >> i) & 1) << 4))), dm);
  }
}
PK_HD PK_INLINE void q6_k(const uint8_t* b, float* y) {   // ql[128] qh[64] scales[16] (int8) d
  const uint8_t *ql = b, *qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  float d = f16_at(b + 208);
  // value j = 128 g + 32 r + k (g 0..1, r 0..3, k 0..31): low 4 bits from nibble r / 2 of ql[64 g + 32 (r & 1) + k],
  // high 2 bits from bits 2r of qh[32 g + k], scale sc[j / 16]; fixed shifts per inner loop (vectorised)
  for (int g = 0; g < 2; ++g)
    for (int r = 0; r < 4; ++r)
      for (int h = 0; h < 2; ++h) {
        const float ds = fmul(d, float(sc[8 * g + 2 * r + h]));
        const uint8_t* lo = ql + 64 * g + 32 * (r & 1) + 16 * h;
        const uint8_t* hi = qh + 32 * g + 16 * h;
        const int ls = 4 * (r >> 1), hs = 2 * r;
        float* o = y + 128 * g + 32 * r + 16 * h;
        for (int k = 0; k < 16; ++k) {
          const int q = int(int8_t(uint8_t(((lo[k] >> ls) & 0xF) | (((hi[k] >> hs) & 3) << 4)))) - 32;
          o[k] = fmul(ds, float(q));
        }
      }
}
PK_HD PK_INLINE void iq4_nl(const uint8_t* b, float* y) {
  float d = f16_at(b);
  for (int j = 0; j < 32; ++j) y[j] = fmul(d, float(iq4nl_value(nibble32(b + 2, j))));
}
PK_HD PK_INLINE void iq4_xs(const uint8_t* b, float* y) {   // d scales_h(u16) scales_l[4] qs[128]
  float d = f16_at(b);
  unsigned sh = unsigned(b[2]) | (unsigned(b[3]) << 8);
  const uint8_t *sl = b + 4, *qs = b + 8;
  for (int i = 0; i < 8; ++i) {
    int lo = (sl[i >> 1] >> (4 * (i & 1))) & 0xF, hi = (sh >> (2 * i)) & 3;
    float dl = fmul(d, float(int(int8_t(uint8_t(lo | (hi << 4)))) - 32));
    for (int k = 0; k < 32; ++k) {
      int s = k >> 4, q = (qs[i * 16 + (k & 15)] >> (4 * s)) & 0xF;
      y[i * 32 + k] = fmul(dl, float(iq4nl_value(q)));
    }
  }
}
PK_HD PK_INLINE void mxfp4(const uint8_t* b, float* y) {   // e (E8M0) qs[16]
  unsigned e = b[0];
  float d = bits_to_f32(e < 2 ? (0x00200000u << e) : ((e - 1) << 23));
  for (int j = 0; j < 32; ++j) y[j] = fmul(d, float(e2m1x2_value(nibble32(b + 1, j))));
}

}  // namespace ggml

// Elements and bytes per block of a GGML type this file dequantizes; {0, 0} for any other type.
struct GgmlBlock { int elements, bytes; };
PK_HD PK_INLINE GgmlBlock ggml_block(int t) {
  switch (t) {
    case GGML_Q4_0: return {32, 18};   case GGML_Q4_1: return {32, 20};   case GGML_Q5_0: return {32, 22};
    case GGML_Q5_1: return {32, 24};   case GGML_Q8_0: return {32, 34};   case GGML_IQ4_NL: return {32, 18};
    case GGML_MXFP4: return {32, 17};  case GGML_Q2_K: return {256, 84};  case GGML_Q3_K: return {256, 110};
    case GGML_Q4_K: return {256, 144}; case GGML_Q5_K: return {256, 176}; case GGML_Q6_K: return {256, 210};
    case GGML_IQ4_XS: return {256, 136};
    default: return {0, 0};
  }
}

// The engine dtype id of a GGML block type is GGML_DTYPE_BASE + its GGML type id (python/paramkit/dtypes.py
// derives the same ids; tests/test_gguf_stats.py checks that both sides agree on which types have one).
constexpr int GGML_DTYPE_BASE = 64;
// The GGML type of an engine dtype id, -1 when it is no block type with a dequantizer here.
PK_HD PK_INLINE int ggml_type_of_dtype(int dt) {
  return dt >= GGML_DTYPE_BASE && ggml_block(dt - GGML_DTYPE_BASE).elements ? dt - GGML_DTYPE_BASE : -1;
}

// How the engines cut a task's bytes: units of `bytes` bytes holding `elements` values of dtype `values`
// (a GGML block type: whole blocks, dequantized to float32 and then reduced and quantized as F32; every other
// dtype: single elements of its own). The one place both engines and the task checks derive this from.
struct StorageUnit { int ggml; uint64_t bytes, elements; int values; };
PK_HD PK_INLINE StorageUnit storage_unit(int dt) {
  const int g = ggml_type_of_dtype(dt);
  if (g < 0) return {-1, uint64_t(dtype_size(dt)), 1, dt};
  const GgmlBlock b = ggml_block(g);
  return {g, uint64_t(b.bytes), uint64_t(b.elements), F32};
}

// One block of type t at `block` -> ggml_block(t).elements floats at y (t must be one of the above).
PK_HD PK_INLINE void ggml_dequantize_block(int t, const uint8_t* block, float* y) {
  switch (t) {
    case GGML_Q4_0: ggml::q4_0(block, y); break;
    case GGML_Q4_1: ggml::q4_1(block, y); break;
    case GGML_Q5_0: ggml::q5_0(block, y); break;
    case GGML_Q5_1: ggml::q5_1(block, y); break;
    case GGML_Q8_0: ggml::q8_0(block, y); break;
    case GGML_Q2_K: ggml::q2_k(block, y); break;
    case GGML_Q3_K: ggml::q3_k(block, y); break;
    case GGML_Q4_K: ggml::q4_k(block, y); break;
    case GGML_Q5_K: ggml::q5_k(block, y); break;
    case GGML_Q6_K: ggml::q6_k(block, y); break;
    case GGML_IQ4_NL: ggml::iq4_nl(block, y); break;
    case GGML_IQ4_XS: ggml::iq4_xs(block, y); break;
    case GGML_MXFP4: ggml::mxfp4(block, y); break;
    default: break;
  }
}

}  // namespace paramkit
