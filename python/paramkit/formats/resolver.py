"""The model resolver, the same for every format: a path (one weight file, an index, a directory) becomes
the list of weight files of one model, each read by the reader its bytes call for (format registry), and
their tables merged into one TensorTable: shards checked against the index, duplicates refused, files of
the directory that were not used listed with the reason."""
from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import FormatError
from ..sources import Source
from ..table import TensorColumns, TensorInfo, TensorTable
from .locations import (basename, dirname, has_query, is_file, is_url, join, leaves_directory, listable, listdir,
                        normpath, urlsplit_path)

# Codes raised here (formats.ERROR_CODES merges them with the readers' codes; the README prints them).
ERROR_CODES: dict[str, str] = {
    "unknown_format": "not a weight file paramkit reads: none of the readers (safetensors, PyTorch, NumPy, GGUF) "
                      "recognises its first bytes (for a file without a known extension: the bytes after the "
                      "8-byte length do not start a safetensors JSON header '{'), or the path exists but is "
                      "neither a regular file nor a directory",
    "no_weights": "the directory contains no weight file paramkit reads (*.safetensors, *.bin, *.pt, *.pth, "
                  "*.ckpt, *.npz, *.npy, *.gguf) and no index of them",
    "index_ambiguous": "the directory has several indexes of the chosen format and none of the standard names "
                       "(model.safetensors.index.json, pytorch_model.bin.index.json)",
    "index_invalid": "the index is not valid JSON, or has no 'weight_map' object of tensor name to shard file "
                     "name (a relative path inside the index's directory)",
    "shard_missing": "a shard file named by the index does not exist",
    "shards_mixed": "the shards of one index are of different formats",
    "tensor_missing_from_shard": "a tensor listed in the index is absent from the shard it is assigned to",
    "tensor_duplicate": "a tensor is stored in two files of the model, or in a shard other than the one the "
                        "index assigns it to",
    "tensor_not_in_index": "a shard contains a tensor that the index does not list",
    "config_invalid": "config.json beside the weights is not a valid JSON object",
    "shard_outside_model": "a remote index's weight_map names a file outside the index's directory (an absolute "
                           "URL or path, another host or repository, a '..' part): refused, so that no request "
                           "(and no token) goes elsewhere; in a local index such a name is index_invalid",
    "url_not_a_file": "an http(s) URL names a directory (it ends in '/'): a plain HTTP server gives no file list; "
                      "pass the URL of the weight file or of its index, or an hf:// address",
}

_REMOTE_WORKERS = 8             # shards of one remote model whose headers are fetched at once

_INDEX_MAX_SIZE = 100_000_000   # a *.index.json or config.json larger than this is not one


def _err(code: str, message: str, path: str, tensor: str | None = None) -> FormatError:
    return FormatError(code, message, path=path, tensor=tensor)


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _json_type(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number")


# ---- the format registry -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileTable:
    """One weight file read by its format's reader: its tensors as columns, and, for formats whose tensors
    carry more than the columns hold (storage identity, view layout, role hints: PyTorch, NumPy), as the
    TensorInfo list too."""
    format: str
    columns: TensorColumns
    metadata: dict[str, str]
    header_bytes: int
    tensors: list[TensorInfo] | None = None
    config: dict | None = None     # the model's config from the file itself (GGUF metadata), else None


@dataclass(frozen=True)
class Reader:
    """A weight-file format: which files it takes by name (directory scans, precedence) and by their first
    bytes (sniff), and how to read one into a FileTable."""
    format: str
    extensions: tuple[str, ...]                # names of its files in a directory, in precedence order
    index_suffix: str                          # "<weights>.index.json" files that list its shards
    standard_index: str                        # the index name that wins when a directory has several
    sniff: Callable[[bytes, str], bool]        # (first bytes, file name) -> is it one of ours
    open: Callable[[Source, bool], FileTable]  # (an open paramkit.sources Source, strict) -> FileTable
    # which of a directory's files of this format are the model (the rest: ignored, with the reason)
    pick: Callable[[list[str]], tuple[list[str], list[dict]]] = lambda files: (files, [])
    # the files of the model that one file belongs to (GGUF splits), and a check of the model's files once read
    model_files: Callable[[str], list[str]] = lambda path: [path]
    check_files: Callable[[list[str], list[FileTable]], None] = lambda files, parts: None


def _readers() -> list[Reader]:
    """The formats in directory precedence order: safetensors first (as transformers loads it), then
    PyTorch checkpoints, then NumPy archives, then GGUF."""
    from . import archives, gguf_table, safetensors
    return [safetensors.READER, archives.TORCH_READER, archives.NUMPY_READER, gguf_table.GGUF_READER]


def model_file_kinds() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the weight file extensions, the index file suffixes) of every registered format: what a directory
    search (paramkit ingest) takes for a model's files."""
    readers = _readers()
    return tuple(e for r in readers for e in r.extensions), tuple(r.index_suffix for r in readers)


def _reader_for_file(path: str, head: bytes, readers: list[Reader]) -> Reader:
    """The reader for one weight file: a reader that recognises its first bytes; a known format paramkit
    does not read is unsupported_format; else the file's extension decides, and an unknown extension goes
    to the safetensors reader (whose own checks say what is wrong)."""
    from .known_magics import identify_unsupported, unsupported_format_error
    name = basename(path)
    for r in readers:
        if r.sniff(head, name):
            return r
    fmt = identify_unsupported(head, name)
    if fmt is not None:
        raise unsupported_format_error(fmt, path)
    low = name.lower()
    for r in readers:
        if low.endswith(r.extensions):
            return r
    return readers[0]


def read_source(src: Source, strict: bool = True) -> FileTable:
    """Read one weight file (any format paramkit reads), given as an open Source, into a FileTable: its
    first bytes (and name) choose the reader."""
    from .known_magics import HEAD_BYTES
    head = src.read_at(0, min(HEAD_BYTES, src.size))
    return _reader_for_file(src.name, head, _readers()).open(src, strict)


def read_weight_file(path: str, strict: bool = True) -> FileTable:
    """Read one local weight file (any format paramkit reads) into a FileTable."""
    from ..sources import open_source
    with open_source(path) as src:
        return read_source(src, strict)


# ---- JSON side files -----------------------------------------------------------------------------------------
def _read_json_file(path: str, code: str, what: str) -> Any:
    from ..sources import open_source
    from .safetensors import _raise_if_lone_surrogate, _reject_constant
    with open_source(path) as src:
        if src.size > _INDEX_MAX_SIZE:
            raise _err(code, f"{what} is {src.size:,} bytes, more than the {_INDEX_MAX_SIZE:,} accepted", path)
        raw = src.read_at(0, src.size)
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise _err(code, f"{what} is not valid UTF-8 at byte {e.start}: {e.reason}", path) from None
    except RecursionError:
        raise _err(code, f"{what} JSON is nested too deeply", path) from None
    except ValueError as e:
        raise _err(code, f"{what} is not valid JSON: {e}", path) from None
    _raise_if_lone_surrogate(obj, raw, path, code, what)
    return obj


def read_config(path: str) -> dict:
    """A config.json file as a dict; FormatError config_invalid when it is not a JSON object."""
    cfg = _read_json_file(path, "config_invalid", "config.json")
    if type(cfg) is not dict:
        raise _err("config_invalid", f"config.json holds a JSON {_json_type(cfg)}; expected an object", path)
    return cfg


def _read_config(directory: str | None) -> dict | None:
    """config.json in `directory` when there is one (None: no directory to look in, a signed URL's)."""
    if directory is None:
        return None
    cpath = join(directory, "config.json")
    if not is_url(directory):
        return read_config(cpath) if os.path.isfile(cpath) else None
    if not is_file(cpath):
        return None
    try:
        return read_config(cpath)
    except (FileNotFoundError, PermissionError):   # a plain server without one (403: a store hiding absence)
        return None


# ---- merging files -------------------------------------------------------------------------------------------
def _merge_meta(into: dict[str, str], meta: dict[str, str]) -> None:
    for k, v in meta.items():
        into.setdefault(k, v)  # first file wins


def _tables(files: list[str], strict: bool, index: str | None):
    """The files' FileTables in order: local files read one by one as they are asked for; remote files' headers
    fetched at once by a bounded thread pool (each in the caller's remote session), errors raised in file order.
    `index`: the index naming them, whose missing remote shards are shard_missing."""
    if len(files) < 2 or not is_url(files[0]):
        yield from (read_weight_file(fp, strict) for fp in files)
        return
    import contextvars
    from concurrent.futures import ThreadPoolExecutor
    from ..remote.http import RemoteNotFound
    with ThreadPoolExecutor(min(_REMOTE_WORKERS, len(files)), thread_name_prefix="paramkit-remote") as pool:
        futures = [pool.submit(contextvars.copy_context().run, read_weight_file, fp, strict) for fp in files]
        try:
            for fp, fut in zip(files, futures):
                try:
                    yield fut.result()
                except RemoteNotFound as e:
                    if index is None:
                        raise
                    raise _err("shard_missing", f"shard file does not exist ({e.strerror}); the index "
                               f"{basename(index)} assigns tensors to it", fp) from None
        finally:
            for fut in futures:
                fut.cancel()


def _read_files(files: list[str], strict: bool, index: str | None = None) -> tuple[str, list[FileTable], dict, int]:
    """(format, the files' tables, merged metadata, header bytes) of the weight files of one model; a tensor
    name in two files is tensor_duplicate; files of different formats are shards_mixed."""
    parts: list[FileTable] = []
    metadata: dict[str, str] = {}
    header_bytes = 0
    where: dict[str, str] = {}
    fmt = None
    for fp, ft in zip(files, _tables(files, strict, index)):
        if fmt is None:
            fmt = ft.format
        elif ft.format != fmt:
            raise _err("shards_mixed", f"this file is {ft.format}, the model's first file {files[0]} is {fmt}: "
                       "one model's files must be of one format", fp)
        if len(files) > 1:
            for name in ft.columns.names:
                prev = where.setdefault(name, fp)
                if prev != fp:
                    raise _err("tensor_duplicate", f"tensor is stored both here and in {prev}; a model's "
                               "files must not repeat a tensor", fp, name)
        parts.append(ft)
        _merge_meta(metadata, ft.metadata)
        header_bytes += ft.header_bytes
    return fmt or "safetensors", parts, metadata, header_bytes


def _table(user_path: str, fmt: str, files: list[str], parts: list[FileTable], **kw) -> TensorTable:
    """The model's TensorTable: from the files' columns, or (for formats with per-tensor layouts) from their
    TensorInfo lists."""
    if all(ft.tensors is None for ft in parts):
        return TensorTable(path=user_path, format=fmt, files=list(files),
                           columns=TensorColumns.concat([ft.columns for ft in parts]), **kw)
    tensors = [t for ft in parts for t in (ft.tensors if ft.tensors is not None else ft.columns.infos())]
    return TensorTable(path=user_path, format=fmt, files=list(files), tensors=tensors, **kw)


def _model_config(parts: list[FileTable], directory: str | None) -> dict | None:
    """The model's config: what its first file carries (GGUF metadata), else config.json beside the weights."""
    return parts[0].config if parts and parts[0].config is not None else _read_config(directory)


def _open_files(user_path: str, files: list[str], directory: str | None, strict: bool,
                ignored: list[dict]) -> TensorTable:
    fmt, parts, metadata, header_bytes = _read_files(files, strict)
    _reader_of_format(fmt).check_files(files, parts)
    return _table(user_path, fmt, files, parts, metadata=metadata, config=_model_config(parts, directory),
                  ignored_files=ignored, header_bytes=header_bytes)


def _open_index(user_path: str, index_path: str, strict: bool, ignored: list[dict] | None = None) -> TensorTable:
    obj = _read_json_file(index_path, "index_invalid", "index")
    if type(obj) is not dict:
        raise _err("index_invalid", f"index holds a JSON {_json_type(obj)}; expected an object with a "
                   "'weight_map'", index_path)
    wm = obj.get("weight_map")
    if type(wm) is not dict:
        raise _err("index_invalid", f"'weight_map' is {_show(wm)}; expected an object mapping tensor names "
                   "to shard file names", index_path)
    index_meta = obj.get("metadata")
    if index_meta is not None and type(index_meta) is not dict:
        raise _err("index_invalid", f"'metadata' is {_show(index_meta)}; expected an object", index_path)

    base = dirname(index_path)
    remote = is_url(base)
    shard_of_value: dict[str, str] = {}     # weight_map value -> absolute shard path (or URL)
    for name, v in wm.items():
        if type(v) is str and v in shard_of_value:
            continue
        if remote and type(v) is str and v and leaves_directory(v):
            raise _err("shard_outside_model", f"weight_map assigns the tensor to {_show(v)}, outside the index's "
                       "directory; a remote index may only name files beside it or below it", index_path, name)
        if type(v) is not str or not v or os.path.isabs(v) or ".." in re.split(r"[\\/]", v):
            raise _err("index_invalid", f"weight_map assigns the tensor to {_show(v)}; expected a shard file "
                       "name relative to the index's directory", index_path, name)
        shard_of_value[v] = join(base, v) if remote else os.path.normpath(os.path.join(base, v))
    shards = list(dict.fromkeys(shard_of_value.values()))  # order of first appearance in weight_map
    for sp in shards:
        if not is_file(sp):
            example = next(k for k, v in wm.items() if shard_of_value[v] == sp)
            raise _err("shard_missing", f"shard file does not exist (or is not a file); the index "
                       f"{basename(index_path)} assigns tensors to it, e.g. {example!r}", sp)

    fmt, parts, metadata, header_bytes = _read_files(shards, strict, index_path)
    # Design choice: a shard tensor the index does not list is an error (tensor_not_in_index): the
    # index is the model's table of contents, and a loader going by it would silently skip the tensor.
    found = 0
    for sp, ft in zip(shards, parts):
        for name in ft.columns.names:
            v = wm.get(name)
            if v is None:
                raise _err("tensor_not_in_index", f"shard contains a tensor that the index "
                           f"{basename(index_path)} does not list", sp, name)
            if shard_of_value[v] != sp:
                raise _err("tensor_duplicate", f"tensor is stored in this shard, but the index assigns it to "
                           f"{v}", sp, name)
        found += len(ft.columns)
    if found != len(wm):
        where = {name for ft in parts for name in ft.columns.names}
        for name, v in wm.items():
            if name not in where:
                raise _err("tensor_missing_from_shard", f"the index assigns this tensor to {v}, but that "
                           "shard does not contain it", shard_of_value[v], name)

    reader = next(r for r in _readers() if r.format == fmt)
    referenced = set(shards)
    unreferenced = [p for p in _weight_files(base, reader) if normpath(p) not in referenced] \
        if listable(base) else []
    return _table(user_path, fmt, shards, parts, metadata=metadata, index_metadata=index_meta,
                  config=_read_config(base), unreferenced_files=unreferenced, ignored_files=list(ignored or []),
                  header_bytes=header_bytes)


# ---- directories ---------------------------------------------------------------------------------------------
def _weight_files(directory: str, reader: Reader, names: list[str] | None = None) -> list[str]:
    """Absolute paths of the regular files of `directory` that `reader` takes by name, sorted by name."""
    out = []
    for name in names if names is not None else listdir(directory):
        if name.lower().endswith(reader.extensions):
            p = join(directory, name)
            if is_file(p):
                out.append(p)
    return out


def _indexes(directory: str, reader: Reader, names: list[str]) -> list[str]:
    return [n for n in names if n.endswith(reader.index_suffix) and is_file(join(directory, n))]


def _unsupported_in(directory: str, names: list[str], most: int = 64) -> list[str]:
    """The known formats paramkit does not read among the first `most` regular files of a directory (by their
    first bytes and names), for the no_weights message."""
    from ..sources import open_source
    from .known_magics import HEAD_BYTES, identify_unsupported
    found = set()
    if is_url(directory):    # a hub repository: not worth a request per file for a hint
        return []
    for n in names[:most]:
        p = os.path.join(directory, n)
        if not os.path.isfile(p):
            continue
        try:
            with open_source(p) as src:
                head = src.read_at(0, min(HEAD_BYTES, src.size))
        except OSError:
            continue
        fmt = identify_unsupported(head, n)
        if fmt:
            found.add(fmt)
    return sorted(found)


def _open_directory(user_path: str, ap: str, strict: bool) -> TensorTable:
    """The model in a directory: the first format (in precedence order) with an index or weight files wins;
    the other formats' files are listed in ignored_files with the reason."""
    names = listdir(ap)
    readers = _readers()
    found = [(r, _indexes(ap, r, names), _weight_files(ap, r, names)) for r in readers]
    chosen = next(((r, idx, files) for r, idx, files in found if idx or files), None)
    if chosen is None:
        other = _unsupported_in(ap, names)
        hint = f"; it holds {', '.join(other)} files, which paramkit does not read" if other else ""
        raise _err("no_weights", "directory has no weight file paramkit reads (*.safetensors, *.bin, *.pt, *.pth, "
                   f"*.ckpt, *.npz, *.npy, *.gguf) and no index of them{hint}", ap)
    reader, idx, files = chosen
    files, ignored = reader.pick(files)
    for r, ridx, rfiles in found:
        if r is reader:
            continue
        for p in [join(ap, n) for n in ridx] + rfiles:
            ignored.append({"file": p, "reason": f"{reader.format} weights are in this directory and take "
                            f"precedence over {r.format} ones (as transformers loads them)"})
    if idx:
        if reader.standard_index in idx:
            pick = reader.standard_index
        elif len(idx) == 1:
            pick = idx[0]
        else:
            raise _err("index_ambiguous", f"directory has several indexes ({', '.join(idx)}) and no "
                       f"{reader.standard_index}; pass the index file to use", ap)
        return _open_index(user_path, join(ap, pick), strict, ignored)
    return _open_files(user_path, files, ap, strict, ignored)


def open_table(path, *, strict: bool = True) -> TensorTable:
    """Read the tensor table of a weight file (safetensors, PyTorch .bin/.pt/.pth/.ckpt, NumPy .npy/.npz, GGUF), an
    index (*.safetensors.index.json, pytorch_model.bin.index.json), a directory or one file of a GGUF split
    (all its files), headers only.

    strict=False only tolerates a malformed safetensors __metadata__ (non-string values are kept as JSON text).
    Raises FileNotFoundError for a missing path, FormatError for malformed input, OSError for I/O.
    """
    user_path = os.fspath(path)
    if isinstance(user_path, bytes):
        user_path = os.fsdecode(user_path)
    from ..remote import is_url as is_remote
    if is_remote(user_path):
        return _open_remote(user_path, strict)
    st = os.stat(user_path)  # FileNotFoundError / PermissionError stay OSError
    ap = os.path.abspath(user_path)
    if stat.S_ISDIR(st.st_mode):
        return _open_directory(user_path, ap, strict)
    if not stat.S_ISREG(st.st_mode):
        raise _err("unknown_format", "path exists but is neither a regular file nor a directory", ap)
    if ap.endswith(".json"):
        return _open_index(user_path, ap, strict)
    files = _model_files(ap)
    return _open_files(user_path, files, os.path.dirname(ap), strict, [])


def _open_remote(user_path: str, strict: bool) -> TensorTable:
    """open_table of an http(s) URL (a weight file or an index), an hf:// address or an fsspec URL (a file, an
    index, a directory or prefix), in one remote session whose
    transfer totals the table keeps (table.transfer)."""
    from ..remote import HUB_SCHEME, is_http, session
    with session() as s:
        if user_path.lower().startswith(HUB_SCHEME):
            from ..remote.hub import resolve
            url, is_dir = resolve(user_path, s)
        elif not is_http(user_path):    # an fsspec store: a directory (prefix) is listed like a local one
            from ..remote.objstore import is_directory, list_files
            url, is_dir = user_path, is_directory(user_path, s.transfer)
            if is_dir:
                url = url.rstrip("/")
                s.listings[url] = list_files(url, s.transfer)
        else:
            url, is_dir = user_path, urlsplit_path(user_path).endswith("/")
            if is_dir:
                raise _err("url_not_a_file", "the URL names a directory, which a plain HTTP server does not list; "
                           "pass the URL of the weight file or of its index (or an hf:// address)", user_path)
        if is_dir:
            table = _open_directory(user_path, url, strict)
        elif basename(url).endswith(".json"):
            table = _open_index(user_path, url, strict)
        else:
            directory = None if has_query(url) else dirname(url)
            table = _open_files(user_path, _model_files(url), directory, strict, [])
        table.transfer = s.report()
        table.file_sizes = dict(s.sizes)
        table.remote = s
    return table


def _reader_of_format(fmt: str) -> Reader:
    return next(r for r in _readers() if r.format == fmt)


def _model_files(path: str) -> list[str]:
    """The files of the model that weight file `path` is one of: itself, or all files of a GGUF split (told by
    the file's name, so no byte is read here)."""
    low = basename(path).lower()
    return next((r.model_files(path) for r in _readers() if low.endswith(r.extensions)), [path])
