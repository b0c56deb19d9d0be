// Run-time choice of the kernel set: AVX2 where the CPU has it (and FMA, F16C), else the baseline build.
#include <cstdlib>
#include <cstring>
#include "kernels.hpp"

namespace paramkit {

const Kernels& select_kernels() {
  static const Kernels* chosen = [] {
    const char* want = std::getenv("PARAMKIT_ISA");
    if (want && std::strcmp(want, "generic") == 0) return &kernels_generic();
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
      return &kernels_avx2();
#endif
    return &kernels_generic();
  }();
  return *chosen;
}

}  // namespace paramkit
