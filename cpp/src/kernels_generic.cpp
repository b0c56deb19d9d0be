// Baseline x86-64 (SSE2) build of the CPU kernels: runs on any 64-bit x86 (and other) CPU.
#define PK_KNS generic
#define PK_KISA "generic"
#include "kernels_impl.inl"
namespace paramkit { const Kernels& kernels_generic() { return generic::table; } }
