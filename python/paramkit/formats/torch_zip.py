"""Reader for PyTorch checkpoints in torch.save's zip format (torch >= 1.6; .bin/.pt/.pth/.ckpt): the archive
layout (<folder>/data.pkl, data/<key>, byteorder), the checkpoint's containers flattened to tensor names,
and every tensor's (storage, dtype, offset, shape, strides) checked against its storage. Never imports torch.

Naming: nested dicts, lists and tuples join their keys with "." ("model.layers.0.weight"; list items by
index). One wrapper is stripped at the top: the first of state_dict / model_state_dict / model / module whose
value is a dict holding tensors. Top-level optimizer, optimizer_state_dict, optimizer_states and optim entries
(and a file that is an optimizer state dict itself: keys exactly state + param_groups) give tensors with
role_hint "optimizer", named with their key ("optimizer.state.0.exp_avg"). A file that is one lone tensor
names it LONE_TENSOR_NAME. Non-tensor leaves, and whole containers holding no tensor, go to metadata under
their flattened name as JSON text (tuples as lists, torch dtypes as "torch.float16").
"""
from __future__ import annotations

import json
import math
from typing import Any

from ..dtypes import DTYPES
from ..errors import FormatError
from . import torch_pickle
from .known_magics import HEAD_BYTES, identify_unsupported, identify_unsupported_zip, unsupported_format_error
from ..sources import Source, ZipMember
from .stored import LONE_TENSOR_NAME, ParsedArchive, StoredBlob, StoredTensor, read_zip_members
from .torch_pickle import TORCH_DTYPES, StorageRef, TensorRef, TorchGlobal

__all__ = ["ERROR_CODES", "MAX_PICKLE_BYTES", "OPTIMIZER_KEYS", "WRAPPER_KEYS", "parse_torch"]

ERROR_CODES: dict[str, str] = {
    "byteorder_invalid": "the archive's byteorder record is neither 'little' nor 'big'",
    "storage_missing": "a tensor's storage key has no data/<key> member in the archive",
    "storage_size_mismatch": "a data/<key> member's size differs from the element count x element size "
                             "that data.pkl declares for the storage",
    "storage_conflict": "one storage key is declared twice with a different type or element count",
    "tensor_layout_invalid": "a tensor's offset, shape or strides are not non-negative integers, or shape "
                             "and strides differ in length",
    "tensor_out_of_bounds": "a tensor's elements (offset + the furthest element by its strides) extend past "
                            "the end of its storage",
    "tensor_view_unsupported": "a tensor is saved as a lazy conjugate or negative view (conj/neg bit): its "
                               "values are not its stored bytes",
    "checkpoint_invalid": "the checkpoint's containers cannot be flattened: nested deeper than the limit, a "
                          "container inside itself, a dict key that is not a str/int/float/bool/None, or "
                          "more values than data.pkl's size allows",
}

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optimizer_states", "optim")
MAX_PICKLE_BYTES = 256 << 20      # a data.pkl larger than this is not a state dict's
MAX_DEPTH = 64                    # container nesting
_VALUES_PER_PICKLE_BYTE = 4       # flattened values (with shared containers expanded) per byte of data.pkl
_MIN_VALUE_BUDGET = 100_000
_ROLE_OPTIMIZER = "optimizer"
_SCALARS = (str, int, float, bool, type(None))


def _error(code: str, message: str, source: Source, tensor: str | None = None) -> FormatError:
    return FormatError(code, message, path=source.name, tensor=tensor)


# --- the archive -------------------------------------------------------------------------------------------
def _archive_prefix(members: dict[str, StoredBlob], source: Source) -> str:
    """The archive's folder: what precedes /data.pkl (torch names it after the file, or "archive")."""
    names = list(members)
    fmt = identify_unsupported_zip(names)
    if fmt is not None:
        raise unsupported_format_error(fmt, source.name)
    pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) == 1:
        return pickles[0][:-len("/data.pkl")]
    if pickles:
        raise _error("unknown_format", f"the zip archive holds {len(pickles)} checkpoints "
                     f"({', '.join(sorted(pickles)[:4])}); a torch.save archive has one <folder>/data.pkl", source)
    if names and all(n.endswith(".npy") for n in names):
        hint = "it is a NumPy .npz archive"
    else:
        hint = f"its members are e.g. {', '.join(repr(n) for n in names[:3]) or 'none'}"
    raise _error("unknown_format", f"a zip archive without <folder>/data.pkl is not a PyTorch checkpoint ({hint})",
                 source)


def _byteorder(members: dict[str, StoredBlob], prefix: str, source: Source) -> str:
    blob = members.get(f"{prefix}/byteorder")
    if blob is None:
        return "<"    # no record (older torch, _disable_byteorder_record): little, as torch.load assumes
    raw = ZipMember(source, blob).read_all() if blob.nbytes <= 16 else b"(too long)"
    order = {b"little": "<", b"big": ">"}.get(raw)
    if order is None:
        raise _error("byteorder_invalid", f"the byteorder record holds {raw[:16]!r}, expected b'little' or "
                     "b'big'", source)
    return order


def _load_pickle(members: dict[str, StoredBlob], prefix: str, source: Source) -> Any:
    blob = members[f"{prefix}/data.pkl"]
    if blob.nbytes > MAX_PICKLE_BYTES:
        raise FormatError("pickle_invalid", f"data.pkl is {blob.nbytes:,} bytes, more than the "
                          f"{MAX_PICKLE_BYTES:,} a state dict's pickle can plausibly need", path=source.name)
    return torch_pickle.load(ZipMember(source, blob).read_all(), source.name)


# --- flattening the checkpoint's containers ------------------------------------------------------------------
class _Flattener:
    """Walks the unpickled tree once: tensors with their flattened names and roles, the rest as metadata."""

    def __init__(self, source: Source, budget: int):
        self.source = source
        self.budget = budget
        self.tensors: list[tuple[str, TensorRef, str | None]] = []
        self.metadata: dict[str, str] = {}
        self.names: set[str] = set()
        self._seen: dict[int, tuple[bool, int] | None] = {}   # id -> (holds a tensor, height); None: open

    def _spend(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise _error("checkpoint_invalid", "the checkpoint expands to more values than its data.pkl "
                         "can hold without shared containers (a pickle bomb?)", self.source)

    def holds_tensor(self, obj: Any) -> bool:
        return self._survey(obj, 0)[0]

    def _survey(self, obj: Any, depth: int) -> tuple[bool, int]:
        """(holds a tensor anywhere, nesting height) of a value; checks types, depth and cycles once per
        container (containers shared in the tree are surveyed once; their height counts at every use)."""
        t = type(obj)
        if t is TensorRef:
            return True, 0
        if t in _SCALARS or (t is TorchGlobal and obj.kind == "dtype"):
            return False, 0
        if t not in (dict, list, tuple):
            raise _unplain(obj, self.source)
        key = id(obj)
        if key in self._seen:
            known = self._seen[key]
            if known is None:
                raise _error("checkpoint_invalid", "a container holds itself", self.source)
        else:
            if depth > MAX_DEPTH:
                raise _error("checkpoint_invalid", f"containers are nested deeper than {MAX_DEPTH} levels",
                             self.source)
            self._seen[key] = None
            if t is dict:
                for k in obj:
                    if type(k) not in _SCALARS:
                        raise _error("checkpoint_invalid", f"a dict key is a {type(k).__name__}; expected str, "
                                     "int, float, bool or None", self.source)
            found, height = False, 0
            for value in (obj.values() if t is dict else obj):
                f, h = self._survey(value, depth + 1)
                found = found or f
                height = max(height, h + 1)
            known = self._seen[key] = (found, height)
        if depth + known[1] > MAX_DEPTH:
            raise _error("checkpoint_invalid", f"containers are nested deeper than {MAX_DEPTH} levels", self.source)
        return known

    def _claim(self, name: str) -> None:
        if name in self.names:
            raise _error("tensor_name_duplicate", "two entries of the checkpoint (tensors or metadata) flatten "
                         "to this name", self.source, name)
        self.names.add(name)

    def walk(self, obj: Any, name: str, role: str | None) -> None:
        self._spend()
        t = type(obj)
        if t is TensorRef:
            name = name or LONE_TENSOR_NAME
            self._claim(name)
            self.tensors.append((name, obj, role))
        elif t in (dict, list, tuple) and self._seen[id(obj)][0]:
            items = obj.items() if t is dict else enumerate(obj)
            for key, value in items:
                self.walk(value, f"{name}.{_key_text(key)}" if name else _key_text(key), role)
        else:
            self._claim(name)
            self.metadata[name] = json.dumps(self.plain(obj), allow_nan=True)

    def plain(self, obj: Any) -> Any:
        """A tensor-free value as JSON-able data (tuples become lists, dtypes their torch name)."""
        self._spend()
        t = type(obj)
        if t is dict:
            return {_key_text(k): self.plain(v) for k, v in obj.items()}
        if t in (list, tuple):
            return [self.plain(v) for v in obj]
        if t is TorchGlobal:
            return f"torch.{obj.value}"
        return obj


def _key_text(key: Any) -> str:
    """A dict key as a name part: strings as they are, other scalars as JSON (1, true, null, 0.5)."""
    return key if type(key) is str else json.dumps(key, allow_nan=True)


def _unplain(obj: Any, source: Source) -> FormatError:
    if type(obj) is TorchGlobal:
        what = f"the global {obj.qualname} used as a value"
    elif type(obj) is StorageRef:
        what = "a bare storage (not inside a tensor)"
    else:
        what = f"a {type(obj).__name__} value"
    return FormatError("unsafe_pickle", f"the checkpoint holds {what}; only tensors, dict, list, tuple, str, int, "
                       "float, bool and None are accepted", path=source.name)


def _flatten(root: Any, source: Source, budget: int) -> _Flattener:
    flat = _Flattener(source, budget)
    if type(root) is not dict:
        flat.holds_tensor(root)
        flat.walk(root, "", None)
        return flat
    if set(root) == {"state", "param_groups"} and flat.holds_tensor(root):   # an optimizer's state_dict()
        flat.walk(root, "", _ROLE_OPTIMIZER)
        return flat
    flat.holds_tensor(root)
    wrapper = next((k for k in WRAPPER_KEYS if type(root.get(k)) is dict and flat.holds_tensor(root[k])), None)
    for key, value in root.items():
        if key == wrapper:
            flat.walk(value, "", None)
        else:
            flat.walk(value, _key_text(key), _ROLE_OPTIMIZER if key in OPTIMIZER_KEYS else None)
    return flat


# --- tensors ---------------------------------------------------------------------------------------------
def _nonneg_ints(value: Any) -> bool:
    return type(value) in (tuple, list) and all(type(v) is int and v >= 0 for v in value)


class _Storages:
    """The storages that tensors refer to: each key's declaration checked once against its data/<key> member."""

    def __init__(self, members: dict[str, StoredBlob], prefix: str, source: Source):
        self.members, self.prefix, self.source = members, prefix, source
        self.declared: dict[str, StorageRef] = {}
        self.blobs: dict[str, StoredBlob] = {}

    def nbytes(self, storage: StorageRef, tensor: str) -> int:
        """The storage's size in bytes; registers its blob on first use."""
        known = self.declared.setdefault(storage.key, storage)
        if (known.dtype, known.numel) != (storage.dtype, storage.numel):
            raise _error("storage_conflict", f"storage {storage.key!r} is declared as {known.numel:,} x "
                         f"torch.{known.dtype} and as {storage.numel:,} x torch.{storage.dtype}", self.source, tensor)
        storage_dtype = TORCH_DTYPES[storage.dtype]
        if storage_dtype is None:
            raise _error("dtype_unsupported", f"storage {storage.key!r} holds torch.{storage.dtype}, which has no "
                         "paramkit dtype", self.source, tensor)
        nbytes = storage.numel * DTYPES[storage_dtype].bits // 8
        if storage.key not in self.blobs:
            member_name = f"{self.prefix}/data/{storage.key}"
            member = self.members.get(member_name)
            if member is None:
                raise _error("storage_missing", f"storage {storage.key!r} has no member {member_name}", self.source,
                             tensor)
            if member.nbytes != nbytes:
                raise _error("storage_size_mismatch", f"member {member_name} holds {member.nbytes:,} bytes; "
                             f"data.pkl declares {storage.numel:,} x torch.{storage.dtype} = {nbytes:,} bytes",
                             self.source, tensor)
            self.blobs[storage.key] = StoredBlob(storage.key, member.offset, member.nbytes, member.compressed_size,
                                                 member.compression, member.crc32)
        return nbytes


def _stored_tensor(name: str, ref: TensorRef, role: str | None, byteorder: str, storages: _Storages,
                   source: Source) -> StoredTensor:
    storage = ref.storage
    if type(storage) is not StorageRef:
        raise _error("pickle_invalid", f"the tensor's storage is a {type(storage).__name__}, expected a "
                     "persistent storage id", source, name)
    if ref.dtype is None:
        torch_dtype = storage.dtype
    elif type(ref.dtype) is TorchGlobal and ref.dtype.kind == "dtype":
        torch_dtype = ref.dtype.value
    else:
        raise _error("pickle_invalid", "_rebuild_tensor_v3's dtype argument is not a torch dtype", source, name)
    dtype = TORCH_DTYPES[torch_dtype]
    if dtype is None:
        raise _error("dtype_unsupported", f"torch.{torch_dtype} has no paramkit dtype (supported: "
                     + ", ".join(f"torch.{k}" for k, v in TORCH_DTYPES.items() if v) + ")", source, name)
    if ref.metadata is not None:
        if type(ref.metadata) is not dict:
            raise _error("pickle_invalid", "the tensor metadata is not a dict", source, name)
        flags = sorted(str(k) for k, v in ref.metadata.items() if v)
        if flags:
            raise _error("tensor_view_unsupported", f"the tensor is saved with the {'/'.join(flags)} bit set: its "
                         "values are not its stored bytes (save t.resolve_conj().resolve_neg() instead)",
                         source, name)
    offset, shape, strides = ref.offset, ref.size, ref.stride
    if type(offset) is not int or offset < 0 or not _nonneg_ints(shape) or not _nonneg_ints(strides) \
            or len(shape) != len(strides):
        raise _error("tensor_layout_invalid", f"storage offset {offset!r}, shape {shape!r}, strides {strides!r}: "
                     "expected non-negative integers and as many strides as dimensions", source, name)
    shape, strides = tuple(shape), tuple(strides)

    storage_nbytes = storages.nbytes(storage, name)
    itemsize = DTYPES[dtype].bits // 8
    if math.prod(shape) == 0:
        end = offset                                   # an empty tensor touches no element
    else:
        end = offset + sum((d - 1) * s for d, s in zip(shape, strides)) + 1
    if end * itemsize > storage_nbytes:
        raise _error("tensor_out_of_bounds", f"offset {offset:,}, shape {shape}, strides {strides} reach element "
                     f"{end:,} of {dtype} ({end * itemsize:,} bytes), but storage {storage.key!r} has "
                     f"{storage_nbytes:,} bytes", source, name)
    return StoredTensor(name=name, dtype=dtype, shape=shape, strides=strides, storage=storage.key,
                        element_offset=offset, byteorder=byteorder, role_hint=role)


def parse_torch(source: Source) -> ParsedArchive:
    """Parse a torch.save zip checkpoint into tensor descriptors, the storages they use, and metadata.

    Reads the zip directory, the local headers, byteorder and data.pkl only (never tensor data).
    Raises FormatError (codes in ERROR_CODES here, in stored.py, torch_pickle.py and known_magics.py),
    OSError for I/O errors.
    """
    head = source.read_at(0, min(source.size, HEAD_BYTES))
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        fmt = identify_unsupported(head, source.name)
        if fmt is not None:
            raise unsupported_format_error(fmt, source.name)
        raise _error("unknown_format", f"not a PyTorch checkpoint: the file starts with {head[:8]!r}, not a zip "
                     "archive's 'PK\\x03\\x04' (torch.save writes zip archives since torch 1.6)", source)
    members = read_zip_members(source)
    prefix = _archive_prefix(members, source)
    byteorder = _byteorder(members, prefix, source)
    pickle_blob = members[f"{prefix}/data.pkl"]
    root = _load_pickle(members, prefix, source)
    flat = _flatten(root, source, max(_MIN_VALUE_BUDGET, _VALUES_PER_PICKLE_BYTE * pickle_blob.nbytes))

    storages = _Storages(members, prefix, source)
    tensors = [_stored_tensor(name, ref, role, byteorder, storages, source) for name, ref, role in flat.tensors]
    return ParsedArchive(format="pytorch", tensors=tensors, blobs=storages.blobs, metadata=flat.metadata)
