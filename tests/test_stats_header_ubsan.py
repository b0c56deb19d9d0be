"""finalize_small (cpp/include/paramkit/stats.hpp, shared by the cpu and cuda engines) on float dtypes whose
values include +-Inf and finite values beyond the int64 range (bf16 reaches 3.4e38): it must not convert them to
int64/uint64 (undefined behaviour in C++; bench/sanitize.sh found it). The header is compiled here into a small
program with UBSan's float-cast-overflow check, which a normal build cannot observe; results are checked too."""
from __future__ import annotations

import os
import shutil
import subprocess

import ml_dtypes
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# dtype ids of cpp/include/paramkit/dtype.hpp, and the raw bit patterns fed to finalize_small in value order
CASES = {
    "BF16": (3, ml_dtypes.bfloat16, np.uint16, [0xFF80, 0xFF7F, 0xDF00, 0xBF80, 0x0000, 0x5F00, 0x7F7F, 0x7F80]),
    "BF16 finite": (3, ml_dtypes.bfloat16, np.uint16, [0xFF7F, 0xDF00, 0x0000, 0x5F00]),   # -3.4e38, -2^63, 0, 2^63
    "F16": (2, np.float16, np.uint16, [0xFC00, 0xFBFF, 0x8000, 0x3C00, 0x7BFF, 0x7C00]),
    "F8_E5M2": (5, ml_dtypes.float8_e5m2, np.uint8, [0xFC, 0xFB, 0x00, 0x7B, 0x7C]),
}

HARNESS = r"""
#include <cstdio>
#include <cstdlib>
#include "paramkit/stats.hpp"
struct Bin { uint32_t raw; uint64_t count; };
int main(int argc, char** argv) {   // argv: dtype id, then raw bit patterns (hex), each counted twice
  int dt = std::atoi(argv[1]);
  Bin bins[16]; int n = 0;
  for (int i = 2; i < argc; ++i) bins[n++] = {uint32_t(std::strtoul(argv[i], nullptr, 16)), 2};
  paramkit::TensorResult r;
  paramkit::finalize_small(dt, bins, n, nullptr, 0, r);
  std::printf("%.17g %.17g %llu %llu %llu\n", r.fmin, r.fmax, (unsigned long long)r.posinf,
              (unsigned long long)r.neginf, (unsigned long long)r.nonnan);
  return 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> str:
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    assert cxx, "a C++ compiler (CXX or c++) is needed to build the UBSan harness"
    d = tmp_path_factory.mktemp("ubsan")
    (d / "harness.cpp").write_text(HARNESS)
    exe = str(d / "harness")
    subprocess.run([cxx, "-std=c++17", "-O1", "-g", "-fsanitize=float-cast-overflow,undefined",
                    "-fno-sanitize-recover=all", "-I", os.path.join(REPO, "cpp", "include"),
                    str(d / "harness.cpp"), "-o", exe], check=True, capture_output=True, text=True, env=_plain_env())
    return exe


def _plain_env() -> dict:
    """The environment without bench/sanitize.sh's preloaded ASan runtime (the harness has its own UBSan)."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_finalize_small_float_extremes_have_no_out_of_range_int_cast(harness, name):
    dt, np_dtype, raw_type, raws = CASES[name]
    p = subprocess.run([harness, str(dt)] + [f"{r:x}" for r in raws], capture_output=True, text=True,
                       env=_plain_env())
    assert p.returncode == 0 and "runtime error" not in p.stderr, p.stderr
    values = np.array(raws, dtype=raw_type).view(np_dtype).astype(np.float64)
    fmin, fmax, posinf, neginf, nonnan = p.stdout.split()
    assert (float(fmin), float(fmax)) == (values.min(), values.max())
    assert int(posinf) == 2 * int(np.sum(values == np.inf)) and int(neginf) == 2 * int(np.sum(values == -np.inf))
    assert int(nonnan) == 2 * len(values)
