// Compiler glue shared by the CPU engine and the CUDA kernels: PK_HD marks math that must
// compile for both host and device (so each formula exists once), PK_INLINE forces inlining.
#pragma once

#if defined(__CUDACC__)
#define PK_HD __host__ __device__
#define PK_INLINE __forceinline__
#else
#define PK_HD
#if defined(__GNUC__) || defined(__clang__)
#define PK_INLINE inline __attribute__((always_inline))
#else
#define PK_INLINE inline
#endif
#endif

#include <cstdint>
