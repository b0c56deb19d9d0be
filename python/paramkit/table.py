"""TensorTable: what a format reader hands to counting and to the engines — per tensor its name,
dtype, shape, file, absolute byte offset and length — plus file metadata and config.json."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str              # safetensors dtype name, key of paramkit.dtypes.DTYPES
    shape: tuple[int, ...]
    file: str               # absolute path of the file holding the bytes
    offset: int             # absolute byte offset of the first byte in `file`
    nbytes: int
    numel: int
    # identity of the storage the tensor's bytes belong to (torch checkpoints), None for a tensor with bytes of
    # its own: two tensors with equal storage, offset, shape and layout are one tensor saved twice (a tie)
    storage: str | None = None
    # None: the bytes are `nbytes` contiguous little-endian row-major bytes at `offset` of `file`, which the
    # engines read directly; else a ViewLayout (a strided view, big-endian bytes or a deflated zip member),
    # which paramkit.materialize turns into such bytes for the data pass
    layout: Any = None
    role_hint: str | None = None    # "optimizer": a training checkpoint's optimizer state, never a parameter

    @property
    def codec(self) -> str:
        """How the elements are encoded: a plain dtype (the safetensors name) for every format read today;
        block-quantized types (GGUF) are codecs of their own."""
        return self.dtype


@dataclass(frozen=True)
class ViewLayout:
    """Where the elements of a tensor that is not one plain byte range are: a storage (a
    paramkit.formats.stored.StoredBlob: a byte range of the file or a deflated zip member), the offset of
    element [0, ..., 0] and the strides, in elements, and the byte order."""
    blob: Any
    element_offset: int
    strides: tuple[int, ...]
    byteorder: str


@dataclass
class TensorTable:
    path: str                                   # what the user passed (file, index or directory)
    format: str                                 # "safetensors", "pytorch" or "numpy"
    files: list[str]                            # data files, absolute, in model order
    tensors: list[TensorInfo]                   # model order: shard order, then byte offset
    metadata: dict[str, str] = field(default_factory=dict)        # merged __metadata__
    index_metadata: dict | None = None          # model.safetensors.index.json "metadata"
    config: dict | None = None                  # parsed config.json beside the weights
    unreferenced_files: list[str] = field(default_factory=list)   # weight files the index does not name
    ignored_files: list[dict] = field(default_factory=list)   # {"file", "reason"}: weight files not used, and why
    header_bytes: int = 0                       # bytes of headers read (all shards)

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)
