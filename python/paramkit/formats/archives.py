"""The PyTorch (torch.save zip) and NumPy (.npy/.npz) readers of the format registry: their parsers'
descriptors (formats.stored) become TensorInfo records. A tensor that is one contiguous little-endian run
of a stored member is a plain byte range of the file, read by the engines directly; a strided view, a
big-endian tensor or one in a deflated member keeps its ViewLayout, which paramkit.materialize turns into
plain bytes for the data pass."""
from __future__ import annotations

import math
import os
import re

from ..dtypes import DTYPES
from ..sources import is_whole
from ..table import TensorColumns, TensorInfo, ViewLayout
from .resolver import FileTable, Reader
from .stored import ParsedArchive, StoredTensor, is_contiguous

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _tensor_info(st: StoredTensor, arch: ParsedArchive, path: str) -> TensorInfo:
    blob = arch.blobs[st.storage]
    es = DTYPES[st.dtype].bits // 8
    numel = math.prod(st.shape)
    nbytes = numel * es
    storage = f"{path}::{st.storage}" if arch.format == "pytorch" else None
    plain = (blob.compression == "stored" and is_contiguous(st.shape, st.strides)
             and (st.byteorder == "<" or es == 1 or nbytes == 0))
    if plain:
        return TensorInfo(st.name, st.dtype, st.shape, path, blob.offset + st.element_offset * es, nbytes, numel,
                          storage=storage, role_hint=st.role_hint)
    layout = ViewLayout(blob=blob, element_offset=st.element_offset, strides=st.strides, byteorder=st.byteorder)
    # offset: where the storage starts in the file (the view's own bytes are not one range of it)
    return TensorInfo(st.name, st.dtype, st.shape, path, blob.offset, nbytes, numel, storage=storage,
                      layout=layout, role_hint=st.role_hint)


def file_table(arch: ParsedArchive, path: str, size: int) -> FileTable:
    """A parsed archive as the resolver's FileTable; header_bytes = the bytes that are not tensor storage."""
    tensors = [_tensor_info(st, arch, path) for st in arch.tensors]
    stored = sum(b.compressed_size for b in arch.blobs.values())
    return FileTable(arch.format, TensorColumns.from_infos(tensors, [path]), dict(arch.metadata),
                     max(size - stored, 0), tensors)


def _open_with(parse):
    def open_archive(source, strict: bool) -> FileTable:
        if not is_whole(source):
            raise ValueError(f"{source.name}: the {parse.__name__} reader takes a whole file "
                             "(the engines read its members at their offsets in it)")
        return file_table(parse(source), source.name, source.size)
    return open_archive


def _sniff_torch(head: bytes, name: str) -> bool:
    return head.startswith(ZIP_MAGIC) and not name.lower().endswith(".npz")


def _sniff_numpy(head: bytes, name: str) -> bool:
    from .numpy_files import NPY_MAGIC
    return head.startswith(NPY_MAGIC) or (head.startswith(ZIP_MAGIC) and name.lower().endswith(".npz"))


def _parse_torch(src):
    from .torch_zip import parse_torch
    return parse_torch(src)


def _parse_numpy(src):
    from .numpy_files import parse_numpy
    return parse_numpy(src)


# transformers' weight file names, and the training state (Trainer checkpoints) saved beside them with torch.save
_TORCH_WEIGHTS = re.compile(r"^pytorch_model(-\d+-of-\d+)?\.bin$")
_TRAINING_STATE = re.compile(r"^(training_args\.bin|optimizer\.(pt|bin)|scheduler\.pt|scaler\.pt|"
                             r"rng_state(_\d+)?\.pth)$")


def _pick_torch(files: list[str]) -> tuple[list[str], list[dict]]:
    """The model's torch files of a directory: pytorch_model*.bin when there are such files (as transformers
    loads them), else every torch file but the Trainer's training state (training_args.bin, optimizer.pt,
    scheduler.pt, scaler.pt, rng_state*.pth)."""
    named = [p for p in files if _TORCH_WEIGHTS.match(os.path.basename(p))]
    if named:
        return named, [{"file": p, "reason": "not a pytorch_model*.bin weight file (transformers loads those)"}
                       for p in files if p not in named]
    used = [p for p in files if not _TRAINING_STATE.match(os.path.basename(p))]
    return used, [{"file": p, "reason": "training state saved by the Trainer, not model weights"}
                  for p in files if p not in used]


TORCH_READER = Reader(format="pytorch", extensions=(".bin", ".pt", ".pth", ".ckpt"),
                      index_suffix=".bin.index.json", standard_index="pytorch_model.bin.index.json",
                      sniff=_sniff_torch, open=_open_with(_parse_torch), pick=_pick_torch)
NUMPY_READER = Reader(format="numpy", extensions=(".npz", ".npy"), index_suffix=".npz.index.json",
                      standard_index="model.npz.index.json", sniff=_sniff_numpy, open=_open_with(_parse_numpy))
