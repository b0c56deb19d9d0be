// Float arithmetic that is one correctly rounded IEEE operation per call on the host and on the device, never
// contracted into an FMA: the host build uses -ffp-contract=off, device code calls the __f*_rn / __d*_rn
// intrinsics, which nvcc never contracts. Shared by the fake quantizers (quant.hpp) and the GGML block
// dequantizers (ggml_blocks.hpp), whose results must equal their NumPy oracles bit for bit.
#pragma once
#include "config.hpp"

namespace paramkit {
namespace exact {

PK_HD PK_INLINE float fmul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
PK_HD PK_INLINE float fadd(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
PK_HD PK_INLINE float fsub(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
PK_HD PK_INLINE float fdiv(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
PK_HD PK_INLINE double dmul(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
PK_HD PK_INLINE double dadd(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
PK_HD PK_INLINE double dsub(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

}  // namespace exact
}  // namespace paramkit
