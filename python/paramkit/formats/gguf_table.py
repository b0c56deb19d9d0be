"""The GGUF entry of the format registry: a .gguf file's header (formats.gguf_file) as the resolver's FileTable:
tensors as columns (row-major shapes, ne reversed; GGML block types are dtypes of kind "block" whose element
count is the logical parameter count), the metadata as text, and the model's config from the metadata
(formats.gguf_config), since a GGUF has no config.json."""
from __future__ import annotations

import json

import numpy as np

from ..table import DTYPE_NAMES, TensorColumns
from .gguf_file import GGUF_MAGIC, GGUFArray, parse_gguf
from .resolver import FileTable, Reader

_CODE = {name: code for code, name in enumerate(DTYPE_NAMES)}
_VALUE_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32",
                     7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}


def _text(v) -> str:
    """A metadata value as the report's metadata text: strings as they are, other values as JSON, an array
    left undecoded as a short description of it."""
    if isinstance(v, str):
        return v
    if isinstance(v, GGUFArray):
        return f"[{v.count:,} {_VALUE_TYPE_NAMES.get(v.item_type, '?')} values, not decoded]"
    return json.dumps(v, ensure_ascii=False)


def _open(source, strict: bool) -> FileTable:
    from .gguf_config import config_from_gguf
    if source.path is None or source.path != source.name or source.file_offset:
        raise ValueError(f"{source.name}: the GGUF reader takes a whole local file")
    h = parse_gguf(source)
    ts = h.tensors
    dims = [d for t in ts for d in reversed(t.ne)]
    columns = TensorColumns([t.name for t in ts], DTYPE_NAMES, np.array([_CODE[t.type_name] for t in ts], np.uint8),
                            (source.path,), np.zeros(len(ts), np.uint32), [t.offset for t in ts],
                            [t.nbytes for t in ts], [t.numel for t in ts], [len(t.ne) for t in ts], dims)
    metadata = {k: _text(v) for k, v in h.metadata.items()}
    metadata["gguf.version"] = str(h.version)
    if h.byteorder == ">":
        metadata["gguf.byteorder"] = "big"
    return FileTable("gguf", columns, metadata, h.header_bytes,
                     config=config_from_gguf(h.metadata, columns.names))


def _sniff(head: bytes, name: str) -> bool:
    return head.startswith(GGUF_MAGIC)


GGUF_READER = Reader(format="gguf", extensions=(".gguf",), index_suffix=".gguf.index.json",
                     standard_index="model.gguf.index.json", sniff=_sniff, open=_open)
