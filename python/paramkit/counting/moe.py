"""Mixture of experts: routed experts (``experts.N.`` names or stacked tensors under an experts/moe module),
shared experts and routers tagged on the roles, and total vs active parameters (top-k / number of experts)."""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from .config import NEXPERTS_KEYS, NSHARED_KEYS, TOPK_KEYS, config_get
from .roles import TensorRole

_EXPERT_INDEX_RE = re.compile(r"(?:^|\.)experts\.(?:expert_)?(\d+)\.")


def _expert_index(name: str) -> str | None:
    """The index group of _EXPERT_INDEX_RE.search(name), None without a match; without the regex in
    the usual case: when the first "experts." starts the name or follows a '.', and the component after
    it is decimal digits followed by a '.', that is the regex's leftmost match (\\d = str.isdecimal)."""
    i = name.find("experts.")
    if i < 0:
        return None
    j = i + 8
    k = name.find(".", j)
    if k > j and (not i or name[i - 1] == "."):
        digits = name[j:k]
        if digits.isdecimal():
            return digits
    m = _EXPERT_INDEX_RE.search(name)
    return m.group(1) if m else None


_SHARED_RE = re.compile(r"(?:^|\.)(shared_experts?|shared_mlp)\.")


def moe_of(roles: list[TensorRole], config: dict | None, notes: list[str]) -> dict:
    """The report's "moe" (plus "active_params" / "active_reason", which the caller takes out); tags the roles
    of experts (.expert) and routers ("router" flag)."""
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

    names = "\n".join([r.name for r in roles])
    if "experts" not in names and "moe" not in names:
        # No name can be a routed expert (indexed or stacked: both need one of these substrings), so
        # nothing is detected and no router flag would survive; only shared experts are tagged.
        if "shared" in names:
            for r in roles:
                if "shared" in r.name and _SHARED_RE.search(r.name):
                    r.expert = {"kind": "shared", "index": None, "stacked": None, "layer": r.layer or ""}
        return {"detected": False}

    routed_by_layer: dict[str, int] = {}
    experts_by_layer: dict[str, set[int] | int] = {}
    shared_params = router_params = routed_params = total = 0
    routers: list[TensorRole] = []       # roles flagged "router" here (no other code sets that flag)
    stacked_routed = False               # a routed expert without an index (expert_layout)
    expert_index = _expert_index
    search_shared = _SHARED_RE.search
    # Substring tests ("shared", "experts.", "experts"/"moe", "router"/"gate") skip the regexes and
    # the split for names that cannot match them: 100k-tensor headers come through here.
    for r in roles:
        name = r.name
        lay = r.layer or ""
        parts = None
        expert = None
        if "shared" in name and search_shared(name):
            expert = r.expert = {"kind": "shared", "index": None, "stacked": None, "layer": lay}
        elif "experts." in name and (digits := expert_index(name)) is not None:
            idx = int(digits)
            expert = r.expert = {"kind": "routed", "index": idx, "stacked": None, "layer": lay}
            s = experts_by_layer.get(lay)
            if s is None:
                experts_by_layer[lay] = {idx}
            elif isinstance(s, set):
                s.add(idx)
        elif ("experts" in name or "moe" in name) and (
                (in_experts := "experts" in (parts := name.split("."))[:-1]) or
                any("moe" in p for p in parts[:-1])):
            stacked = routed = None
            if r.role in ("parameter", "packed_parameter", "quant_state") and \
                    len(r.shape) >= 2 and not _is_router(parts):
                n0 = r.shape[0]
                if n_cfg is not None:
                    if n0 == n_cfg and (in_experts or len(r.shape) >= 3):
                        stacked = n_cfg          # [E, ...] stacked experts
                    elif in_experts and len(r.shape) == 2 and n0 % n_cfg == 0:
                        stacked = n_cfg          # experts concatenated along dim 0 (DBRX)
                    routed = stacked is not None
                else:
                    routed = in_experts or len(r.shape) >= 3
                    if len(r.shape) >= 3 or name.endswith("bias"):
                        stacked = n0
            if routed:
                expert = r.expert = {"kind": "routed", "index": None, "stacked": stacked, "layer": lay}
                stacked_routed = True
                if stacked:
                    prev = experts_by_layer.get(lay)
                    experts_by_layer[lay] = max(stacked, prev if isinstance(prev, int) else 0)
        role = r.role
        if expert is None and role == "parameter" and ("router" in name or "gate" in name) and \
                _is_router(parts if parts is not None else name.split(".")):
            r.flags.append("router")
            routers.append(r)
        if not (r.counted and role in ("parameter", "packed_parameter")):
            continue
        n_log = r.logical_numel
        total += n_log
        if expert is None:
            if routers and routers[-1] is r:
                router_params += n_log
        elif expert["kind"] == "routed":
            routed_params += n_log
            routed_by_layer[lay] = routed_by_layer.get(lay, 0) + n_log
        else:
            shared_params += n_log

    # routers are only routers in layers that have experts
    moe_layers = sorted(routed_by_layer, key=_natural)
    if not moe_layers:
        for r in routers:
            r.flags.remove("router")
        return {"detected": False}
    for r in routers:
        if (r.layer or "") not in routed_by_layer:
            r.flags.remove("router")
            router_params -= r.logical_numel if r.counted else 0
    all_layers = sorted({r.layer for r in roles if r.layer}, key=_natural)
    dense_layers = [l for l in all_layers if l not in routed_by_layer]
    detected_n = sorted({len(v) if isinstance(v, set) else v for v in experts_by_layer.values()})
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
    n = n_cfg
    if n is None and len(detected_n) == 1:
        n = detected_n[0]
        if k_cfg is not None:
            notes.append(f"expert count not in config.json; using {n} detected from tensor names")
    if n_cfg is not None and detected_n and detected_n != [n_cfg]:
        notes.append(f"config.json says {n_cfg} experts; tensors show {detected_n}")
    if k_cfg is None or n is None:
        why = ("no config.json beside the weights" if config is None else
               "config.json has no top-k key (" + ", ".join(TOPK_KEYS[:3]) + ", ...)"
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


def _natural(s: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)]
