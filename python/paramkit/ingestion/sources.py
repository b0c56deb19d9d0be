"""What `paramkit ingest SOURCES...` scans: each argument expanded into models, lazily (a million-line manifest is
never held as a list) -- paths (a weight file, an index, or a directory searched recursively), URLs and hf://
addresses as they are, and manifests (a text file of one source per line, or a CSV / Parquet with a `source`
column); and the identity of a source that --resume compares."""
from __future__ import annotations

import csv
import os
import re
import stat
from typing import Iterable, Iterator

_SHARD = re.compile(r"-\d{3,6}-of-\d{3,6}\.[A-Za-z0-9]+$")
MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet", ".list")


def _kinds():
    from ..formats.resolver import model_file_kinds
    return model_file_kinds()


def is_remote(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


def _manifest_sources(path: str) -> Iterator[str]:
    """The sources listed in a manifest: .parquet and .csv by their `source` column, other files line by line
    (blank lines and lines starting with '#' skipped). Relative paths are relative to the manifest."""
    base = os.path.dirname(os.path.abspath(path))

    def absolute(s: str) -> str:
        return s if is_remote(s) or os.path.isabs(s) else os.path.join(base, s)
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError("a Parquet manifest needs pyarrow: pip install 'paramkit[ingest]'") from e
        pf = pq.ParquetFile(path)
        if "source" not in pf.schema_arrow.names:
            raise ValueError(f"{path}: a Parquet manifest needs a 'source' column (it has "
                             f"{', '.join(pf.schema_arrow.names)})")
        for batch in pf.iter_batches(columns=["source"], batch_size=65536):
            for s in batch.column(0).to_pylist():
                if s:
                    yield absolute(str(s))
        return
    with open(path, newline="", encoding="utf-8") as f:
        if path.endswith(".csv"):
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "source" not in reader.fieldnames:
                raise ValueError(f"{path}: a CSV manifest needs a 'source' column in its header line")
            for rec in reader:
                s = (rec.get("source") or "").strip()
                if s:
                    yield absolute(s)
            return
        for line in f:
            s = line.strip()
            if s and not s.startswith("#"):
                yield absolute(s)


def _is_model_dir(path: str, names: list[str], exts, index_suffixes) -> bool:
    """A directory that is one model: it has an index, a config.json beside weights, or shard-named files."""
    weights = [n for n in names if n.lower().endswith(exts)]
    if any(n.endswith(index_suffixes) for n in names):
        return True
    return bool(weights) and ("config.json" in names or any(_SHARD.search(n) for n in weights))


def _walk(path: str, exts, index_suffixes) -> Iterator[str]:
    """Models under a directory, in sorted order: the directory itself when it is one model, else each weight
    file in it, then the models of its subdirectories (hidden ones skipped; symlinked directories not followed)."""
    try:
        names = sorted(os.listdir(path))
    except OSError:
        yield path      # its scan reports the error
        return
    if _is_model_dir(path, names, exts, index_suffixes):
        yield path
        return
    subdirs = []
    for n in names:
        p = os.path.join(path, n)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if not n.startswith("."):
                subdirs.append(p)
        elif stat.S_ISREG(st.st_mode) and n.lower().endswith(exts):
            yield p
    for d in subdirs:
        yield from _walk(d, exts, index_suffixes)


def _models_under(path: str, exts, index_suffixes) -> Iterator[str]:
    """_walk's models, or the directory itself when there is none under it (its row then says why: no_weights)."""
    found = False
    for s in _walk(path, exts, index_suffixes):
        found = True
        yield s
    if not found:
        yield path


def expand(arguments: Iterable[str]) -> Iterator[str]:
    """Each argument's models, in order, each source once (the first time it appears)."""
    exts, index_suffixes = _kinds()
    seen: set[str] = set()

    def once(s: str) -> Iterator[str]:
        if s not in seen:
            seen.add(s)
            yield s
    for arg in arguments:
        arg = os.fspath(arg)
        if is_remote(arg):
            yield from once(arg)
            continue
        if arg.startswith("file://"):
            arg = arg[len("file://"):]
        p = os.path.abspath(arg)
        if os.path.isdir(p):
            for s in _models_under(p, exts, index_suffixes):
                yield from once(s)
        elif os.path.isfile(p) and p.lower().endswith(MANIFEST_SUFFIXES):
            for s in _manifest_sources(p):
                if not is_remote(s) and os.path.isdir(s):
                    for m in _models_under(os.path.abspath(s), exts, index_suffixes):
                        yield from once(m)
                else:
                    yield from once(s if is_remote(s) else os.path.abspath(s))
        else:
            yield from once(p)      # a weight file, an index, or a missing path (an error row)


def identity(source: str) -> list | None:
    """What --resume compares: for a local file its (path, size, mtime ns); for a directory those of its regular
    files (sorted); None for a remote source (a remote source with an ok row is not fetched again) or a missing
    path."""
    if is_remote(source):
        return None
    try:
        st = os.stat(source)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        out = []
        for n in sorted(os.listdir(source)):
            try:
                s = os.stat(os.path.join(source, n))
            except OSError:
                continue
            if stat.S_ISREG(s.st_mode):
                out.append([n, s.st_size, s.st_mtime_ns])
        return [source, out]
    return [source, st.st_size, st.st_mtime_ns]
