"""TensorTable: what a format reader hands to counting and to the engines — per tensor its name,
dtype, shape, file, absolute byte offset and length — plus file metadata and config.json."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str              # safetensors dtype name, key of paramkit.dtypes.DTYPES
    shape: tuple[int, ...]
    file: str               # absolute path of the file holding the bytes
    offset: int             # absolute byte offset of the first byte in `file`
    nbytes: int
    numel: int
    # identity of the storage whose bytes the tensor views (torch checkpoints; None where the format has none):
    # two tensors with the same storage, offset, shape and strides are one tensor
    storage: str | None = None


@dataclass
class TensorTable:
    path: str                                   # what the user passed (file, index or directory)
    format: str                                 # "safetensors"
    files: list[str]                            # data files, absolute, in model order
    tensors: list[TensorInfo]                   # model order: shard order, then byte offset
    metadata: dict[str, str] = field(default_factory=dict)        # merged __metadata__
    index_metadata: dict | None = None          # model.safetensors.index.json "metadata"
    config: dict | None = None                  # parsed config.json beside the weights
    unreferenced_files: list[str] = field(default_factory=list)   # weight files the index does not name
    header_bytes: int = 0                       # bytes of headers read (all shards)

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)
