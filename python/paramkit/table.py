"""TensorTable: what a format reader hands to counting and to the engines — per tensor its name,
dtype, shape, file, absolute byte offset and length — plus file metadata and config.json.

The table is columnar (TensorColumns: numpy arrays and a list of names), because a 100,000-tensor MoE
header must read in milliseconds; the per-tensor TensorInfo objects are made only when asked for
(``table.tensors``, built once on first access)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ._gcpause import gc_paused
from .dtypes import DTYPES

# dtype code -> name for tables of safetensors files: the order of paramkit.dtypes.DTYPES (these are the
# DTYPES keys themselves, so every TensorInfo.dtype of a dtype is one shared str)
DTYPE_NAMES: tuple[str, ...] = tuple(DTYPES)


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


# --- many instances of a plain dataclass, fast ---------------------------------------------------
def _native_make_instances():
    """paramkit._core.make_instances (cpp/bindings/records_bindings.cpp), None without the extension."""
    try:
        from . import _core
    except ImportError:
        return None
    return getattr(_core, "make_instances", None)


def record_maker(cls: type, fields: Sequence[str]) -> Callable[..., list]:
    """make(*columns) -> [cls(*row) for row in zip(*columns)], where `fields` name the columns (lists): the
    first len(fields) fields of the dataclass `cls`, the rest left at their defaults.

    A frozen dataclass's __init__ makes one object.__setattr__ call per field, which dominates for
    100k-tensor headers. So, for a frozen one without __post_init__ or default_factory, the first of these
    that builds exactly what the constructor builds (checked once on a probe row) is used:
    paramkit._core.make_instances (object.__new__ + object.__setattr__ per field, in C: ~3.5x faster),
    a loop filling each __dict__ directly (~2x). Otherwise, and for other dataclasses (whose plain
    attribute stores CPython 3.11+ runs faster than either), a loop calling the constructor, generated
    for the field count (no per-row argument unpacking). A change to `cls` can make this slower, never
    wrong."""
    fs = dataclasses.fields(cls)
    fields = tuple(fields)
    if tuple(f.name for f in fs[:len(fields)]) != fields or not all(f.isidentifier() for f in fields):
        raise ValueError(f"{cls.__name__}'s first fields are not {fields}")
    rest = fs[len(fields):]
    args = ", ".join(f"c{i}" for i in range(len(fields)))
    row = ", ".join(f"a{i}" for i in range(len(fields)))
    scope = {"new": object.__new__, "setd": object.__setattr__, "cls": cls,
             **{f"_d{i}": f.default for i, f in enumerate(rest)}}
    exec(f"def by_constructor({args}):\n"   # noqa: S102 - generated from field names checked to be identifiers
         f"    return [cls({row}) for {row}, in zip({args})]\n", scope)
    by_constructor = scope["by_constructor"]
    if (not cls.__dataclass_params__.frozen or hasattr(cls, "__post_init__")
            or any(f.default is dataclasses.MISSING or not f.init for f in rest)):
        return by_constructor
    candidates = []
    native = _native_make_instances()
    if native is not None:
        names = tuple(f.name for f in fs)
        defaults = tuple(f.default for f in rest)

        def by_native(*cols):
            n = len(cols[0])
            return native(cls, names, tuple(c if type(c) is list else list(c) for c in cols)
                          + tuple([d] * n for d in defaults))
        candidates.append(by_native)
    if "__slots__" not in cls.__dict__:
        items = ", ".join([f"{f!r}: a{i}" for i, f in enumerate(fields)]
                          + [f"{f.name!r}: _d{i}" for i, f in enumerate(rest)])
        exec(f"def by_dict({args}):\n"   # noqa: S102
             f"    out = [new(cls) for _ in range(len(c0))]\n"
             f"    for t, {row}, in zip(out, {args}):\n"
             f"        setd(t, '__dict__', {{{items}}})\n"
             f"    return out\n", scope)
        candidates.append(scope["by_dict"])
    probe = tuple([i] for i in range(len(fields)))
    want = by_constructor(*probe)[0]
    for make in candidates:
        try:
            got = make(*probe)[0]
            if type(got) is cls and got == want and vars(got) == vars(want):
                return make
        except Exception:  # pragma: no cover - defensive
            pass
    return by_constructor


_INFO_FIELDS = ("name", "dtype", "shape", "file", "offset", "nbytes", "numel")
_make_infos = record_maker(TensorInfo, _INFO_FIELDS)

_U64 = np.uint64


def u64_column(values) -> np.ndarray:
    """A uint64 column of Python ints; an object array when one is >= 2**64 (only the data_offsets of a
    header whose tiling check is about to fail: they then still compare and sort exactly)."""
    try:
        return np.asarray(values, dtype=_U64)
    except OverflowError:
        return np.asarray(values, dtype=object)


class TensorColumns:
    """The tensors of a table, one array per attribute, in table order.

    names: list of str; dtype: uint8 codes into dtype_names; file: uint32 codes into file_names;
    offset, nbytes, numel: uint64; ndim: uint32 (len(shape)); dims: uint64, the shapes concatenated.
    Columns are read-only views of what the reader found: build a new table to change them."""

    __slots__ = ("names", "dtype_names", "dtype", "file_names", "file", "offset", "nbytes", "numel", "ndim",
                 "dims", "_starts", "_shapes")

    def __init__(self, names: list[str], dtype_names: Sequence[str], dtype, file_names: Sequence[str], file,
                 offset, nbytes, numel, ndim, dims):
        self.names = names
        self.dtype_names = tuple(dtype_names)
        self.file_names = tuple(file_names)
        self.dtype = np.asarray(dtype, dtype=np.uint8)
        self.file = np.asarray(file, dtype=np.uint32)
        self.offset = u64_column(offset)
        self.nbytes = u64_column(nbytes)
        self.numel = u64_column(numel)
        self.ndim = np.asarray(ndim, dtype=np.uint32)
        self.dims = u64_column(dims)
        self._starts = None
        self._shapes = None
        n = len(names)
        if not all(len(c) == n for c in (self.dtype, self.file, self.offset, self.nbytes, self.numel, self.ndim)):
            raise ValueError("columns of different lengths")
        if int(self.ndim.sum(dtype=np.uint64)) != len(self.dims):
            raise ValueError("dims does not hold sum(ndim) values")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def data_bytes(self) -> int:
        return int(self.nbytes.sum())

    def starts(self) -> np.ndarray:
        """Index in `dims` of each tensor's first dimension."""
        if self._starts is None:
            s = np.zeros(len(self.ndim), dtype=np.int64)
            np.cumsum(self.ndim[:-1], out=s[1:])
            self._starts = s
        return self._starts

    def shape(self, i: int) -> tuple[int, ...]:
        s = int(self.starts()[i])
        return tuple(self.dims[s:s + int(self.ndim[i])].tolist())

    def shapes(self) -> list[tuple[int, ...]]:
        """Every tensor's shape as a tuple of Python ints (built once; TensorInfo and TensorReport objects share
        the tuples)."""
        if self._shapes is None:
            self._shapes = self._build_shapes()
        return self._shapes

    def dtypes(self) -> list[str]:
        """Every tensor's dtype name."""
        dn = self.dtype_names
        return [dn[0]] * len(self) if len(dn) == 1 else list(map(dn.__getitem__, self.dtype.tolist()))

    def files(self) -> list[str]:
        """Every tensor's file."""
        fn = self.file_names
        return [fn[0]] * len(self) if len(fn) == 1 else list(map(fn.__getitem__, self.file.tolist()))

    def _build_shapes(self) -> list[tuple[int, ...]]:
        """Per distinct ndim, the tuples made by zip over the dims columns (C speed)."""
        n = len(self)
        if n == 0:
            return []
        nd = self.ndim
        ranks = np.unique(nd)
        dims = self.dims
        if len(ranks) == 1:
            k = int(ranks[0])
            if k == 0:
                return [()] * n
            return list(zip(*dims.reshape(n, k).T.tolist()))
        starts = self.starts()
        parts, where = [], []
        for k in ranks.tolist():
            idx = np.flatnonzero(nd == k)
            where.append(idx)
            if k == 0:
                parts.append([()] * len(idx))
            else:
                cols = dims[starts[idx][:, None] + np.arange(k)]
                parts.append(list(zip(*cols.T.tolist())))
        flat = [t for p in parts for t in p]
        order = np.empty(n, dtype=np.int64)
        order[np.concatenate(where)] = np.arange(n)
        return list(map(flat.__getitem__, order.tolist()))

    def infos(self) -> list[TensorInfo]:
        """One TensorInfo per tensor (Python ints and strs throughout)."""
        with gc_paused():   # 2 acyclic objects per tensor: generational passes would double the time
            return _make_infos(self.names, self.dtypes(), self.shapes(), self.files(), self.offset.tolist(),
                               self.nbytes.tolist(), self.numel.tolist())

    def info(self, i: int) -> TensorInfo:
        return TensorInfo(self.names[i], self.dtype_names[int(self.dtype[i])], self.shape(i),
                          self.file_names[int(self.file[i])], int(self.offset[i]), int(self.nbytes[i]),
                          int(self.numel[i]))

    def take(self, order) -> "TensorColumns":
        """The rows in `order` (an index array)."""
        order = np.asarray(order, dtype=np.int64)
        starts, nd = self.starts(), self.ndim
        sel_nd = nd[order]
        if len(self.dims):
            total = int(sel_nd.sum(dtype=np.int64))
            # positions in dims of each selected tensor's dims: its start + 0..ndim-1
            rep_start = np.repeat(starts[order], sel_nd)
            within = np.arange(total) - np.repeat(np.cumsum(sel_nd, dtype=np.int64) - sel_nd, sel_nd)
            dims = self.dims[rep_start + within]
        else:
            dims = self.dims
        names = self.names
        return TensorColumns(list(map(names.__getitem__, order.tolist())), self.dtype_names, self.dtype[order],
                             self.file_names, self.file[order], self.offset[order], self.nbytes[order],
                             self.numel[order], sel_nd, dims)

    @classmethod
    def empty(cls) -> "TensorColumns":
        return cls([], DTYPE_NAMES, [], (), [], [], [], [], [], [])

    @classmethod
    def concat(cls, parts: Sequence["TensorColumns"]) -> "TensorColumns":
        """The rows of `parts` one after the other; dtype and file codes re-mapped to the union of their
        names (in order of first appearance)."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls.empty()
        dtype_names: dict[str, int] = {}
        file_names: dict[str, int] = {}
        dcodes, fcodes = [], []
        for p in parts:
            dmap = np.array([dtype_names.setdefault(d, len(dtype_names)) for d in p.dtype_names], dtype=np.int64)
            fmap = np.array([file_names.setdefault(f, len(file_names)) for f in p.file_names], dtype=np.int64)
            dcodes.append(dmap[p.dtype])
            fcodes.append(fmap[p.file])

        def cat(attr: str) -> np.ndarray:
            return np.concatenate([getattr(p, attr) for p in parts])
        return cls([n for p in parts for n in p.names], tuple(dtype_names), np.concatenate(dcodes),
                   tuple(file_names), np.concatenate(fcodes), cat("offset"), cat("nbytes"), cat("numel"), cat("ndim"),
                   cat("dims"))

    @classmethod
    def from_infos(cls, infos: Sequence[TensorInfo], files: Sequence[str] = ()) -> "TensorColumns":
        """Columns of TensorInfo objects; file codes index `files` first, then any other file named."""
        dtype_names = {d: i for i, d in enumerate(DTYPE_NAMES)}
        file_names = {f: i for i, f in enumerate(files)}
        dcode = [dtype_names.setdefault(t.dtype, len(dtype_names)) for t in infos]
        fcode = [file_names.setdefault(t.file, len(file_names)) for t in infos]
        dims = [d for t in infos for d in t.shape]
        return cls([t.name for t in infos], tuple(dtype_names), dcode, tuple(file_names), fcode,
                   [t.offset for t in infos], [t.nbytes for t in infos], [t.numel for t in infos],
                   [len(t.shape) for t in infos], dims)


class TensorTable:
    """A model's tensors (columns, plus TensorInfo objects built on first use of ``tensors``) and what
    else its files say.

    Build it from `columns` (what the readers do) or from a `tensors` list of TensorInfo (then the
    columns are built on first use). Assigning ``table.tensors`` replaces the tensors; the list it gives
    must not be changed in place."""

    def __init__(self, path: str, format: str, files: list[str], tensors: list[TensorInfo] | None = None,
                 metadata: dict[str, str] | None = None, index_metadata: dict | None = None,
                 config: dict | None = None, unreferenced_files: list[str] | None = None, header_bytes: int = 0,
                 *, columns: TensorColumns | None = None, ignored_files: list[dict] | None = None):
        if (tensors is None) == (columns is None):
            raise TypeError("TensorTable needs exactly one of tensors= (TensorInfo list) and columns=")
        self.path = path                        # what the user passed (file, index or directory)
        self.format = format                    # "safetensors", "pytorch" or "numpy"
        self.files = files                      # data files, absolute, in model order
        self.metadata = {} if metadata is None else metadata          # merged __metadata__
        self.index_metadata = index_metadata    # model.safetensors.index.json "metadata"
        self.config = config                    # parsed config.json beside the weights
        self.unreferenced_files = [] if unreferenced_files is None else unreferenced_files  # not in the index
        self.header_bytes = header_bytes        # bytes of headers read (all shards)
        self.ignored_files = [] if ignored_files is None else ignored_files   # {"file", "reason"}: not used, why
        self.transfer: dict | None = None        # remote tables: requests and bytes of reading them (paramkit.remote)
        self.file_sizes: dict[str, int] | None = None   # remote tables: each URL's size (no os.path.getsize)
        self.remote = None     # remote tables: the paramkit.remote.Session that read them (client, validators)
        self._tensors = tensors                 # model order: shard order, then byte offset
        self._columns = columns

    @property
    def columns(self) -> TensorColumns:
        if self._columns is None:
            self._columns = TensorColumns.from_infos(self._tensors, self.files)
        return self._columns

    @property
    def tensors(self) -> list[TensorInfo]:
        if self._tensors is None:
            self._tensors = self._columns.infos()
        return self._tensors

    @tensors.setter
    def tensors(self, value: list[TensorInfo]) -> None:
        self._tensors = value
        self._columns = None

    def __len__(self) -> int:
        return len(self._columns) if self._columns is not None else len(self._tensors)

    @property
    def names(self) -> list[str]:
        return self.columns.names

    @property
    def data_bytes(self) -> int:
        if self._columns is not None:
            return self._columns.data_bytes
        return sum(t.nbytes for t in self._tensors)

    def _key(self) -> tuple:
        return (self.path, self.format, self.files, self.tensors, self.metadata, self.index_metadata, self.config,
                self.unreferenced_files, self.ignored_files, self.header_bytes)

    def __eq__(self, other) -> bool:
        if type(other) is not TensorTable:
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return (f"TensorTable(path={self.path!r}, format={self.format!r}, files={len(self.files)}, "
                f"tensors={len(self)}, data_bytes={self.data_bytes:,})")
