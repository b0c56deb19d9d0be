"""The role of every tensor (parameter, buffer, quantization state, packed quantized weight): TensorRole, the
buffer rules, and the classifier that asks the quantization detectors (counting.quant) first."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from fractions import Fraction

from ..dtypes import DTYPES
from ..table import TensorInfo, TensorTable
from .quant import DETECTORS, INT_KINDS, Detector, QuantConfig

ROLES = ("parameter", "buffer", "quant_state", "packed_parameter", "optimizer")


@dataclass
class TensorRole:
    name: str
    role: str                       # one of ROLES
    dtype: str
    shape: tuple[int, ...]
    stored_numel: int               # elements as the file stores them
    logical_numel: int              # parameters this tensor stands for (0 for buffers / quant state)
    pack_factor: float = 1          # logical / stored elements (1 unless packed)
    logical_bits: float | None = None  # bits per logical weight of a packed tensor
    quant_method: str | None = None
    reason: str = ""                # which rule decided the role
    counted: bool = True            # contributes to total_params (False for a tied duplicate)
    expert: dict | None = None      # {"kind": "routed"|"shared", "index", "stacked", "layer"}
    flags: list[str] = field(default_factory=list)  # "tied", "tied_duplicate", "router", ...
    layer: str | None = None        # prefix up to the first all-digit component ("model.layers.7")

    def to_dict(self) -> dict:
        pf = self.pack_factor
        return {
            "name": self.name, "role": self.role, "dtype": self.dtype, "shape": list(self.shape),
            "stored_numel": self.stored_numel, "logical_numel": self.logical_numel,
            "pack_factor": int(pf) if float(pf).is_integer() else float(pf),
            "logical_bits": self.logical_bits, "quant_method": self.quant_method,
            "reason": self.reason, "counted": self.counted, "expert": self.expert,
            "flags": list(self.flags), "layer": self.layer,
        }


BUFFER_LEAVES = {"position_ids", "token_type_ids", "inv_freq", "masked_bias",
                 "num_batches_tracked", "running_mean", "running_var", "_float_tensor",
                 "cos_cached", "sin_cached", "original_inv_freq"}


def split_name(name: str) -> tuple[str, str]:
    """"a.b.weight" -> ("a.b", "weight"); a name without a dot is all leaf."""
    if "." in name:
        base, leaf = name.rsplit(".", 1)
        return base, leaf
    return "", name


_LAYER_PREFIX_RE = re.compile(r"^((?:[^.]*\.)*?\d+)\.")


def layer_of(name: str) -> str | None:
    """"model.layers.7.mlp.up_proj.weight" -> "model.layers.7"; None without a numbered component."""
    m = _LAYER_PREFIX_RE.match(name)
    return m.group(1) if m else None


def is_attention_mask(base: str, leaf: str, shape) -> bool:
    """attn.bias / attention.bias with 2+ dimensions: GPT-2's causal masks (saved as F32 in some checkpoints)."""
    return leaf == "bias" and len(shape) >= 2 and base.rpartition(".")[2] in ("attn", "attention")


def unquantized_role(kind: str, leaf: str, attention_mask: bool) -> tuple[str, str]:
    """(role, reason) of a tensor that no quantization detector claimed: rule 2, buffers by name, then rule 3,
    the dtype (integer and bool tensors are buffers, floating-point and complex ones parameters)."""
    if leaf in BUFFER_LEAVES:
        return "buffer", f"buffer by name ({leaf})"
    if attention_mask:
        return "buffer", "causal attention mask (attn.bias with 2+ dims)"
    return ("buffer" if kind in INT_KINDS else "parameter"), f"{kind} dtype"


def quant_rules_may_apply(dtype: str, leaf: str) -> bool:
    """Whether a quantization detector may claim or annotate a tensor of this dtype and leaf, depending on its
    siblings, shape or config.json (Detector.may_concern); False only when none can (a name holding
    '.quant_state.' aside: the caller tests that). Dtypes outside DTYPES always may."""
    d = DTYPES.get(dtype)
    return d is None or any(det.may_concern(d, dtype, leaf) for det in DETECTORS)


def _overrides(method: str) -> tuple[Detector, ...]:
    return tuple(d for d in DETECTORS if getattr(type(d), method) is not getattr(Detector, method))


_CLAIMING = _overrides("claim")
_ANNOTATING = _overrides("annotate")
_UNSEEN = object()


class Classifier:
    """Decides the role of each tensor of a table; the detectors call back has / by_name (siblings), packed /
    state (roles that record the detected method) and append to notes."""

    def __init__(self, table: TensorTable, quant: QuantConfig):
        self._tensors = table.tensors
        self.q = quant
        self.detected: dict[str, int] = {}      # method detected from names -> tensors
        self.notes: list[str] = []

    @functools.cached_property
    def by_name(self) -> dict[str, TensorInfo]:   # built on first use: the inline path needs none
        return {t.name: t for t in self._tensors}

    # --- for the detectors
    def has(self, name: str) -> bool:
        return name in self.by_name

    def detect(self, method: str) -> None:
        self.detected[method] = self.detected.get(method, 0) + 1

    def packed(self, t: TensorInfo, bits: float, method: str, reason: str) -> TensorRole:
        """A packed quantized weight: stored bits / `bits` logical parameters."""
        stored_bits = t.numel * DTYPES[t.dtype].bits
        logical = Fraction(stored_bits) / Fraction(bits)
        if logical.denominator != 1:
            self.notes.append(f"{t.name}: {stored_bits} stored bits are not a multiple of "
                              f"{bits} bits per weight; logical count rounded down")
        logical_n = int(logical)
        factor = Fraction(DTYPES[t.dtype].bits) / Fraction(bits)
        self.detect(method)
        return TensorRole(t.name, "packed_parameter", t.dtype, tuple(t.shape), t.numel, logical_n,
                          float(factor) if factor.denominator != 1 else int(factor),
                          float(bits) if not float(bits).is_integer() else int(bits),
                          method, reason)

    def state(self, t: TensorInfo, method: str | None, reason: str) -> TensorRole:
        """Quantization state (scales, zero points, ...): no parameters."""
        if method:
            self.detect(method)
        return TensorRole(t.name, "quant_state", t.dtype, tuple(t.shape), t.numel, 0, 1, None,
                          method, reason)

    # --- all tensors
    def classify_all(self, tensors: list[TensorInfo]) -> list[TensorRole]:
        """[classify(t) for t in tensors], each role's .layer = layer_of(name). A tensor that no
        quantization detector can concern (quant_rules_may_apply) gets its role from unquantized_role, the
        function classify() ends with, computed once per (dtype, leaf, attention mask): the same roles at a
        fraction of the per-tensor cost for 100k-tensor headers. Every other tensor goes through classify()."""
        roles: list[TensorRole] = []
        append = roles.append
        classify = self.classify
        decided: dict[tuple[str, str, bool], tuple[str, str] | None] = {}   # None: classify() decides
        layer_match = _LAYER_PREFIX_RE.match
        TR = TensorRole
        prev_layer = prev_dot = None
        for t in tensors:
            name = t.name
            if prev_dot is not None and name.startswith(prev_dot):
                layer = prev_layer    # same components up to that layer's number: same layer
            else:
                m = layer_match(name)
                prev_layer = layer = m.group(1) if m else None
                prev_dot = None if layer is None else layer + "."
            dtype = t.dtype
            if name.endswith(".weight"):
                key = (dtype, "weight", False)
            else:
                base, _, leaf = name.rpartition(".")
                key = (dtype, leaf, leaf == "bias" and is_attention_mask(base, leaf, t.shape))
            d = decided.get(key, _UNSEEN)
            if d is _UNSEEN:
                d = decided[key] = None if quant_rules_may_apply(dtype, key[1]) else \
                    unquantized_role(DTYPES[dtype].kind, key[1], key[2])
            if d is None or ".quant_state." in name or t.role_hint is not None:
                r = classify(t)
                r.layer = layer
            else:
                role, reason = d
                numel = t.numel
                r = TR(name, role, dtype, tuple(t.shape), numel, numel if role == "parameter" else 0, 1, None, None,
                       reason, True, None, [], layer)
            append(r)
        return roles

    # --- the rules
    def classify(self, t: TensorInfo) -> TensorRole:
        """Rule 1, quantized checkpoints: the first detector of quant.DETECTORS that claims the tensor; rules 2
        and 3 otherwise (unquantized_role), annotated by the detectors (FP8 weights)."""
        if t.role_hint == "optimizer":
            return TensorRole(t.name, "optimizer", t.dtype, tuple(t.shape), t.numel, 0, 1, None, None,
                              "optimizer state of a training checkpoint (the format says so): never a parameter")
        base, leaf = split_name(t.name)
        dt = DTYPES.get(t.dtype)
        if dt is None:
            # a block-quantized type of another format (GGUF Q4_K, ...): the shape is logical
            bits = (8 * t.nbytes / t.numel) if t.numel else None
            self.detect(t.dtype)
            return TensorRole(t.name, "packed_parameter", t.dtype, tuple(t.shape), t.numel, t.numel,
                              1, None if bits is None else round(bits, 4), t.dtype,
                              f"block-quantized {t.dtype}: the shape is the logical element count")
        for det in _CLAIMING:
            r = det.claim(self, t, base, leaf, dt)
            if r is not None:
                return r
        role_name, why = unquantized_role(dt.kind, leaf, is_attention_mask(base, leaf, t.shape))
        role = TensorRole(t.name, role_name, t.dtype, tuple(t.shape), t.numel,
                          t.numel if role_name == "parameter" else 0, reason=why)
        for det in _ANNOTATING:
            det.annotate(self, t, role, base, leaf, dt)
        return role
