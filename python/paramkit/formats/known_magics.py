"""Recognises weight formats that paramkit does not read (by their first bytes, a zip's member names or the
file name), so that such a file fails with unsupported_format naming the format and how to convert it,
never with another reader's "not a <format> file"."""
from __future__ import annotations

import re
from typing import Iterable

from ..errors import FormatError

__all__ = ["ADVICE", "ERROR_CODES", "HEAD_BYTES", "identify_unsupported", "identify_unsupported_zip",
           "unsupported_format_error"]

ERROR_CODES: dict[str, str] = {
    "unsupported_format": "the file is a known format paramkit does not read (legacy or TorchScript PyTorch, "
                          "ONNX, Keras/HDF5, TensorFlow, legacy GGML, a bare pickle, a compressed or tar "
                          "archive); the message names it and says how to convert it",
}

# How many leading bytes identify_unsupported looks at (tar's magic sits at offset 257).
HEAD_BYTES = 512

_TO_SAFETENSORS = "convert the weights to safetensors (or a torch.save state dict)"
LEGACY_TORCH = "legacy PyTorch checkpoint (torch < 1.6, not a zip archive)"
TORCHSCRIPT = "TorchScript archive (torch.jit.save)"
ADVICE: dict[str, str] = {
    LEGACY_TORCH: "load it with torch.load (in an environment you trust) and save it again with torch.save, "
                  "whose zip format is the default since torch 1.6, or as safetensors",
    TORCHSCRIPT: "load it with torch.jit.load and save module.state_dict() with torch.save or as safetensors",
    "GGML (legacy llama.cpp)": "convert it to GGUF with llama.cpp's scripts",
    "ONNX": "export the initializers to safetensors (onnx.numpy_helper.to_array for each graph initializer)",
    "HDF5 (Keras .h5)": "load it with Keras and save the weights as safetensors",
    "Keras 3 archive (.keras)": "load it with keras.saving.load_model and save the weights as safetensors",
    "TensorFlow checkpoint": "load it with tf.train.load_checkpoint and " + _TO_SAFETENSORS,
    "TensorFlow SavedModel / GraphDef protobuf": "load it with TensorFlow and " + _TO_SAFETENSORS,
    "TensorFlow Lite flatbuffer": "TFLite models are not supported; " + _TO_SAFETENSORS,
    "ExecuTorch program (.pte)": "ExecuTorch programs are not supported; use the eager model's state dict",
    "Flax msgpack checkpoint": "load it with flax.serialization and " + _TO_SAFETENSORS,
    "Python pickle (not a torch.save zip archive)": "paramkit never unpickles arbitrary objects; "
                                                    + _TO_SAFETENSORS,
    "gzip-compressed file": "decompress it first",
    "bzip2-compressed file": "decompress it first",
    "xz-compressed file": "decompress it first",
    "zstd-compressed file": "decompress it first",
    "tar archive": "extract it and scan the weight files inside",
}

# torch.save before 1.6 starts with the pickled magic number 0x1950a86a20f9469cfc6c (protocol 2, LONG1).
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (_LEGACY_TORCH_MAGIC, LEGACY_TORCH),
    (b"lmgg", "GGML (legacy llama.cpp)"), (b"fmgg", "GGML (legacy llama.cpp)"),
    (b"tjgg", "GGML (legacy llama.cpp)"),
    (b"\x89HDF\r\n\x1a\n", "HDF5 (Keras .h5)"),
    (b"\x1f\x8b", "gzip-compressed file"),
    (b"BZh", "bzip2-compressed file"),
    (b"\xfd7zXZ\x00", "xz-compressed file"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed file"),
)
_TF_DATA_SHARD = re.compile(r"\.data-\d{5}-of-\d{5}$")


def _onnx_head(head: bytes) -> bool:
    """An ONNX ModelProto as exporters write it: ir_version (field 1, a small varint), then producer_name
    (field 2) as a short printable string ("pytorch", "tf2onnx", ...)."""
    if len(head) < 5 or head[0] != 0x08 or not 1 <= head[1] <= 0x20 or head[2] != 0x12:
        return False
    n = head[3]
    name = head[4:4 + n]
    return 1 <= n < 0x80 and len(name) == n and all(0x20 <= c < 0x7F for c in name)


def identify_unsupported(head: bytes, name: str) -> str | None:
    """The name of the unsupported format that a file's first bytes (HEAD_BYTES of them, or the whole file
    when shorter) and its name show, or None when it is none of them (a key of ADVICE otherwise). Some tests
    are heuristics (ONNX's protobuf, a bare pickle): call it after the supported formats' sniffers declined."""
    for prefix, fmt in _PREFIXES:
        if head.startswith(prefix):
            return fmt
    lower = str(name).lower()
    base = re.split(r"[\\/]", lower)[-1]
    if head[4:8] == b"TFL3":
        return "TensorFlow Lite flatbuffer"
    if head[4:8] == b"ET12" or base.endswith(".pte"):
        return "ExecuTorch program (.pte)"
    if head[257:262] == b"ustar":
        return "tar archive"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "Python pickle (not a torch.save zip archive)"
    if base.endswith(".onnx") or _onnx_head(head):
        return "ONNX"
    if _TF_DATA_SHARD.search(base) or base.endswith(".index"):
        return "TensorFlow checkpoint"
    if base == "saved_model.pb" or base.endswith(".pb"):
        return "TensorFlow SavedModel / GraphDef protobuf"
    if base.endswith(".msgpack"):
        return "Flax msgpack checkpoint"
    return None


def identify_unsupported_zip(member_names: Iterable[str]) -> str | None:
    """The unsupported format a zip archive's member names show (TorchScript, Keras 3), or None."""
    names = list(member_names)
    for name in names:
        parts = name.split("/")
        if len(parts) >= 2 and (parts[1] in ("constants.pkl", "bytecode.pkl") or (len(parts) >= 3 and
                                                                                parts[1] == "code")):
            return TORCHSCRIPT
    if "config.json" in names and "model.weights.h5" in names:
        return "Keras 3 archive (.keras)"
    return None


def unsupported_format_error(fmt: str, path: str | None) -> FormatError:
    """FormatError unsupported_format for a format identify_unsupported(_zip) returned."""
    return FormatError("unsupported_format", f"the file is a {fmt}, a format paramkit does not read; "
                       f"{ADVICE[fmt]}", path=path)
