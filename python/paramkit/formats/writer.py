"""Streaming safetensors writer used by the demo checkpoint and the fake-quantized export: writes to
a temporary file beside the target and renames it into place only when complete."""
from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Callable, Iterable

TensorSource = tuple[str, str, tuple[int, ...], int, Callable[[], Iterable[bytes]]]
# (name, dtype, shape, nbytes, producer of the tensor's bytes, in pieces)


def write_safetensors(path: str, tensors: list[TensorSource], metadata: dict[str, str] | None = None) -> str:
    """Write `tensors` (in order) to `path` atomically: on any error or interrupt the target is left
    untouched and the temporary file is removed. Returns the path."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    off = 0
    for name, dtype, shape, nbytes, _ in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # align the data buffer to 8 bytes, as the reference writer does
    target = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".paramkit-", suffix=".tmp", dir=os.path.dirname(target))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(hb)))
            f.write(hb)
            for name, _, _, nbytes, produce in tensors:
                written = 0
                for piece in produce():
                    f.write(piece)
                    written += len(piece)
                if written != nbytes:
                    raise ValueError(f"tensor {name}: produced {written} bytes, expected {nbytes}")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; a new file follows the umask
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


def _umask() -> int:
    """The process umask: from /proc (Linux), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    m = os.umask(0o022)
    os.umask(m)
    return m
