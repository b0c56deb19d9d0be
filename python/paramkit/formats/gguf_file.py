"""Strict GGUF (v2/v3, either byte order) header reader: the key/value metadata and the tensor table of one
.gguf file, every count, length and offset checked against the file before anything is allocated. Large
metadata arrays (a 262,144-entry tokenizer) are walked past, not decoded: they come back as GGUFArray
placeholders that decode on request. gguf's GGUFReader is not used: it decodes every array (6.7 s for a
file with a 300,000-token vocabulary, against 2.4 ms here); the gguf package is the tests' oracle."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatError
from ..sources import Source
from ..ggml_types import GGML_TYPES

__all__ = ["ERROR_CODES", "GGUFArray", "GGUFHeader", "GGUFTensor", "GGUF_MAGIC", "MAX_DIMS", "parse_gguf"]

GGUF_MAGIC = b"GGUF"
MAX_DIMS = 4                  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32        # GGUF_DEFAULT_ALIGNMENT
MAX_ARRAY_DEPTH = 8           # arrays of arrays nest no deeper than this
DECODE_ARRAY_MAX = 1024       # arrays up to this many items are decoded while reading the header

ERROR_CODES: dict[str, str] = {
    "gguf_version_unsupported": "the GGUF version is not 2 or 3 (version 1, from 2023, used 32-bit counts; "
                                "re-convert it with a current llama.cpp)",
    "gguf_truncated": "the header ends inside a count, a key, a value or a tensor entry: the file is shorter "
                      "than its header says (truncated?)",
    "gguf_count_invalid": "the tensor or key/value count is larger than the file could hold",
    "gguf_value_invalid": "a metadata value has an unknown type id, a string that is not UTF-8, or arrays "
                          "nested deeper than 8",
    "gguf_key_duplicate": "a metadata key appears twice",
    "gguf_alignment_invalid": "general.alignment is not a power-of-two uint32",
    "gguf_tensor_type_unknown": "a tensor's GGML type id is not a GGML type (paramkit.ggml_types)",
    "gguf_tensor_dims_invalid": "a tensor has more than 4 dimensions, or its element count does not fit in "
                                "63 bits",
    "gguf_tensor_block_misaligned": "a block-quantized tensor's row length (ne[0]) is not a multiple of its "
                                    "type's block size",
    "gguf_tensor_name_duplicate": "two tensors have the same name",
    "gguf_tensor_offset_misaligned": "a tensor's data offset is not a multiple of the file's alignment",
    "gguf_tensor_out_of_bounds": "a tensor's data extends past the end of the file",
    "gguf_tensor_overlap": "two tensors' data overlap",
}

_VALUE_TYPES = {   # GGUFValueType id -> (struct code, size) of the fixed-size ones
    0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4), 6: ("f", 4), 7: ("?", 1),
    10: ("Q", 8), 11: ("q", 8), 12: ("d", 8)}
_STRING, _ARRAY = 8, 9
_MIN_KV_BYTES = 8 + 4 + 1          # an empty key, a type id, the smallest value
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8  # an empty name, n_dims 0, a type id, an offset
_WINDOW = 1 << 20
_WALK_WINDOW = 4 << 20


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array left undecoded: its item type, length and where its items lie in the file."""
    item_type: int
    count: int
    offset: int          # file offset of the first item
    nbytes: int

    def decode(self, source: Source, byteorder: str) -> list:
        cur = _Cursor(source, byteorder, self.offset, self.offset + self.nbytes)
        return [cur.value(self.item_type, 1) for _ in range(self.count)]


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    ggml_type: int           # GGMLQuantizationType id
    type_name: str           # its name, e.g. "Q4_K"
    ne: tuple[int, ...]      # dimensions as stored, fastest first (ne[0] = row length)
    offset: int              # absolute file offset of the data
    nbytes: int
    numel: int

    @property
    def shape(self) -> tuple[int, ...]:
        """Row-major shape (slowest first), as torch and safetensors write it: ne reversed."""
        return tuple(reversed(self.ne))


@dataclass
class GGUFHeader:
    version: int
    byteorder: str                     # "<" or ">"
    alignment: int
    metadata: dict[str, Any]           # key -> value (GGUFArray for arrays longer than DECODE_ARRAY_MAX)
    value_types: dict[str, int]        # key -> GGUFValueType id
    tensors: list[GGUFTensor] = field(default_factory=list)
    data_offset: int = 0               # where the tensor data starts (aligned)

    @property
    def header_bytes(self) -> int:
        """Bytes before the tensor data (header, metadata, tensor table, alignment padding)."""
        return self.data_offset


class _Cursor:
    """Sequential reads of a source in the file's byte order, through a window of about 1 MiB (or the source's
    read_size: an HttpFile reads ahead in growing ranges itself); every read past
    `end` is FormatError gguf_truncated (never a short read, never a read outside the file)."""

    def __init__(self, source: Source, byteorder: str, pos: int = 0, end: int | None = None):
        self.src = source
        self.bo = byteorder
        self.pos = pos
        self.end = source.size if end is None else end
        self._base = pos
        self._buf = b""
        self._window = getattr(source, "read_size", _WINDOW)   # a remote source reads ahead itself

    def _need(self, n: int, what: str) -> memoryview:
        if n > self.end - self.pos:
            raise FormatError("gguf_truncated", f"the file ends inside {what} at byte {self.pos:,} (it needs "
                              f"{n:,} bytes, {max(self.end - self.pos, 0):,} are left)", path=self.src.name)
        lo = self.pos - self._base
        if lo < 0 or lo + n > len(self._buf):
            self._base = self.pos
            self._buf = self.src.read_at(self.pos, min(max(n, self._window), self.end - self.pos))
            lo = 0
        self.pos += n
        return memoryview(self._buf)[lo:lo + n]

    def skip(self, n: int, what: str) -> None:
        if n > self.end - self.pos:
            self._need(n, what)      # raises
        self.pos += n

    def unpack(self, code: str, size: int, what: str):
        return struct.unpack(self.bo + code, self._need(size, what))[0]

    def u32(self, what: str) -> int:
        return self.unpack("I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("Q", 8, what)

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        raw = bytes(self._need(n, what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError("gguf_value_invalid", f"{what} is not UTF-8 (byte {e.start}: {e.reason})",
                              path=self.src.name) from None

    def value(self, vtype: int, depth: int, what: str = "a metadata value"):
        """One value of type id `vtype`: decoded, or a GGUFArray for a long array (walked past)."""
        fixed = _VALUE_TYPES.get(vtype)
        if fixed is not None:
            return self.unpack(fixed[0], fixed[1], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype != _ARRAY:
            raise FormatError("gguf_value_invalid", f"{what} has value type id {vtype}, not a GGUF value type "
                              "(0..12)", path=self.src.name)
        if depth >= MAX_ARRAY_DEPTH:
            raise FormatError("gguf_value_invalid", f"{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}",
                              path=self.src.name)
        item = self.u32(f"the item type of {what}")
        count = self.u64(f"the length of {what}")
        start = self.pos
        fixed = _VALUE_TYPES.get(item)
        if fixed is not None:
            if count > (self.end - self.pos) // fixed[1]:
                self._need(count * fixed[1], what)     # raises gguf_truncated
            if count <= DECODE_ARRAY_MAX:
                return list(struct.unpack(f"{self.bo}{count}{fixed[0]}", self._need(count * fixed[1], what)))
            self.skip(count * fixed[1], what)
            return GGUFArray(item, count, start, count * fixed[1])
        if item not in (_STRING, _ARRAY):
            raise FormatError("gguf_value_invalid", f"{what} is an array of value type id {item}, not a GGUF "
                              "value type (0..12)", path=self.src.name)
        if count > (self.end - self.pos) // (8 if item == _STRING else 12):
            raise FormatError("gguf_truncated", f"{what} declares {count:,} items, more than the rest of the "
                              "file can hold", path=self.src.name)
        if count <= DECODE_ARRAY_MAX:
            return [self.value(item, depth + 1, what) for _ in range(count)]
        if item == _STRING:
            self._skip_strings(count, what)
        else:
            for _ in range(count):
                self.value(item, depth + 1, what)
        return GGUFArray(item, count, start, self.pos - start)

    def _skip_strings(self, count: int, what: str) -> None:
        """Walk past `count` length-prefixed strings without decoding them: windows of the file through the
        native walker (_core.walk_gguf_strings), or one string at a time without it."""
        walk = _native_walker()
        left = count
        while left:
            avail = self.end - self.pos
            if walk is not None and avail >= 8:
                window = self.src.read_at(self.pos, min(_WALK_WINDOW, avail))
                done, p = walk(window, 0, left, self.bo == ">")
                if done:
                    self.pos += p
                    left -= done
                    continue
            # without the walker, or a string longer than the window (or the file's end)
            n = self.u64(f"the length of a string of {what}")
            self.skip(n, f"a string of {what}")
            left -= 1


def _native_walker():
    """paramkit._core's GGUF string walker, None in a pure-Python install or with an older _core."""
    try:
        from .. import _core
    except ImportError:
        return None
    return getattr(_core, "walk_gguf_strings", None)


def _byteorder(head: bytes, source: Source) -> tuple[str, int]:
    """(byte order, version) from the 4 bytes after the magic: a version that reads as 2 or 3 one way."""
    if len(head) < 8:
        raise FormatError("gguf_truncated", f"the file is {source.size} bytes, too short for a GGUF header",
                          path=source.name)
    le, be = struct.unpack("<I", head[4:8])[0], struct.unpack(">I", head[4:8])[0]
    for order, v in (("<", le), (">", be)):
        if v in (2, 3):
            return order, v
    shown = le if le < 1 << 16 else be
    raise FormatError("gguf_version_unsupported", f"GGUF version {shown}; paramkit reads versions 2 and 3"
                      + (" (version 1 files predate 64-bit counts: re-convert with a current llama.cpp)"
                         if shown == 1 else ""), path=source.name)


def parse_gguf(source: Source) -> GGUFHeader:
    """Read and check one GGUF file's header (metadata and tensor table). Raises FormatError (codes in
    ERROR_CODES) for malformed files, OSError for I/O errors."""
    head = source.read_at(0, min(8, source.size))
    if not head.startswith(GGUF_MAGIC):
        raise FormatError("unknown_format", f"not a GGUF file: it starts with {head[:4]!r}, not b'GGUF'",
                          path=source.name)
    byteorder, version = _byteorder(head, source)
    cur = _Cursor(source, byteorder, 8)
    n_tensors = cur.u64("the tensor count")
    n_kv = cur.u64("the metadata count")
    room = source.size - cur.pos
    if n_kv > room // _MIN_KV_BYTES or n_tensors > room // _MIN_TENSOR_BYTES or \
            n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_BYTES > room:
        raise FormatError("gguf_count_invalid", f"the header declares {n_tensors:,} tensors and {n_kv:,} "
                          f"metadata entries, more than a {source.size:,}-byte file can hold", path=source.name)
    metadata: dict[str, Any] = {}
    vtypes: dict[str, int] = {}
    for _ in range(n_kv):
        key = cur.string("a metadata key")
        vtype = cur.u32(f"the value type of {key!r}")
        if key in metadata:
            raise FormatError("gguf_key_duplicate", f"metadata key {key!r} appears twice", path=source.name)
        metadata[key] = cur.value(vtype, 0, f"metadata value {key!r}")
        vtypes[key] = vtype
    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in metadata:
        alignment = metadata["general.alignment"]
        if vtypes["general.alignment"] != 4 or alignment <= 0 or alignment & (alignment - 1):
            raise FormatError("gguf_alignment_invalid", f"general.alignment is {alignment!r} (value type "
                              f"{vtypes['general.alignment']}); expected a power-of-two uint32", path=source.name)
    raw_tensors = []
    seen: set[str] = set()
    for _ in range(n_tensors):
        name = cur.string("a tensor name")
        if name in seen:
            raise FormatError("gguf_tensor_name_duplicate", "two tensors have this name", path=source.name,
                              tensor=name)
        seen.add(name)
        n_dims = cur.u32(f"the dimension count of {name!r}")
        if n_dims > MAX_DIMS:
            raise FormatError("gguf_tensor_dims_invalid", f"{n_dims} dimensions; GGUF tensors have at most "
                              f"{MAX_DIMS}", path=source.name, tensor=name)
        ne = tuple(cur.u64(f"a dimension of {name!r}") for _ in range(n_dims))
        ggml_type = cur.u32(f"the type of {name!r}")
        offset = cur.u64(f"the data offset of {name!r}")
        raw_tensors.append((name, ne, ggml_type, offset))
    data_offset = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, ne, ggml_type, offset in raw_tensors:
        gt = GGML_TYPES.get(ggml_type)
        if gt is None:
            raise FormatError("gguf_tensor_type_unknown", f"GGML type id {ggml_type} is not a GGML type "
                              "(paramkit knows the gguf package's)", path=source.name, tensor=name)
        block, type_size = gt.block, gt.type_size
        numel = 1
        for d in ne:
            numel *= d
        if numel >= 1 << 63:
            raise FormatError("gguf_tensor_dims_invalid", f"dimensions {list(ne)} give {numel:,} elements, more "
                              "than 2**63", path=source.name, tensor=name)
        if ne and ne[0] % block:
            raise FormatError("gguf_tensor_block_misaligned", f"row length ne[0] = {ne[0]:,} is not a multiple "
                              f"of the {block}-element blocks of {gt.name}", path=source.name, tensor=name)
        if offset % alignment:
            raise FormatError("gguf_tensor_offset_misaligned", f"data offset {offset:,} is not a multiple of "
                              f"the alignment {alignment}", path=source.name, tensor=name)
        nbytes = numel // block * type_size
        if offset > source.size or nbytes > source.size - data_offset - offset:
            raise FormatError("gguf_tensor_out_of_bounds", f"{nbytes:,} bytes at file offset "
                              f"{data_offset + offset:,} extend past the end of the {source.size:,}-byte file "
                              "(truncated?)", path=source.name, tensor=name)
        tensors.append(GGUFTensor(name, ggml_type, gt.name, ne, data_offset + offset, nbytes, numel))
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors if t.nbytes)
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:
            raise FormatError("gguf_tensor_overlap", f"its data overlaps the data of {a!r} (which ends at byte "
                              f"{end:,}; this one starts at {begin:,})", path=source.name, tensor=b)
    return GGUFHeader(version, byteorder, alignment, metadata, vtypes, tensors, data_offset)
