"""Mixture of experts: routed experts (``experts.N.`` names or stacked tensors under an experts/moe module),
shared experts and routers tagged on the roles, and total vs active parameters (top-k / number of experts)."""
from __future__ import annotations

import functools
import re
from fractions import Fraction
from typing import Any

import numpy as np

from .config import NEXPERTS_KEYS, NSHARED_KEYS, TOPK_KEYS, config_get
from .patterns import digit_regex
from .roles import EXPERT_KINDS, PACKED, PARAMETER, QUANT_STATE, RoleColumns

# on a NamePatterns pattern: the span of the expert index is that of every name of it
_EXPERT_INDEX_RE = digit_regex(r"(?:^|\.)experts\.(?:expert_)?(\d+)\.")
_SHARED_RE = re.compile(r"(?:^|\.)(shared_experts?|shared_mlp)\.|_shexp\.")
# GGUF (llama.cpp names): stacked experts blk.N.ffn_{gate,up,down,gate_up}_exps.{weight,bias}, routers
# blk.N.ffn_gate_inp.weight; shared experts are *_shexp (the shared expert's own gate too: ffn_gate_inp_shexp)
_GGUF_STACKED_RE = re.compile(r"(?:^|\.)ffn_[a-z_]+_exps\.[a-z_]+$")
_GGUF_ROUTER_RE = re.compile(r"(?:^|\.)ffn_gate_inp\.weight$")
_ROUTED, _SHARED = EXPERT_KINDS.index("routed"), EXPERT_KINDS.index("shared")


def moe_of(rc: RoleColumns, config: dict | None, notes: list[str]) -> dict:
    """The report's "moe" (plus "active_params" / "active_reason", which the caller takes out); sets the expert
    columns of `rc` (RoleColumns.set_experts) and flags routers "router".

    Per name pattern (digits masked): shared experts (``shared_expert(s).`` / ``shared_mlp.``), routed experts
    by an index (``experts.N.``, ``experts.expert_N.``), stacked experts (2+ dimensions under an ``experts`` /
    ``*moe*`` module: [E, ...] with E the config's expert count, or concatenated along dim 0), routers
    (``router`` modules, ``gate.weight``); per tensor the role, counted flag, shape and layer decide."""
    n_cfg = config_get(config, *NEXPERTS_KEYS)
    k_cfg = config_get(config, *TOPK_KEYS)
    shared_cfg = config_get(config, *NSHARED_KEYS)
    try:
        n_cfg = int(n_cfg) if n_cfg is not None else None
        k_cfg = int(k_cfg) if k_cfg is not None else None
    except (TypeError, ValueError):
        n_cfg = k_cfg = None
    if n_cfg is not None and n_cfg <= 1:
        n_cfg = None  # "num_experts": 1 / 0 = dense

    pats, cols = rc.patterns, rc.columns
    # per pattern what its words say; per tensor (role, shape, counted, layer) what the rest decides
    npat = len(pats)
    kind_p = np.zeros(npat, dtype=np.int8)
    index_span: list[tuple[int, int] | None] = [None] * npat
    stacked_p = np.zeros(npat, dtype=bool)     # a stacked-expert candidate: under experts / *moe*, not a router
    in_experts_p = np.zeros(npat, dtype=bool)
    bias_p = np.zeros(npat, dtype=bool)
    router_p = np.zeros(npat, dtype=bool)
    for p in pats.live:
        pat = pats.patterns[p]
        parts = pat.split(".")
        if ("shared" in pat or "shexp" in pat) and _SHARED_RE.search(pat):
            kind_p[p] = _SHARED
            continue
        if "experts." in pat and (x := pats.search(_EXPERT_INDEX_RE, p)) is not None:
            kind_p[p] = _ROUTED
            index_span[p] = x.span(1)
            continue
        if "_exps." in pat and _GGUF_STACKED_RE.search(pat):
            stacked_p[p] = in_experts_p[p] = True
            bias_p[p] = pat.endswith("bias")
            continue
        if "ffn_gate_inp" in pat and _GGUF_ROUTER_RE.search(pat):
            router_p[p] = True
            continue
        is_router = _is_router(parts)
        if ("experts" in pat or "moe" in pat) and (
                (in_experts := "experts" in parts[:-1]) or any("moe" in q for q in parts[:-1])):
            stacked_p[p] = not is_router
            in_experts_p[p] = in_experts
            bias_p[p] = pat.endswith("bias")
        router_p[p] = ("router" in pat or "gate" in pat) and is_router
    code = pats.code
    role = rc.code
    ndim = cols.ndim
    kind = kind_p[code]
    index = np.where(kind == _ROUTED, pats.span_values(index_span, number=True), -1) if any(index_span) else \
        np.full(len(rc), -1, dtype=np.int64)
    stacked = np.full(len(rc), -1, dtype=np.int64)
    stacked_routed = False               # a routed expert without an index (expert_layout)
    cand = stacked_p[code] & ((role == PARAMETER) | (role == PACKED) | (role == QUANT_STATE)) & (ndim >= 2)
    if cand.any():
        at = np.flatnonzero(cand)
        nd = ndim[at]
        in_experts = in_experts_p[code[at]]
        n0 = cols.dims[cols.starts()[at]].astype(np.int64)
        if n_cfg is not None:
            routed = (n0 == n_cfg) & (in_experts | (nd >= 3)) | in_experts & (nd == 2) & (n0 % n_cfg == 0)
            sval = np.full(len(at), n_cfg, dtype=np.int64)
        else:
            routed = in_experts | (nd >= 3)
            sval = np.where((nd >= 3) | bias_p[code[at]], n0, -1)
        if routed.any():
            stacked_routed = True
            kind[at[routed]] = _ROUTED
            stacked[at[routed]] = sval[routed]
    router = router_p[code] & (kind == 0) & (role == PARAMETER)
    rc.set_experts(kind, index, stacked)

    # sums over the counted parameters, per layer ("" for none: RoleColumns.layer -1)
    lay = rc.layer + 1
    counted = rc.counted & ((role == PARAMETER) | (role == PACKED))
    logical = np.where(counted, rc.logical, 0)
    total = int(logical.sum())
    routed_t = kind == _ROUTED
    routed_params = int(logical[routed_t].sum())
    shared_params = int(logical[kind == _SHARED].sum())
    nlay = len(rc.layer_names) + 1
    routed_layers = np.zeros(nlay, dtype=bool)
    routed_layers[lay[routed_t & counted]] = True
    if not routed_layers.any():
        return {"detected": False}
    keep = router & routed_layers[lay]
    router_params = int(logical[keep].sum())
    rc.set_router(keep)
    # experts per layer: the largest stacked count, else the distinct indices
    experts_by_layer: dict[int, int] = {}
    st = routed_t & (stacked > 0)
    if st.any():
        top = np.zeros(nlay, dtype=np.int64)
        np.maximum.at(top, lay[st], stacked[st])
        experts_by_layer = {int(k): int(top[k]) for k in np.flatnonzero(top)}
    ix = routed_t & (index >= 0).astype(bool)
    if ix.any() and index.dtype == object:     # an index beyond an int64
        distinct: dict[int, set] = {}
        for k, v in zip(lay[ix].tolist(), index[ix].tolist()):
            distinct.setdefault(k, set()).add(v)
        for k, v in distinct.items():
            experts_by_layer.setdefault(k, len(v))
    elif ix.any():
        width = int(index[ix].max()) + 1
        if nlay * width <= 4 * len(rc) + 1024:     # a table of (layer, index) pairs seen
            seen = np.zeros(nlay * width, dtype=bool)
            seen[lay[ix] * width + index[ix]] = True
            per_layer = seen.reshape(nlay, width).sum(axis=1)
        else:
            pairs = np.unique(np.stack([lay[ix], index[ix]]), axis=1)
            per_layer = np.bincount(pairs[0], minlength=nlay)
        for k in np.flatnonzero(per_layer).tolist():
            experts_by_layer.setdefault(k, int(per_layer[k]))
    layer_names = [""] + rc.layer_names
    routed_by_layer = {layer_names[k]: True for k in np.flatnonzero(routed_layers).tolist()}
    all_layers = sorted(rc.layer_names, key=_natural)
    dense_layers = [l for l in all_layers if l not in routed_by_layer]
    detected_n = sorted(set(experts_by_layer.values()))
    moe_layers = list(routed_by_layer)
    always = total - routed_params
    out: dict[str, Any] = {
        "detected": True,
        "num_experts": n_cfg, "num_experts_detected": detected_n, "top_k": k_cfg,
        "num_shared_experts": shared_cfg,
        "routed_expert_params": routed_params, "shared_expert_params": shared_params,
        "router_params": router_params, "always_active_params": always,
        "moe_layers": len(moe_layers), "dense_layers": dense_layers,
        "expert_layout": "stacked" if stacked_routed else "indexed",
    }
    src = config.get("_from", "config.json") if config is not None else "config.json"   # GGUF: its metadata
    n = n_cfg
    if n is None and len(detected_n) == 1:
        n = detected_n[0]
        if k_cfg is not None:
            notes.append(f"expert count not in {src}; using {n} detected from tensor names")
    if n_cfg is not None and detected_n and detected_n != [n_cfg]:
        notes.append(f"{src} says {n_cfg} experts; tensors show {detected_n}")
    if k_cfg is None or n is None:
        why = ("no config.json beside the weights" if config is None else
               f"{src} has no top-k key (" + ", ".join(TOPK_KEYS[:3]) + ", ...)"
               if k_cfg is None else "expert count unknown")
        out["active_params"] = None
        out["active_reason"] = f"unknown: {why}; experts were detected " \
                               f"({routed_params:,} routed expert parameters)"
        out["active_formula"] = None
        return out
    active = Fraction(always) + Fraction(routed_params * k_cfg, n)
    out["active_params"] = int(round(active))
    out["active_formula"] = (f"{always:,} always-active + {k_cfg}/{n} × {routed_params:,} routed "
                             f"expert params = {int(round(active)):,}")
    out["active_reason"] = out["active_formula"]
    return out


def _is_router(parts: list[str]) -> bool:
    if "router" in parts[:-1] or "gate" == (parts[-2] if len(parts) >= 2 else "") and \
            parts[-1] in ("weight", "bias", "e_score_correction_bias"):
        return True
    return any(p in ("router", "switch_router") for p in parts[:-1])


_DIGIT_RUN = re.compile(r"(\d+)")


@functools.lru_cache(maxsize=65536)
def _natural(s: str):     # layer names repeat across the models of a fleet: each split once
    return [int(p) if p.isdigit() else p for p in _DIGIT_RUN.split(s)]
