"""A checkpoint truncated while paramkit scans it: the native engines raise OSError(EIO) with a message that
says the file ended early, never a signal (the removed mmap mode died of SIGBUS) and never errno 0. Each case
runs in a subprocess, so that a signal shows up as a negative return code instead of killing pytest."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import save_file

import paramkit

from conftest import NATIVE_BACKENDS

# the child imports the paramkit this test imported (an installed wheel in CI, python/ in a source checkout)
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(paramkit.__file__)))

# The child prints one JSON line: {"errno": e.errno, "message": str(e), "type": ...} or {"completed": true}.
CHILD_PRELUDE = """
import json, os, sys
import paramkit
path, backend, keep = sys.argv[1], sys.argv[2], int(sys.argv[3])

def report(run):
    try:
        run()
    except OSError as e:
        print(json.dumps({"errno": e.errno, "message": str(e), "type": type(e).__name__}))
    else:
        print(json.dumps({"completed": True}))
"""


def _run_child(body: str, path: str, backend: str, keep: int, env: dict | None = None) -> dict:
    code = CHILD_PRELUDE + textwrap.dedent(body)
    full_env = dict(os.environ, PYTHONPATH=PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.update(env or {})
    p = subprocess.run([sys.executable, "-c", code, path, backend, str(keep)], capture_output=True, text=True,
                       env=full_env, timeout=300)
    assert p.returncode == 0, f"the scan died (return code {p.returncode}, a negative one is a signal): {p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def _checkpoint(tmp_path, n_tensors: int = 8, rows: int = 256) -> tuple[str, int]:
    """A file of n_tensors float32 tensors of rows x 1024 (1 MiB each at 256 rows), and its header size."""
    path = str(tmp_path / "t.safetensors")
    rng = np.random.default_rng(0)
    save_file({f"w{i}": rng.standard_normal((rows, 1024)).astype(np.float32) for i in range(n_tensors)}, path)
    with open(path, "rb") as f:
        header = 8 + int.from_bytes(f.read(8), "little")
    return path, header


def _assert_ended_early(got: dict, path: str) -> None:
    assert "errno" in got, f"the scan of a truncated file completed: {got}"
    assert got["errno"] == errno.EIO, got
    assert path in got["message"] and "truncated" in got["message"], got["message"]


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
def test_truncated_between_header_and_data_pass(tmp_path, backend):
    """The file is cut after open_table validated its header and before the engine opens it: the engine's own
    size check turns the missing bytes into OSError(EIO) naming the file (it used to be errno 0, 'Error')."""
    path, header = _checkpoint(tmp_path)
    got = _run_child("""
        import paramkit.formats as formats
        real_open_table = formats.open_table
        def open_then_truncate(p, **kw):
            table = real_open_table(p, **kw)
            os.truncate(path, keep)
            return table
        formats.open_table = open_then_truncate
        report(lambda: paramkit.scan(path, backend=backend))
        """, path, backend, header + 4096)
    _assert_ended_early(got, path)
    assert "beyond the end of the file" in got["message"], got["message"]


def test_cpu_truncated_during_the_scan(tmp_path):
    """cpu backend, truncated in the middle of one scan: after the statistics pass, before the second pass of
    int8_tensor (a per-tensor-scale scheme) re-reads the tensors. The progress callback that reports the first
    pass complete cuts the file; PARAMKIT_IO=mmap, which used to select a mapping that died of SIGBUS on a
    truncated file, changes nothing."""
    path, header = _checkpoint(tmp_path)
    data = os.path.getsize(path) - header
    got = _run_child("""
        data = os.path.getsize(path) - int(os.environ["HEADER_BYTES"])
        cut = []
        def progress(done, total):
            if done >= data and not cut:   # the first pass is complete, the second one not started
                cut.append(done)
                os.truncate(path, keep)
        report(lambda: paramkit.scan(path, backend=backend, quant="int8_tensor", progress=progress))
        assert cut, "the progress callback never saw the first pass complete"
        """, path, "cpu", header + data // 2, env={"HEADER_BYTES": str(header), "PARAMKIT_IO": "mmap"})
    _assert_ended_early(got, path)


@pytest.mark.skipif("cuda-emu" not in NATIVE_BACKENDS, reason="needs the CUDA emulator (PARAMKIT_CUDA_EMU=ON)")
def test_cuda_engine_truncated_while_reading(tmp_path):
    """The cuda engine reports progress before it reads each batch of its ring, on the calling thread, so a
    callback that cuts the file makes the next pread meet the end of the file: its read loop raises OSError(EIO)
    saying where the file ended (it said 'unexpected end of file', without the file)."""
    path, header = _checkpoint(tmp_path)
    keep = header + (3 << 20)
    got = _run_child("""
        calls = []
        def progress(done, total):
            calls.append(done)
            if len(calls) == 2:   # after the first 1 MiB batch went into the ring
                os.truncate(path, keep)
        report(lambda: paramkit.scan(path, backend=backend, progress=progress))
        """, path, "cuda-emu", keep, env={"PARAMKIT_CUDA_RING_MB": "1"})
    _assert_ended_early(got, path)
    assert "ended early" in got["message"] and f"byte {keep}" in got["message"], got["message"]
