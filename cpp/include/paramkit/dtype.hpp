// Element types of weight files: ids shared with python/paramkit/dtypes.py, sizes, exact decoding
// of bf16/f16/f8 to float, subnormal tests, and the order-preserving "sort keys" of the histograms.
#pragma once
#include <cstring>
#include <cmath>
#include "config.hpp"

namespace paramkit {

enum DType : int {
  F64 = 0, F32 = 1, F16 = 2, BF16 = 3, F8_E4M3 = 4, F8_E5M2 = 5,
  I8 = 6, U8 = 7, I16 = 8, U16 = 9, I32 = 10, U32 = 11, I64 = 12, U64 = 13, BOOL = 14,
  DTYPE_COUNT = 15
};

PK_HD PK_INLINE int dtype_size(int dt) {
  switch (dt) {
    case F64: case I64: case U64: return 8;
    case F32: case I32: case U32: return 4;
    case F16: case BF16: case I16: case U16: return 2;
    default: return 1;
  }
}
PK_HD PK_INLINE bool dtype_is_float(int dt) { return dt <= F8_E5M2; }
PK_HD PK_INLINE bool dtype_is_signed_int(int dt) { return dt == I8 || dt == I16 || dt == I32 || dt == I64; }
PK_HD PK_INLINE bool dtype_is_unsigned_int(int dt) { return dt == U8 || dt == U16 || dt == U32 || dt == U64 || dt == BOOL; }
// dtypes whose every bit pattern gets its own histogram bin (exact quantiles, stats from the histogram)
PK_HD PK_INLINE bool dtype_is_small(int dt) { return dtype_size(dt) <= 2; }
PK_HD PK_INLINE int dtype_key_bits(int dt) { return dtype_size(dt) == 1 ? 8 : 16; }

PK_HD PK_INLINE float bits_to_f32(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f; std::memcpy(&f, &b, 4); return f;
#endif
}
PK_HD PK_INLINE uint32_t f32_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b; std::memcpy(&b, &f, 4); return b;
#endif
}

PK_HD PK_INLINE float decode_bf16(uint16_t h) { return bits_to_f32(uint32_t(h) << 16); }

// IEEE binary16 -> float, exact (subnormals, inf, NaN payload kept).
PK_HD PK_INLINE float decode_f16(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) bits = sign | 0x7F800000u | (man << 13);
  else if (exp != 0) bits = sign | ((exp + 112u) << 23) | (man << 13);
  else if (man == 0) bits = sign;
  else {  // subnormal: value = man * 2^-24, exact in float
    float v = float(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_to_f32(bits);
}

// OCP FP8 E4M3FN: bias 7, no infinities, NaN = S.1111.111, max 448.
PK_HD PK_INLINE float decode_f8_e4m3(uint8_t v) {
  uint32_t s = v >> 7, e = (v >> 3) & 0xFu, m = v & 7u;
  float r;
  if (e == 0xF && m == 7) r = NAN;
  else if (e == 0) r = float(m) * 0.001953125f;            // m * 2^-9
  else r = ldexpf(1.0f + float(m) * 0.125f, int(e) - 7);
  return s ? -r : r;
}
// FP8 E5M2: bias 15, IEEE-like (±inf, NaN).
PK_HD PK_INLINE float decode_f8_e5m2(uint8_t v) { return decode_f16(uint16_t(v) << 8); }

// Raw little-endian pattern (zero-extended to 64 bits) -> value as double. Integers above 2^53
// lose precision here; exact integer min/max are kept apart.
PK_HD PK_INLINE double decode_to_double(int dt, uint64_t raw) {
  switch (dt) {
    case F64: { double d;
#if defined(__CUDA_ARCH__)
      d = __longlong_as_double((long long)raw);
#else
      std::memcpy(&d, &raw, 8);
#endif
      return d; }
    case F32: return double(bits_to_f32(uint32_t(raw)));
    case F16: return double(decode_f16(uint16_t(raw)));
    case BF16: return double(decode_bf16(uint16_t(raw)));
    case F8_E4M3: return double(decode_f8_e4m3(uint8_t(raw)));
    case F8_E5M2: return double(decode_f8_e5m2(uint8_t(raw)));
    case I8: return double(int8_t(uint8_t(raw)));
    case U8: return double(uint8_t(raw));
    case I16: return double(int16_t(uint16_t(raw)));
    case U16: return double(uint16_t(raw));
    case I32: return double(int32_t(uint32_t(raw)));
    case U32: return double(uint32_t(raw));
    case I64: return double(int64_t(raw));
    case U64: return double(raw);
    case BOOL: return raw ? 1.0 : 0.0;
  }
  return NAN;
}

// Subnormal in the element's own encoding: exponent field 0, mantissa non-zero.
PK_HD PK_INLINE bool raw_is_subnormal(int dt, uint64_t raw) {
  switch (dt) {
    case F64: return (raw & 0x7FF0000000000000ull) == 0 && (raw & 0x000FFFFFFFFFFFFFull) != 0;
    case F32: return (raw & 0x7F800000u) == 0 && (raw & 0x007FFFFFu) != 0;
    case F16: return (raw & 0x7C00u) == 0 && (raw & 0x03FFu) != 0;
    case BF16: return (raw & 0x7F80u) == 0 && (raw & 0x007Fu) != 0;
    case F8_E4M3: return (raw & 0x78u) == 0 && (raw & 0x07u) != 0;
    case F8_E5M2: return (raw & 0x7Cu) == 0 && (raw & 0x03u) != 0;
  }
  return false;
}

// Histogram keys: a bijection from bit patterns to [0, 2^bits) that preserves value order
// (NaN patterns land beyond ±Inf and are recognised when the bins are walked).
PK_HD PK_INLINE uint32_t float_sort_key16(uint32_t r) { return (r & 0x8000u) ? (~r & 0xFFFFu) : (r | 0x8000u); }
PK_HD PK_INLINE uint32_t float_unkey16(uint32_t k) { return (k & 0x8000u) ? (k & 0x7FFFu) : (~k & 0xFFFFu); }
PK_HD PK_INLINE uint32_t float_sort_key8(uint32_t r) { return (r & 0x80u) ? (~r & 0xFFu) : (r | 0x80u); }
PK_HD PK_INLINE uint32_t float_unkey8(uint32_t k) { return (k & 0x80u) ? (k & 0x7Fu) : (~k & 0xFFu); }

// Key of one element of a small (8/16-bit) dtype: exact, one bin per bit pattern.
PK_HD PK_INLINE uint32_t small_key(int dt, uint32_t raw) {
  switch (dt) {
    case F16: case BF16: return float_sort_key16(raw);
    case F8_E4M3: case F8_E5M2: return float_sort_key8(raw);
    case I8: return raw ^ 0x80u;
    case I16: return raw ^ 0x8000u;
    default: return raw;  // U8, U16, BOOL (0 sorts before every non-zero byte, all of which are 1)
  }
}
PK_HD PK_INLINE uint32_t small_unkey(int dt, uint32_t key) {
  switch (dt) {
    case F16: case BF16: return float_unkey16(key);
    case F8_E4M3: case F8_E5M2: return float_unkey8(key);
    case I8: return key ^ 0x80u;
    case I16: return key ^ 0x8000u;
    default: return key;
  }
}
// A 32/64-bit element cast to float32 (round to nearest even), as the prefix histogram bins it.
PK_HD PK_INLINE float wide_to_f32(int dt, uint64_t raw) {
  switch (dt) {
    case F64: return float(decode_to_double(F64, raw));
    case F32: return bits_to_f32(uint32_t(raw));
    case I32: return float(int32_t(uint32_t(raw)));
    case U32: return float(uint32_t(raw));
    case I64: return float(int64_t(raw));
    case U64: return float(raw);
  }
  return 0.0f;
}
// Prefix key of a wide element: its value as float32 truncated to bfloat16 precision.
PK_HD PK_INLINE uint32_t prefix_key_f32(float v) { return float_sort_key16(f32_to_bits(v) >> 16); }
PK_HD PK_INLINE double prefix_key_value(uint32_t key) { return double(decode_bf16(uint16_t(float_unkey16(key)))); }

}  // namespace paramkit
