// How many CPU threads the host engines use by default: the cores this process may run on (its
// affinity mask, which containers and taskset narrow), shared by the cpu engine and the CUDA readers.
#pragma once
#include <sched.h>

#include <algorithm>
#include <thread>

namespace paramkit {

inline int default_threads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return int(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace paramkit
