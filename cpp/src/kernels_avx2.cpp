// AVX2 + FMA build of the CPU kernels (compiled with -mavx2 -mfma -mbmi2 -mf16c on x86; chosen at run time).
#if defined(__x86_64__) && defined(__AVX2__)
#define PK_KNS avx2
#define PK_KAVX2 1
#define PK_KISA "avx2"
#include "kernels_impl.inl"
namespace paramkit { const Kernels& kernels_avx2() { return avx2::table; } }
#else
#include "kernels.hpp"
namespace paramkit { const Kernels& kernels_avx2() { return kernels_generic(); } }
#endif
