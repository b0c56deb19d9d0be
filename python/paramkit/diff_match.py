"""Which tensor of model B is which tensor of model A, for paramkit.diff: names matched as they are, or across
formats (a GGUF against a Hugging Face checkpoint) through the gguf package's TensorNameMap, with llama.cpp's
Q/K row permutation undone where its converter applies it. All of the cross-format knowledge is here."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from .table import TensorInfo, TensorTable

# GGUF architectures whose convert_hf_to_gguf.py permutes the rows of attn_q / attn_k (LlamaModel.permute:
# each head's rows go from HF's [2, head_dim/2] rotary halves to llama.cpp's interleaved [head_dim/2, 2]):
# LlamaModel and the converters that call LlamaModel.permute (Granite, GraniteMoE, MiniCPM, Deci). Others
# (Gemma, Qwen, Phi, ...) store the rows as HF does.
PERMUTED_QK_ARCHS = frozenset({"llama", "granite", "granitemoe", "minicpm", "deci"})
# architectures whose converter stores RMSNorm weights as w + 1 (Gemma's norm multiplies by 1 + w): not undone,
# said on each such tensor
NORM_SHIFT_ARCHS = frozenset({"gemma", "gemma2", "gemma3", "gemma-embedding"})
NORM_SHIFT_NOTE = "llama.cpp's converter stores this Gemma norm weight as w + 1: not undone"
_QK = re.compile(r"^blk\.\d+\.attn_(q|k)\.(weight|bias)$")
# prefixes the converters strip before mapping a name (multimodal checkpoints keep the text model under them)
_STRIPPED_PREFIXES = ("language_model.", "model.language_model.")


@dataclass(frozen=True)
class RowPermutation:
    """llama.cpp's Q/K row permutation of a tensor with `heads` heads along dimension 0, undone on stored bytes:
    GGUF rows (heads, head_dim/2, 2) back to HF's (heads, 2, head_dim/2). Rows are whole GGML blocks, so the
    same byte shuffle serves plain and block-quantized tensors."""
    heads: int

    def unit(self, t: TensorInfo) -> int:
        """Elements of one head's rows: chunks of the data pass are whole heads."""
        return t.numel // self.heads

    def undo(self, raw: bytes, t: TensorInfo) -> bytes:
        row_bytes = t.nbytes // t.shape[0]
        head_rows = t.shape[0] // self.heads
        a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, head_rows // 2, 2, row_bytes)
        return a.swapaxes(1, 2).tobytes()

    def describe(self) -> str:
        return f"rows un-permuted (llama.cpp Q/K permutation, {self.heads} heads)"


@dataclass(frozen=True)
class DiffPair:
    """Two tensors to compare in one streaming pass: `a` and `b` (plain byte ranges), the permutation to undo
    on each side's stored bytes before comparing, and whether their values are compared (else bytes only)."""
    a: TensorInfo
    b: TensorInfo
    undo_a: RowPermutation | None = None
    undo_b: RowPermutation | None = None
    values: bool = True

    @property
    def align(self) -> int:
        """Chunks of the pass start at multiples of this many elements: whole GGML blocks and whole heads."""
        from .dtypes import DTYPES
        m = math.lcm(DTYPES[self.a.dtype].block, DTYPES[self.b.dtype].block)
        for perm, t in ((self.undo_a, self.a), (self.undo_b, self.b)):
            if perm is not None:
                m = math.lcm(m, perm.unit(t))
        return max(m, 1)


@dataclass
class Matching:
    """pairs: (index in A, index in B, permutation to undo on A's bytes, on B's, the conversions applied, as
    text); removed: indexes of A's tensors B lacks; added: B's tensors A lacks; notes: how names were matched."""
    pairs: list[tuple[int, int, RowPermutation | None, RowPermutation | None, list[str]]] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _gguf_arch(table: TensorTable) -> str:
    return table.metadata.get("general.architecture", "")


def _name_map(table: TensorTable, notes: list[str]):
    """name -> GGUF name for the tensors of a non-GGUF model, by gguf's TensorNameMap of the GGUF side's
    architecture (`table`); None when gguf is missing or does not know the architecture."""
    arch = _gguf_arch(table)
    try:
        import gguf
    except ImportError:
        notes.append("the gguf package is not installed: tensors of the GGUF and the other model are matched by "
                     "their names as stored (pip install gguf maps Hugging Face names to GGUF names)")
        return None
    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in by_name:
        notes.append(f"gguf's TensorNameMap does not know the architecture {arch!r}: tensors matched by their "
                     "names as stored")
        return None
    cfg = table.config or {}
    blocks = cfg.get("num_hidden_layers") or int(table.metadata.get(f"{arch}.block_count", "0") or 0)
    tmap = gguf.get_tensor_name_map(by_name[arch], int(blocks))
    notes.append(f"names mapped to GGUF names by gguf's TensorNameMap ({arch}, {blocks} blocks)")

    def to_gguf(name: str) -> str | None:
        for n in (name, *(name[len(p):] for p in _STRIPPED_PREFIXES if name.startswith(p))):
            got = tmap.get_name(n, try_suffixes=(".weight", ".bias"))
            if got is not None:
                return got
        return None
    return to_gguf


def _permutation(gguf_table: TensorTable, t: TensorInfo, other: TensorInfo, notes: list[str]) -> RowPermutation | None:
    """The Q/K permutation to undo on GGUF tensor t (matched with the HF tensor `other`), or None."""
    m = _QK.match(t.name)
    arch = _gguf_arch(gguf_table)
    if m is None or arch not in PERMUTED_QK_ARCHS or not t.shape or tuple(t.shape) != tuple(other.shape):
        return None
    cfg = gguf_table.config or {}
    n_head = cfg.get("num_attention_heads")
    heads = n_head if m[1] == "q" else cfg.get("num_key_value_heads") or n_head
    if not heads or t.shape[0] % heads or (t.shape[0] // heads) % 2:
        notes.append(f"{t.name}: llama.cpp's Q/K permutation not undone ({heads} heads do not split "
                     f"{t.shape[0]} rows into pairs): compared as stored")
        return None
    return RowPermutation(int(heads))


def match_tensors(ta: TensorTable, tb: TensorTable) -> Matching:
    """The tensors of A and B paired by name: as stored when both or neither are GGUF; else the non-GGUF side's
    names mapped to GGUF names (a name gguf does not map is kept as it is), and, for architectures in
    PERMUTED_QK_ARCHS, the Q/K permutation undone on the GGUF side. When two tensors of one side map to one
    name, the first pairs and the rest count as removed / added."""
    out = Matching()
    a_gguf, b_gguf = ta.format == "gguf", tb.format == "gguf"
    key_a = key_b = None
    gguf_side = None
    if a_gguf != b_gguf:
        gguf_side = ta if a_gguf else tb
        f = _name_map(gguf_side, out.notes)
        if f is not None:
            def key(name: str, f=f) -> str:
                return f(name) or name
            if a_gguf:
                key_b = key
            else:
                key_a = key
    names_b: dict[str, int] = {}
    for j, n in enumerate(tb.names):
        names_b.setdefault(key_b(n) if key_b else n, j)
    used = set()
    infos_a, infos_b = ta.tensors, tb.tensors
    for i, n in enumerate(ta.names):
        k = key_a(n) if key_a else n
        j = names_b.get(k)
        if j is None or j in used:
            out.removed.append(i)
            continue
        used.add(j)
        conv = []
        if ta.names[i] != tb.names[j]:
            conv.append(f"name {ta.names[i]} ↔ {tb.names[j]}")
        undo_a = undo_b = None
        if gguf_side is not None:
            if a_gguf:
                undo_a = _permutation(ta, infos_a[i], infos_b[j], out.notes)
            else:
                undo_b = _permutation(tb, infos_b[j], infos_a[i], out.notes)
        for p in (undo_a, undo_b):
            if p is not None:
                conv.append(p.describe())
        if gguf_side is not None and _gguf_arch(gguf_side) in NORM_SHIFT_ARCHS and k.endswith("norm.weight"):
            conv.append(NORM_SHIFT_NOTE)
        out.pairs.append((i, j, undo_a, undo_b, conv))
    out.added = [j for j in range(len(tb)) if j not in used]
    return out
