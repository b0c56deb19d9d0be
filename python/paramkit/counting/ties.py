"""Tied input and output embeddings: which tensors are the embedding and the lm_head, and whether a present
lm_head that config.json ties to the embedding is counted once."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..table import TensorInfo, TensorTable
from .config import config_get
from .roles import RoleColumns, TensorRole

if TYPE_CHECKING:
    from .totals import Counting

_EMBED_PATTERNS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight",
                   "tok_embeddings.weight", "embed_in.weight", "token_embedding.weight",
                   "tok_embeddings.weight", "embedding.weight", "shared.weight", "embed.weight",
                   "word_embedding.weight", "token_embd.weight")
_EMBED_SET = frozenset(_EMBED_PATTERNS)
_LMHEAD_NAMES = ("lm_head.weight", "output.weight", "embed_out.weight", "lm_head.decoder.weight",
                 "cls.predictions.decoder.weight", "generator_lm_head.weight",
                 "language_model.lm_head.weight", "model.lm_head.weight")


_LM_ARCH_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForConditionalGeneration",
                     "ForPreTraining", "WithLMHead")


def _find_embedding(roles: list[TensorRole]) -> TensorRole | None:
    best = None
    for r in roles:
        if not r.name.endswith(_EMBED_PATTERNS):   # cheap necessary condition for the test below
            continue
        if r.role not in ("parameter", "packed_parameter") or r.expert:
            continue
        if ".".join(r.name.rsplit(".", 2)[-2:]) in _EMBED_SET:
            if "position" in r.name or "token_type" in r.name:
                continue
            if best is None or r.logical_numel > best.logical_numel:
                best = r
    return best


def _find_lm_head(roles: list[TensorRole]) -> TensorRole | None:
    roles = [r for r in roles if r.name.endswith(_LMHEAD_SUFFIXES)]   # the only candidates below
    by_name = {r.name: r for r in roles if r.name in _LMHEAD_SET}
    for n in _LMHEAD_NAMES:
        r = by_name.get(n)
        if r is not None and r.role in ("parameter", "packed_parameter"):
            return r
    for r in roles:
        if r.name.endswith(".lm_head.weight") and r.role in ("parameter", "packed_parameter"):
            return r
    return None


_LMHEAD_SET = frozenset(_LMHEAD_NAMES)
_LMHEAD_SUFFIXES = _LMHEAD_NAMES + (".lm_head.weight",)
_TIE_SUFFIXES = tuple(dict.fromkeys(_EMBED_PATTERNS + _LMHEAD_SUFFIXES))  # every name the two finders take


def decide_tie(info: Callable[[int], TensorInfo], rc: RoleColumns, config: dict | None, notes: list[str],
               stats_equal: bool | None = None) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """(The report's "ties", the indices of the embedding and the lm_head whose values would confirm the tie,
    or None when nothing awaits them). Flags the embedding "tied" and, when counted once, the lm_head
    "tied_duplicate" (counted=False), or "tie_mismatch"; appends what looks wrong to notes.

    A present lm_head of the embedding's shape and dtype that config.json ties to it is one tensor when the
    format says both view the same storage (TensorInfo.storage, offset, nbytes, shape); else stats_equal
    (statistics_equal of the two, from the data pass) decides: True, counted once; False, counted twice;
    None (no statistics), config.json is trusted: counted once. No tensor byte is read here. `info(i)`: the
    TensorInfo of tensor i; the roles are rc's (RoleColumns), whose counted column follows."""
    tie_cfg = config_get(config, "tie_word_embeddings")
    if not isinstance(tie_cfg, bool):
        tie_cfg = None
    # the only tensors the finders take: those of the name patterns with one of their suffixes (digit-free)
    candidates: list[TensorRole] = []
    where: dict[str, int] = {}          # name -> index in the table
    pats = rc.patterns
    for p, pat in enumerate(pats.patterns):
        if pat.endswith(_TIE_SUFFIXES):
            for i in pats.members(p).tolist():
                r = rc.role(i)
                candidates.append(r)
                where[r.name] = i
    candidates.sort(key=lambda r: where[r.name])
    emb = _find_embedding(candidates)
    head = _find_lm_head(candidates)
    ties: dict[str, Any] = {"tie_word_embeddings": tie_cfg,
                            "embedding": emb.name if emb else None,
                            "lm_head": head.name if head else None,
                            "status": None, "compared": None}
    pending = None
    archs = [str(a) for a in (config or {}).get("architectures") or []]
    has_lm_arch = any(a.endswith(_LM_ARCH_SUFFIXES) for a in archs)
    if emb is not None and head is None:
        if tie_cfg is True or (tie_cfg is None and has_lm_arch):
            ties["status"] = "lm_head absent: output projection tied to the embedding (counted once)"
            emb.flags.append("tied")
        elif tie_cfg is False:
            ties["status"] = "lm_head absent although tie_word_embeddings is false"
            notes.append("config.json says tie_word_embeddings=false but no lm_head tensor was found")
        else:
            ties["status"] = "no lm_head tensor (a base model, or an output layer tied to the embedding)"
    elif emb is not None and head is not None:
        emb_t, head_t = info(where[emb.name]), info(where[head.name])
        same_shape = tuple(emb_t.shape) == tuple(head_t.shape) and emb.dtype == head.dtype
        if tie_cfg is True and same_shape:
            if same_storage(emb_t, head_t):
                ties["compared"], equal = "storage", True
            elif stats_equal is not None:
                ties["compared"], equal = "statistics", stats_equal
            else:
                equal, pending = None, (where[emb.name], where[head.name])
            if equal is False:
                ties["status"] = "tie_word_embeddings is true but lm_head values differ: counted twice"
                head.flags.append("tie_mismatch")
                notes.append(ties["status"])
            else:
                head.counted = False
                head.flags.append("tied_duplicate")
                emb.flags.append("tied")
                ties["status"] = {"storage": "lm_head present, the same storage as the embedding: counted once",
                                  "statistics": "lm_head present, statistics identical to the embedding's: "
                                                "counted once",
                                  None: "lm_head present, tied per config.json (values not compared): counted once",
                                  }[ties["compared"]]
        elif tie_cfg is True:
            ties["status"] = "tie_word_embeddings is true but lm_head shape/dtype differs: counted twice"
            notes.append(ties["status"])
        else:
            ties["status"] = "untied: lm_head and embedding both counted"
    rc.sync()
    return ties, pending


def same_storage(a: TensorInfo, b: TensorInfo) -> bool:
    """Whether the format says a and b view the same bytes: one storage, one offset, length and shape."""
    return a.storage is not None and a.storage == b.storage and a.offset == b.offset and \
        a.nbytes == b.nbytes and tuple(a.shape) == tuple(b.shape)


def statistics_equal(a: TensorInfo, stats_a: dict, b: TensorInfo, stats_b: dict) -> bool:
    """Whether two tensors have the same dtype, shape and statistics, every field (quantiles included), a NaN
    equal to a NaN. Equal statistics do not prove equal values (a permutation has the same ones); different
    statistics prove different values."""
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and _same(stats_a, stats_b)


def _same(x, y) -> bool:
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(v, y[k]) for k, v in x.items())
    if isinstance(x, float) and isinstance(y, float) and x != x:
        return y != y
    return x == y


def confirm_with_statistics(counting: Counting, table: TensorTable, stats: list[dict | None]) -> Counting:
    """The Counting of `table` once the data pass has computed `stats` (per tensor, table order): unchanged
    unless a tie awaited the values (Counting.tie_pending), else counted again with the two tensors'
    statistics compared (statistics_equal): the totals, MoE figures and notes follow from the roles."""
    if counting.tie_pending is None:
        return counting
    i, j = counting.tie_pending
    if stats[i] is None or stats[j] is None:   # a dtype without statistics: config.json stays trusted
        return counting
    from .totals import count_table    # totals imports this module
    t = table.tensors
    return count_table(table, tie_stats_equal=statistics_equal(t[i], stats[i], t[j], stats[j]))


def same_view_duplicates(tensors: list[TensorInfo], rc: RoleColumns) -> list[str]:
    """Tensors the format says are one view saved under two names (torch.save of tied modules: the same
    storage, offset, shape and layout): every one after the first is counted once, flagged "tied_duplicate",
    the first "tied". Returns the duplicate names. Different views of one storage are different tensors."""
    first: dict[tuple, int] = {}
    dups = []
    for i, t in enumerate(tensors):
        if t.storage is None:
            continue
        lay = t.layout
        key = (t.storage, t.offset, t.nbytes, tuple(t.shape), t.dtype,
               None if lay is None else (lay.element_offset, lay.strides))
        j = first.setdefault(key, i)
        if j != i:
            dup, orig = rc.role(i), rc.role(j)
            dup.counted = False
            dup.flags.append("tied_duplicate")
            dup.reason += f"; the same view as {tensors[j].name} (one storage, offset, shape, strides)"
            if "tied" not in orig.flags:
                orig.flags.append("tied")
            dups.append(t.name)
    rc.sync()
    return dups
