"""The GGUF entry of the format registry: a .gguf file's header (formats.gguf_file) as the resolver's FileTable:
tensors as columns (row-major shapes, ne reversed; GGML block types are dtypes of kind "block" whose element
count is the logical parameter count), the metadata as text, and the model's config from the metadata
(formats.gguf_config), since a GGUF has no config.json. Split models (name-00001-of-00003.gguf, llama.cpp's
gguf-split) are one model: any of its files (or its directory) opens all of them, checked against their
split.* metadata."""
from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from ..dtypes import DTYPES
from ..errors import FormatError
from ..sources import is_whole
from ..table import DTYPE_NAMES, TensorColumns, TensorInfo, ViewLayout
from .gguf_file import GGUF_MAGIC, GGUFArray, parse_gguf
from .locations import basename, dirname, is_file, join
from .resolver import FileTable, Reader
from .stored import StoredBlob, c_strides

ERROR_CODES: dict[str, str] = {
    "gguf_split_missing": "a file of a split GGUF model (name-0000K-of-0000N.gguf) does not exist",
    "gguf_split_invalid": "a split GGUF file's split.no / split.count / split.tensors.count metadata disagree "
                          "with its file name or with the other files (split.no counts from 0, file names from 1)",
    "gguf_models_ambiguous": "a directory holds more than one GGUF model (files that are not splits of one "
                             "model); pass the file to scan",
}

_SPLIT_NAME = re.compile(r"^(?P<base>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)

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
    if not is_whole(source):
        raise ValueError(f"{source.name}: the GGUF reader takes a whole file")
    h = parse_gguf(source)
    ts = h.tensors
    dims = [d for t in ts for d in reversed(t.ne)]
    columns = TensorColumns([t.name for t in ts], DTYPE_NAMES, np.array([_CODE[t.type_name] for t in ts], np.uint8),
                            (source.name,), np.zeros(len(ts), np.uint32), [t.offset for t in ts],
                            [t.nbytes for t in ts], [t.numel for t in ts], [len(t.ne) for t in ts], dims)
    metadata = {k: _text(v) for k, v in h.metadata.items()}
    metadata["gguf.version"] = str(h.version)
    tensors = None
    if h.byteorder == ">":
        metadata["gguf.byteorder"] = "big"
        tensors = _big_endian_tensors(columns)
    return FileTable("gguf", columns, metadata, h.header_bytes, tensors,
                     config=config_from_gguf(h.metadata, columns.names))


def _big_endian_tensors(columns: TensorColumns) -> list[TensorInfo]:
    """The tensors of a big-endian GGUF: multi-byte plain types keep a ViewLayout with byteorder ">" (the
    engines byte-swap them as they read, paramkit.materialize for the numpy backend); block types are stored
    as in a little-endian file (gguf-py writes their bytes unswapped, and gguf.GGUFReader reads them so)."""
    out = []
    for t in columns.infos():
        d = DTYPES[t.dtype]
        if d.kind != "block" and d.bits > 8 and t.nbytes:
            blob = StoredBlob(key=t.name, offset=t.offset, nbytes=t.nbytes, compressed_size=t.nbytes,
                              compression="stored")
            t = dataclasses.replace(t, layout=ViewLayout(blob=blob, element_offset=0, strides=c_strides(t.shape),
                                                         byteorder=">"))
        out.append(t)
    return out


def split_files(path: str) -> list[str]:
    """All files of the model that GGUF file `path` belongs to, in split order: `path` alone unless its name
    is a split's (name-0000K-of-0000N.gguf), whose N files must all exist (gguf_split_missing)."""
    d, name = dirname(path), basename(path)
    m = _SPLIT_NAME.match(name)
    if m is None:
        return [path]
    count = int(m["count"])
    if not 1 <= int(m["no"]) <= count:
        raise FormatError("gguf_split_invalid", f"file name says split {int(m['no'])} of {count}", path=path)
    width = len(m["no"])
    files = [join(d, f"{m['base']}-{k:0{width}d}-of-{m['count']}.gguf") for k in range(1, count + 1)]
    for f in files:
        if not is_file(f):
            raise FormatError("gguf_split_missing", f"split {basename(f)} of this {count}-file model "
                              "does not exist", path=path)
    return files


def _meta_int(ft: FileTable, key: str) -> int | None:
    v = ft.metadata.get(key)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def check_splits(files: list[str], parts: list[FileTable]) -> None:
    """The split.* metadata of a split model's files agree with their names and each other: split.no the
    0-based position, split.count the number of files, the first file's split.tensors.count the tensors of
    all of them. The config (from the first file's metadata) then says whether the output is tied from
    the tensors of all files (output.weight may be in a later split)."""
    if len(files) == 1 and _meta_int(parts[0], "split.count") in (None, 1):
        return
    cfg = parts[0].config
    if cfg is not None and "tie_word_embeddings" in cfg:
        cfg["tie_word_embeddings"] = not any("output.weight" in ft.columns.names for ft in parts)
    for k, (f, ft) in enumerate(zip(files, parts)):
        no, count = _meta_int(ft, "split.no"), _meta_int(ft, "split.count")
        if no != k or count != len(files):
            raise FormatError("gguf_split_invalid", f"split.no={no}, split.count={count}; as file {k + 1} of "
                              f"{len(files)} it must say split.no={k}, split.count={len(files)}", path=f)
    want = _meta_int(parts[0], "split.tensors.count")
    have = sum(len(ft.columns) for ft in parts)
    if want is not None and want != have:
        raise FormatError("gguf_split_invalid", f"split.tensors.count={want:,} but the {len(files)} files hold "
                          f"{have:,} tensors", path=files[0])


def _pick(files: list[str]) -> tuple[list[str], list[dict]]:
    """A directory's .gguf files as one model: one file, or the files of one split model."""
    models = {}
    for f in files:
        m = _SPLIT_NAME.match(os.path.basename(f))
        models.setdefault((m["base"].lower(), m["count"]) if m else f, []).append(f)
    if len(models) > 1:
        names = ", ".join(os.path.basename(v[0]) for v in models.values())
        raise FormatError("gguf_models_ambiguous", f"directory holds {len(models)} GGUF models ({names}); "
                          "pass the file to scan", path=os.path.dirname(files[0]))
    return split_files(files[0]), []


def _sniff(head: bytes, name: str) -> bool:
    return head.startswith(GGUF_MAGIC)


GGUF_READER = Reader(format="gguf", extensions=(".gguf",), index_suffix=".gguf.index.json",
                     standard_index="model.gguf.index.json", sniff=_sniff, open=_open, pick=_pick,
                     model_files=split_files, check_files=check_splits)
