"""Strict safetensors reader: one .safetensors file's header into columns (paramkit.table.TensorColumns),
rejecting every malformed file with a stable code (formats.resolver turns files, indexes and directories
into a model)."""
from __future__ import annotations

import json
import os
import re
import reprlib
from typing import Any

import numpy as np

from .._gcpause import gc_paused
from ..dtypes import DTYPES, SAFETENSORS_DTYPES
from ..errors import FormatError
from ..table import DTYPE_NAMES, TensorColumns, TensorInfo, u64_column

__all__ = ["ERROR_CODES", "MAX_HEADER_SIZE", "READER", "read_columns", "read_file", "sniff"]

# The largest header the reference implementation accepts (its MAX_HEADER_SIZE).
MAX_HEADER_SIZE = 100_000_000
_U64_MAX = 2**64 - 1
_PEEK = 4096                    # bytes looked at to recognise a file whose declared N is implausible

# Every code this module raises, with a one-line description (the README prints this table).
ERROR_CODES: dict[str, str] = {
    "file_too_short": "file shorter than the 8-byte header length field",
    "header_too_large": "declared header length N exceeds 100,000,000 bytes",
    "header_beyond_eof": "declared header (8 + N bytes) extends past the end of the file (truncated file?)",
    "header_not_utf8": "header bytes are not valid UTF-8, or a JSON string in the header escapes an unpaired "
                       "UTF-16 surrogate (\\ud800-\\udfff without its partner), which no UTF-8 text can hold",
    "header_not_json": "header is not valid JSON (or is not a JSON object)",
    "duplicate_key": "a key appears twice in one JSON object of the header (tensor name, __metadata__ "
                     "key, or a field of a tensor entry)",
    "metadata_invalid": "__metadata__ is not a map of string to string (strict=False tolerates this)",
    "tensor_not_object": "a tensor entry is not a JSON object",
    "tensor_missing_field": "a tensor entry lacks one of dtype, shape, data_offsets",
    "dtype_unknown": "a tensor's dtype is not one of the safetensors dtypes",
    "shape_invalid": "a tensor's shape is not a list of non-negative integers (each < 2**64)",
    "numel_overflow": "a tensor's element count (product of its shape) does not fit in 64 bits",
    "offsets_invalid": "data_offsets is not a pair [BEGIN, END] of non-negative integers with BEGIN <= END",
    "sub_byte_misaligned": "elements x dtype bits is not a multiple of 8 (sub-byte dtypes F4/F6 need "
                           "whole bytes)",
    "size_mismatch": "END - BEGIN differs from the byte size implied by dtype and shape",
    "data_gap": "tensors sorted by BEGIN leave unused bytes (first BEGIN != 0 or BEGIN > previous END)",
    "data_overlap": "tensors sorted by BEGIN overlap (BEGIN < previous END)",
    "data_beyond_eof": "the tensors' data extends past the end of the file (truncated file)",
    "trailing_bytes": "the file has bytes after the last tensor's data",
}

_NON_WS = re.compile(rb"[^ \t\r\n]")          # JSON whitespace is exactly these four bytes
# A JSON escape that may decode to a surrogate (after an escaped backslash too: then the exact check finds nothing)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")     # left in a decoded str only by an unpaired escape
_REQUIRED = ("dtype", "shape", "data_offsets")
_BITS: dict[str, int] = {name: DTYPES[name].bits for name in SAFETENSORS_DTYPES}
# dtype -> (bits, its code in the table's columns: an index into table.DTYPE_NAMES)
_DTYPE_CODE: dict[str, tuple[int, int]] = {name: (DTYPES[name].bits, code) for code, name in enumerate(DTYPE_NAMES)
                                            if name in _BITS}
# what the native fast path gets told about the dtypes: (name, bits) in code order
_NATIVE_DTYPES = tuple((name, DTYPES[name].bits) for name in DTYPE_NAMES[:len(SAFETENSORS_DTYPES)])
_DTYPE_LIST = ", ".join(SAFETENSORS_DTYPES)
_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_show = _short.repr


def _err(code: str, message: str, path: str, tensor: str | None = None) -> FormatError:
    return FormatError(code, message, path=path, tensor=tensor)


def _native_parser():
    """paramkit._core's header fast path (cpp/src/safetensors_header.cpp), None in a pure-Python install or
    with an older _core. It returns the columns of a header it accepts, a str (why not) otherwise."""
    try:
        from .. import _core
    except ImportError:
        return None
    return getattr(_core, "parse_safetensors_header", None)


# The tests set this to None to run the pure-Python reader (json.loads) on the same files.
_native_parse = _native_parser()


# --- reading ----------------------------------------------------------------------------------
def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name} (NaN/Infinity are not JSON)")


def _find_duplicate(text: str) -> tuple[str, str | None, str] | None:
    """Exact (slow) duplicate-key search: returns (where, tensor, key) for the most relevant duplicate,
    where is 'top', 'metadata', 'entry' or 'nested'; None when the header has no duplicate key."""
    dups: list[tuple[dict, str]] = []

    def hook(pairs):
        d = dict(pairs)
        if len(d) != len(pairs):
            seen = set()
            for k, _ in pairs:
                if k in seen:
                    dups.append((d, k))
                    break
                seen.add(k)
        return d

    try:
        top = json.loads(text, object_pairs_hook=hook, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # pragma: no cover - text already parsed once
        return None
    if not dups or type(top) is not dict:
        return None
    for d, k in dups:
        if d is top:
            return ("top", None if k == "__metadata__" else k, k)
    meta = top.get("__metadata__")
    for d, k in dups:
        if d is meta:
            return ("metadata", None, k)
    owner = {id(v): name for name, v in top.items() if type(v) is dict}
    for d, k in dups:
        if id(d) in owner:
            return ("entry", owner[id(d)], k)
    return ("nested", None, dups[0][1])


def _raise_if_duplicate(text: str, path: str) -> None:
    found = _find_duplicate(text)
    if found is None:
        return
    where, tensor, key = found
    if where == "top":
        if tensor is None:
            msg = "the header has more than one '__metadata__' key; expected at most one"
        else:
            msg = f"tensor name {key!r} appears more than once in the header; tensor names must be unique"
    elif where == "metadata":
        msg = f"key {key!r} appears more than once in __metadata__; metadata keys must be unique"
    elif where == "entry":
        msg = f"field {key!r} appears more than once in the entry of tensor {tensor!r}"
    else:
        msg = f"key {key!r} appears more than once in a nested JSON object of the header"
    raise _err("duplicate_key", msg, path, tensor)


def read_file(path, *, strict: bool = True) -> tuple[list[TensorInfo], dict[str, str], int]:
    """read_columns with the tensors as TensorInfo objects: (tensors sorted by byte offset, __metadata__,
    header bytes = 8 + N)."""
    columns, metadata, header_bytes = read_columns(path, strict=strict)
    return columns.infos(), metadata, header_bytes


def read_columns(source, *, strict: bool = True) -> tuple[TensorColumns, dict[str, str], int]:
    """Parse and validate one safetensors file's header.

    `source`: a paramkit.sources Source (or a path, opened as one). Returns (its tensors sorted by byte
    offset, as columns whose one file is the source's local path, offsets in that file; __metadata__ as
    str->str; header bytes = 8 + N). FormatError.path is the source's name. Raises FormatError for
    malformed files, OSError for I/O problems. The native fast path parses headers it can; any other header
    (an error, or JSON it does not handle) goes through json.loads and the checks below, so the result or
    error is the same either way.
    """
    if isinstance(source, (str, bytes, os.PathLike)):
        from ..sources import open_source
        with open_source(source) as src:
            return read_columns(src, strict=strict)
    from ..sources import is_whole
    columns, metadata, header_bytes = _read_columns(source, strict)
    if not is_whole(source):   # a part of another file (a stored zip member)
        columns = TensorColumns(columns.names, columns.dtype_names, columns.dtype, (source.path,), columns.file,
                                columns.offset + np.uint64(source.file_offset), columns.nbytes, columns.numel,
                                columns.ndim, columns.dims)
    return columns, metadata, header_bytes


def _read_columns(src, strict: bool) -> tuple[TensorColumns, dict[str, str], int]:
    path, size = src.name, src.size
    if size < 8:
        raise _err("file_too_short",
                   f"file is {size} bytes; a safetensors file starts with an 8-byte header length",
                   path)
    n = int.from_bytes(src.read_at(0, 8), "little")
    plausible = n <= MAX_HEADER_SIZE and 8 + n <= size
    # Never allocate from an untrusted N: read N bytes only once N is known to fit in the file.
    header = src.read_at(8, n if plausible else min(size - 8, n, _PEEK))
    m = _NON_WS.search(header)
    if m is not None and header[m.start()] != 0x7B:  # '{'
        raise _err("unknown_format",
                   f"not a safetensors file: bytes 8.. start with {header[m.start():m.start() + 8]!r}, "
                   "expected the JSON header object '{' after the 8-byte length", path)
    if n > MAX_HEADER_SIZE:
        raise _err("header_too_large",
                   f"declared header length {n:,} bytes exceeds the limit of {MAX_HEADER_SIZE:,} bytes "
                   f"(file is {size:,} bytes)", path)
    if 8 + n > size:
        raise _err("header_beyond_eof",
                   f"declared header of {n:,} bytes needs a file of at least {8 + n:,} bytes, "
                   f"but the file has {size:,} (truncated?)", path)
    if m is None:
        raise _err("unknown_format",
                   f"not a safetensors file: the declared {n}-byte header is empty or blank, "
                   "expected a JSON object", path)
    parsed = _native_parse(header, _NATIVE_DTYPES) if _native_parse is not None else None
    if type(parsed) is tuple:
        names, dtype, begin, end, ndim, dims, numel, metadata = parsed
        return _in_offset_order(names, dtype, begin, end, ndim, dims, numel, path, n, size), metadata, 8 + n
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _err("header_not_utf8",
                   f"header byte {e.start} (file offset {8 + e.start}) is not valid UTF-8: {e.reason}",
                   path) from None
    columns, metadata = _parse_header(text, header, path, n, size, strict)
    return columns, metadata, 8 + n


def _lone_surrogate(obj: Any) -> tuple[str, str | None] | None:
    """The first string (key or value, at any depth) of parsed JSON that holds an unpaired surrogate, with the
    top-level key whose value holds it (None when it is that key itself); None when every string is text."""
    stack: list[tuple[Any, str | None]] = [(obj, None)]
    while stack:
        v, top = stack.pop()
        if type(v) is str:
            if _SURROGATE.search(v):
                return v, top
        elif type(v) is dict:
            for k, x in v.items():
                if _SURROGATE.search(k):
                    return k, top
                stack.append((x, k if v is obj else top))
        elif type(v) is list:
            stack.extend((x, top) for x in v)
    return None


def _raise_if_lone_surrogate(obj: Any, raw: bytes, path: str, code: str, what: str, header: bool = False) -> None:
    """FormatError `code` when a string of the parsed JSON holds an unpaired UTF-16 surrogate escape: Python's
    json accepts "\\ud800", serde_json (the safetensors reference) rejects it, and such a string cannot be
    encoded as UTF-8 (printing or writing it fails later). Costs a regex search unless an escape is there.
    header=True: obj is a safetensors header, whose top-level keys other than __metadata__ are tensor names
    (the error's tensor when the string lies inside its entry)."""
    if _SURROGATE_ESCAPE.search(raw) is None:
        return
    found = _lone_surrogate(obj)
    if found is None:
        return
    bad, top = found
    surrogate = _SURROGATE.search(bad).group()
    tensor = top if header and top != "__metadata__" else None
    raise _err(code, f"{what} string {ascii(bad)[:80]} holds the unpaired UTF-16 surrogate escape "
               f"{ascii(surrogate)[1:-1]}: JSON text must be valid Unicode (the safetensors reference rejects it)",
               path, tensor)


def _parse_header(text: str, raw: bytes, path: str, n: int, size: int, strict: bool):
    with gc_paused():  # 100k dicts/lists from json: generational GC passes would double the time
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except RecursionError:
            raise _err("header_not_json", "header JSON is nested too deeply", path) from None
        except ValueError as e:
            raise _err("header_not_json", f"header is not valid JSON: {e}", path) from None
        if type(obj) is not dict:  # pragma: no cover - the header starts with '{'
            raise _err("header_not_json", f"header is a JSON {type(obj).__name__}, expected an object", path)
        _raise_if_lone_surrogate(obj, raw, path, "header_not_utf8", "header", header=True)
        try:
            return _validate(obj, text, raw, path, n, size, strict)
        except FormatError:
            # a duplicate key may be the root cause (the later value shadowed the earlier one)
            _raise_if_duplicate(text, path)
            raise


def _entry_error(name: str, e: Any, path: str) -> FormatError:
    """The first rule (in the documented order) that tensor entry `e` breaks, as a FormatError.
    Extra keys are ignored, like the reference implementation (serde without deny_unknown_fields:
    safetensors 0.8 loads such files); missing keys are errors."""
    if type(e) is not dict:
        return _err("tensor_not_object", f"entry is a JSON {_json_type(e)} ({_show(e)}); expected an object "
                    "with dtype, shape and data_offsets", path, name)
    missing = [k for k in _REQUIRED if k not in e]
    if missing:
        return _err("tensor_missing_field", f"entry lacks {', '.join(missing)}; found keys {sorted(e)}, "
                    "expected dtype, shape and data_offsets", path, name)
    dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
    if type(dtype) is not str or dtype not in _BITS:
        return _err("dtype_unknown", f"dtype {_show(dtype)} is not a safetensors dtype; expected one of "
                    f"{_DTYPE_LIST}", path, name)
    if type(shape) is not list:
        return _err("shape_invalid", f"shape is {_show(shape)}; expected a list of non-negative integers",
                    path, name)
    for d in shape:
        if type(d) is not int or d < 0 or d > _U64_MAX:
            return _err("shape_invalid", f"shape {_show(shape)} has dimension {_show(d)}; expected "
                        "integers from 0 to 2**64-1", path, name)
    numel = 1
    for d in shape:
        numel *= d
    if numel > _U64_MAX:
        return _err("numel_overflow", f"shape {_show(shape)} has {numel} elements, more than 2**64-1",
                    path, name)
    if (type(offs) is not list or len(offs) != 2 or type(offs[0]) is not int or type(offs[1]) is not int
            or offs[0] < 0 or offs[1] < offs[0]):
        return _err("offsets_invalid", f"data_offsets is {_show(offs)}; expected [BEGIN, END], integers "
                    "with 0 <= BEGIN <= END", path, name)
    begin, end = offs
    bits = _BITS[dtype]
    nbits = numel * bits
    if nbits % 8:
        return _err("sub_byte_misaligned", f"{numel} elements x {bits} bits ({dtype}) = {nbits} bits, not a "
                    "whole number of bytes", path, name)
    if end - begin != nbits // 8:
        return _err("size_mismatch", f"data_offsets [{begin}, {end}] span {end - begin} bytes; dtype {dtype} "
                    f"with shape {shape} needs {nbits // 8} bytes", path, name)
    raise AssertionError(f"entry {name!r} flagged as invalid but passes every rule")  # pragma: no cover


def _json_type(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(v), type(v).__name__)


def _validate(obj: dict, text: str, raw: bytes, path: str, n: int, size: int, strict: bool):
    expected_colons = len(obj)
    meta_raw = obj.pop("__metadata__", None)
    metadata: dict[str, str] = {}
    if meta_raw is not None:  # null is accepted as "no metadata", like the reference (Option<..>)
        if type(meta_raw) is dict:
            expected_colons += len(meta_raw)
            for k, v in meta_raw.items():
                if type(v) is str:
                    metadata[k] = v
                elif strict:
                    raise _err("metadata_invalid",
                               f"__metadata__[{k!r}] is {_show(v)} (a JSON {_json_type(v)}); "
                               "expected a string value (pass strict=False to tolerate)", path)
                else:
                    metadata[k] = json.dumps(v)
        elif strict:
            raise _err("metadata_invalid",
                       f"__metadata__ is a JSON {_json_type(meta_raw)} ({_show(meta_raw)}); expected "
                       "an object of string to string (pass strict=False to tolerate)", path)
        # strict=False and not an object: dropped (there are no string pairs to keep)

    dtype_code = _DTYPE_CODE
    U64 = _U64_MAX
    codes: list[int] = []
    begins: list[int] = []
    ends: list[int] = []
    ndims: list[int] = []
    dims: list[int] = []
    numels: list[int] = []
    # Hot loop, run 100k times for MoE headers: detect (only detect) that an entry is bad with as few
    # operations as possible -- _entry_error() then re-checks that entry in the documented rule order and
    # builds the precise error -- and append its columns.
    for name, e in obj.items():
        try:
            dtype = e["dtype"]
            shape = e["shape"]
            begin, end = e["data_offsets"]
            bits, code = dtype_code[dtype]
        except Exception:
            raise _entry_error(name, e, path) from None
        if type(shape) is not list or type(begin) is not int or type(end) is not int or begin < 0:
            raise _entry_error(name, e, path)
        numel = 1
        for d in shape:
            if type(d) is not int or d < 0:  # exact type test: JSON true/false (bool) are not dims
                raise _entry_error(name, e, path)
            numel *= d
        nbits = numel * bits
        if numel > U64 or nbits & 7 or end - begin != nbits >> 3 or (not numel and shape and max(shape) > U64):
            raise _entry_error(name, e, path)
        codes.append(code)
        begins.append(begin)
        ends.append(end)
        ndims.append(len(shape))
        dims.extend(shape)
        numels.append(numel)

    # Duplicate keys: json keeps the last value silently. Every key/value pair of every object costs
    # one ':' outside strings, so when the raw ':' count equals the pairs we hold, nothing was shadowed
    # (':' inside strings only makes the count larger). Otherwise do the exact, slower search.
    if raw.count(b":") != expected_colons + sum(map(len, obj.values())):
        _raise_if_duplicate(text, path)

    columns = _in_offset_order(list(obj), codes, u64_column(begins), u64_column(ends), ndims, dims, numels,
                               path, n, size)
    return columns, metadata


def _offset_order(begin: np.ndarray, end: np.ndarray, names: list[str]) -> np.ndarray | None:
    """Indices of the tensors sorted by (BEGIN, END, name) (END orders like END - BEGIN for equal BEGIN), or
    None when that is their order already (as in every file safetensors writes)."""
    order = None
    if len(begin) > 1:
        b0, b1 = begin[:-1], begin[1:]
        if not ((b1 > b0) | ((b1 == b0) & (end[1:] >= end[:-1]))).all():
            order = np.lexsort((end, begin))
    b, e = (begin, end) if order is None else (begin[order], end[order])
    tie = np.flatnonzero((b[1:] == b[:-1]) & (e[1:] == e[:-1]))   # tensors k, k + 1 share (BEGIN, END)
    if len(tie):   # runs of equal (BEGIN, END): by name
        out = np.arange(len(begin)) if order is None else order
        changed = order is not None
        cut = np.flatnonzero(np.diff(tie) != 1)
        for first, last in zip(tie[np.r_[0, cut + 1]].tolist(), tie[np.r_[cut, len(tie) - 1]].tolist()):
            run = out[first:last + 2].tolist()
            by_name = sorted(run, key=names.__getitem__)
            if by_name != run:
                out[first:last + 2] = by_name
                changed = True
        order = out if changed else None
    return order


def _in_offset_order(names: list[str], dtype, begin: np.ndarray, end: np.ndarray, ndim, dims, numel, path: str,
                     n: int, size: int) -> TensorColumns:
    """The columns of one file's tensors sorted by (BEGIN, END, name), once they are known to tile the data
    buffer: first BEGIN = 0, each BEGIN = the previous END, the last END = the end of the file. Raises the
    FormatError of the first tensor in that order that breaks the rule (data_gap, data_overlap,
    data_beyond_eof), else trailing_bytes. Entries are valid (END - BEGIN is their byte size)."""
    data_len = size - 8 - n
    count = len(names)
    order = _offset_order(begin, end, names)
    b, e = (begin, end) if order is None else (begin[order], end[order])
    pos = 0
    if count:
        prev_end = np.empty_like(e)
        prev_end[0] = 0
        prev_end[1:] = e[:-1]
        bad = (b != prev_end) | (e > data_len)
        if bad.any():
            i = int(np.argmax(bad))
            name = names[i if order is None else int(order[i])]
            begin_i, pos = int(b[i]), int(prev_end[i])
            if begin_i != pos:
                prev = f"the previous tensor ends at {pos}" if pos else "the data buffer starts at 0"
                if begin_i > pos:
                    raise _err("data_gap", f"data_offsets begin at {begin_i}, but {prev}: {begin_i - pos} bytes "
                               "belong to no tensor", path, name)
                raise _err("data_overlap", f"data_offsets begin at {begin_i}, before the previous tensor ends at "
                           f"{pos}: {pos - begin_i} bytes overlap", path, name)
            pos = int(e[i])
            raise _err("data_beyond_eof",
                       f"data ends at buffer offset {pos} (file offset {8 + n + pos}), but the file "
                       f"is {size} bytes (data buffer {data_len} bytes); truncated file?", path, name)
        pos = int(e[-1])
    if pos != data_len:
        raise _err("trailing_bytes", f"the tensors' data ends at file offset {8 + n + pos}, but the file has "
                   f"{data_len - pos} more bytes (file is {size} bytes)", path)
    base = np.uint64(8 + n)
    columns = TensorColumns(names, DTYPE_NAMES, dtype, (path,), np.zeros(count, dtype=np.uint32), begin + base,
                            end - begin, numel, ndim, dims)
    return columns if order is None else columns.take(order)


# --- the format registry's entry ----------------------------------------------------------------
def sniff(head: bytes, name: str) -> bool:
    """A safetensors file by its first bytes: an 8-byte header length, then (after JSON blanks) '{'."""
    if len(head) < 9 or int.from_bytes(head[:8], "little") > MAX_HEADER_SIZE:
        return False
    m = _NON_WS.search(head, 8)
    return m is not None and head[m.start()] == 0x7B


def _open(source, strict: bool):
    from .resolver import FileTable
    columns, metadata, header_bytes = read_columns(source, strict=strict)
    return FileTable("safetensors", columns, metadata, header_bytes)


def _reader():
    from .resolver import Reader
    return Reader(format="safetensors", extensions=(".safetensors",), index_suffix=".safetensors.index.json",
                  standard_index="model.safetensors.index.json", sniff=sniff, open=_open)


READER = _reader()
