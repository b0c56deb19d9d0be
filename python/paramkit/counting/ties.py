"""Tied input and output embeddings: which tensors are the embedding and the lm_head, and whether a present
lm_head that config.json ties to the embedding is counted once."""
from __future__ import annotations

from typing import Any

from ..table import TensorInfo
from .config import config_get
from .roles import TensorRole

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


def _bytes_equal(a: TensorInfo, b: TensorInfo, mode: str) -> bool | None:
    """Compare the bytes of two tensors: "sample" = three 64 KiB windows, "full" = everything."""
    if a.nbytes != b.nbytes:
        return False
    try:
        with open(a.file, "rb") as fa, open(b.file, "rb") as fb:
            n = a.nbytes
            if mode == "full":
                windows = [(o, min(1 << 24, n - o)) for o in range(0, n, 1 << 24)]
            else:
                w = min(1 << 16, n)
                windows = sorted({(0, w), (max(0, n // 2 - w // 2), w), (n - w, w)})
            for off, ln in windows:
                fa.seek(a.offset + off)
                fb.seek(b.offset + off)
                if fa.read(ln) != fb.read(ln):
                    return False
        return True
    except OSError:
        return None


def decide_tie(tensors: list[TensorInfo], roles: list[TensorRole], config: dict | None, notes: list[str],
               tie_check: str) -> dict[str, Any]:
    """The report's "ties"; flags the embedding "tied" and, when counted once, the lm_head "tied_duplicate"
    (counted=False), or "tie_mismatch"; appends what looks wrong to notes."""
    tie_cfg = config_get(config, "tie_word_embeddings")
    if not isinstance(tie_cfg, bool):
        tie_cfg = None
    # one cheap pass over the names: the only tensors the finders take
    candidates: list[TensorRole] = []
    where: dict[str, int] = {}          # name -> index in roles and tensors
    for i, r in enumerate(roles):
        if r.name.endswith(_TIE_SUFFIXES):
            candidates.append(r)
            where[r.name] = i
    emb = _find_embedding(candidates)
    head = _find_lm_head(candidates)
    ties: dict[str, Any] = {"tie_word_embeddings": tie_cfg,
                            "embedding": emb.name if emb else None,
                            "lm_head": head.name if head else None,
                            "status": None, "bytes_compared": None}
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
        emb_t, head_t = tensors[where[emb.name]], tensors[where[head.name]]
        same_shape = tuple(emb_t.shape) == tuple(head_t.shape) and emb.dtype == head.dtype
        if tie_cfg is True and same_shape:
            equal = None
            if tie_check in ("sample", "full"):
                equal = _bytes_equal(emb_t, head_t, tie_check)
                ties["bytes_compared"] = tie_check
            if equal is False:
                ties["status"] = "tie_word_embeddings is true but lm_head bytes differ: counted twice"
                head.flags.append("tie_mismatch")
                notes.append(ties["status"])
            else:
                head.counted = False
                head.flags.append("tied_duplicate")
                emb.flags.append("tied")
                ties["status"] = ("lm_head present, identical to the embedding: counted once"
                                  if equal else
                                  "lm_head present, tied per config.json (bytes not compared): counted once")
        elif tie_cfg is True:
            ties["status"] = "tie_word_embeddings is true but lm_head shape/dtype differs: counted twice"
            notes.append(ties["status"])
        else:
            ties["status"] = "untied: lm_head and embedding both counted"
    return ties
