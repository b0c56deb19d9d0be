// paramkit._cuda_emu: the CUDA engine's sources (stats_engine.cu, device_arrays.cu, cuda_module.cu)
// compiled as C++ against the CPU emulator in this folder, so the suite tests them without a GPU.
#include "../stats_engine.cu"
#include "../device_arrays.cu"
#define PARAMKIT_CUDA_MODULE _cuda_emu
#include "../cuda_module.cu"
