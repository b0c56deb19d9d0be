"""Exact parameter counting from a TensorTable (headers + config.json, no tensor data): the role of
every tensor (parameter, buffer, quantization state, packed quantized weight), ties, MoE total vs active."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from ._gcpause import gc_paused
from .dtypes import DTYPES
from .table import TensorInfo, TensorTable

ROLES = ("parameter", "buffer", "quant_state", "packed_parameter")

# --------------------------------------------------------------------------- config helpers

_NESTED_CONFIGS = ("text_config", "language_config", "llm_config", "ffn_config", "thinker_config")


def config_get(config: dict | None, *keys: str, default: Any = None) -> Any:
    """First non-None value of any of ``keys`` in config.json, then in its nested text/LLM config."""
    if not isinstance(config, dict):
        return default
    scopes = [config]
    for sub in _NESTED_CONFIGS:
        if isinstance(config.get(sub), dict):
            scopes.append(config[sub])
            inner = config[sub].get("text_config")
            if isinstance(inner, dict):
                scopes.append(inner)
    for scope in scopes:
        for k in keys:
            v = scope.get(k)
            if v is not None:
                return v
    return default


def config_has(config: dict | None, key: str) -> bool:
    if not isinstance(config, dict):
        return False
    if key in config:
        return True
    return any(isinstance(config.get(s), dict) and key in config[s] for s in _NESTED_CONFIGS)


TOPK_KEYS = ("num_experts_per_tok", "num_experts_per_token", "experts_per_token", "moe_top_k",
             "num_selected_experts", "moe_k", "top_k", "router_top_k")
NEXPERTS_KEYS = ("num_local_experts", "n_routed_experts", "num_experts", "moe_num_experts",
                 "num_routed_experts", "n_experts", "expert_num")
NSHARED_KEYS = ("n_shared_experts", "num_shared_experts", "moe_num_shared_experts")


# --------------------------------------------------------------------------- results

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


@dataclass
class Counting:
    path: str
    format: str
    roles: list[TensorRole]
    total_params: int
    total_elements: int
    parameter_elements: int          # stored elements of plain parameters (counted ones)
    packed_stored_elements: int
    packed_logical_params: int
    buffer_elements: int
    quant_state_elements: int
    elements_by_dtype: dict[str, int]
    params_by_dtype: dict[str, int]
    bytes_total: int
    bytes_by_role: dict[str, int]
    groups: dict[str, dict[str, dict[str, int]]]
    declared: dict[str, dict]
    quantization: dict
    ties: dict
    moe: dict
    active_params: int | None
    active_params_reason: str
    notes: list[str] = field(default_factory=list)

    @property
    def stored_elements_by_dtype(self) -> dict[str, int]:
        return self.elements_by_dtype

    @property
    def n_tensors(self) -> int:
        return len(self.roles)

    def role_counts(self) -> dict[str, int]:
        out = {r: 0 for r in ROLES}
        for r in self.roles:
            out[r.role] += 1
        return out

    def to_dict(self, *, tensors: bool = True) -> dict:
        d = {
            "path": self.path,
            "format": self.format,
            "n_tensors": self.n_tensors,
            "total_params": self.total_params,
            "active_params": self.active_params,
            "active_params_reason": self.active_params_reason,
            "total_elements": self.total_elements,
            "parameter_elements": self.parameter_elements,
            "packed_stored_elements": self.packed_stored_elements,
            "packed_logical_params": self.packed_logical_params,
            "buffer_elements": self.buffer_elements,
            "quant_state_elements": self.quant_state_elements,
            "elements_by_dtype": dict(self.elements_by_dtype),
            "stored_elements_by_dtype": dict(self.elements_by_dtype),
            "params_by_dtype": dict(self.params_by_dtype),
            "bytes_total": self.bytes_total,
            "bytes_by_role": dict(self.bytes_by_role),
            "tensors_by_role": self.role_counts(),
            "groups": {k: {n: dict(v) for n, v in g.items()} for k, g in self.groups.items()},
            "declared": {k: dict(v) for k, v in self.declared.items()},
            "quantization": dict(self.quantization),
            "ties": dict(self.ties),
            "moe": dict(self.moe),
            "notes": list(self.notes),
        }
        if tensors:
            d["roles"] = [r.to_dict() for r in self.roles]
        return d


# --------------------------------------------------------------------------- quantization config

@dataclass
class _Quant:
    method: str | None = None        # normalised quant_method
    source: str | None = None        # "config.json quantization_config" | "name patterns"
    bits: int | None = None          # weight bits
    group_size: int | None = None
    fmt: str | None = None           # compressed-tensors format, bnb quant type, checkpoint format
    bnb_4bit: bool = False
    bnb_8bit: bool = False
    raw: dict | None = None

    def to_dict(self) -> dict:
        return {"method": self.method, "source": self.source, "bits": self.bits,
                "group_size": self.group_size, "format": self.fmt}


def _parse_quant_config(config: dict | None) -> _Quant:
    qc = None
    if isinstance(config, dict):
        for key in ("quantization_config", "compression_config"):
            qc = config_get(config, key)
            if isinstance(qc, dict):
                break
            qc = None
    if not qc:
        return _Quant()
    q = _Quant(source="config.json quantization_config", raw=qc)
    method = str(qc.get("quant_method") or "").lower().replace("_", "-") or None
    if method is None and ("load_in_4bit" in qc or "load_in_8bit" in qc):
        method = "bitsandbytes"
    if method is None and "config_groups" in qc:
        method = "compressed-tensors"
    if method in ("bitsandbytes", "bitsandbytes-4bit", "bitsandbytes-8bit"):
        method = "bitsandbytes"
        q.bnb_4bit = bool(qc.get("load_in_4bit") or qc.get("_load_in_4bit")) or \
            str(qc.get("quant_method")).endswith("4bit")
        q.bnb_8bit = bool(qc.get("load_in_8bit") or qc.get("_load_in_8bit")) or \
            str(qc.get("quant_method")).endswith("8bit")
        if q.bnb_4bit:
            q.bits = 4
            q.fmt = qc.get("bnb_4bit_quant_type", "fp4")
            q.group_size = 64
        elif q.bnb_8bit:
            q.bits = 8
            q.fmt = "llm.int8"
    elif method in ("gptq", "awq"):
        q.bits = qc.get("bits", qc.get("w_bit"))
        q.group_size = qc.get("group_size", qc.get("q_group_size"))
        q.fmt = qc.get("checkpoint_format") or qc.get("version") or qc.get("format")
    elif method == "compressed-tensors":
        q.fmt = qc.get("format")
        for grp in (qc.get("config_groups") or {}).values():
            w = (grp or {}).get("weights") or {}
            if w.get("num_bits") is not None:
                q.bits = w.get("num_bits")
                q.group_size = w.get("group_size")
                q.fmt = grp.get("format") or q.fmt
                break
    elif method in ("fp8", "fbgemm-fp8"):
        q.bits = 8
        q.fmt = qc.get("fmt") or "e4m3"
        bs = qc.get("weight_block_size")
        q.group_size = bs
    elif method == "modelopt":
        algo = str(qc.get("quant_algo") or "").upper()
        q.fmt = algo or None
        q.bits = 4 if "FP4" in algo or "INT4" in algo else (8 if algo else None)
        q.group_size = qc.get("group_size")
    elif method == "mxfp4":
        q.bits = 4
        q.group_size = 32
    else:
        q.bits = qc.get("bits", qc.get("w_bit", qc.get("nbits")))
        q.group_size = qc.get("group_size")
    q.method = method
    if isinstance(q.bits, str) and q.bits.isdigit():
        q.bits = int(q.bits)
    return q


# --------------------------------------------------------------------------- classification

_QSTATE_LEAVES = {
    # GPTQ / AWQ
    "qzeros", "g_idx",
    # bitsandbytes
    "absmax", "quant_map", "nested_absmax", "nested_quant_map", "SCB", "weight_format",
    # compressed-tensors / FP8 / NVFP4 / ModelOpt
    "weight_scale", "weight_scale_2", "weight_scale_inv", "weight_zero_point", "weight_global_scale",
    "weight_shape", "weight_g_idx", "input_scale", "input_global_scale", "input_zero_point",
    "output_scale", "output_zero_point", "k_scale", "v_scale", "q_scale", "prob_scale",
}
_BUFFER_LEAVES = {"position_ids", "token_type_ids", "inv_freq", "masked_bias",
                  "num_batches_tracked", "running_mean", "running_var", "_float_tensor",
                  "cos_cached", "sin_cached", "original_inv_freq"}

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


def _split(name: str) -> tuple[str, str]:
    if "." in name:
        base, leaf = name.rsplit(".", 1)
        return base, leaf
    return "", name


def _sib(base: str, leaf: str) -> str:
    return f"{base}.{leaf}" if base else leaf


_LAYER_PREFIX_RE = re.compile(r"^((?:[^.]*\.)*?\d+)\.")


def _layer_of(name: str) -> str | None:
    """"model.layers.7.mlp.up_proj.weight" -> "model.layers.7"; None without a numbered component."""
    m = _LAYER_PREFIX_RE.match(name)
    return m.group(1) if m else None


# Rules 2 and 3 of classify, and which tensors no quantization rule (section 1) can concern: classify_all
# decides those with the same function, once per (dtype, leaf, attention mask), not once per tensor.
_INT_KINDS = ("int", "uint", "bool")
_QUANT_LEAVES = frozenset({"qweight", "qzeros", "g_idx", "scales", "zeros", "weight_packed"} | _QSTATE_LEAVES)


def _is_attention_mask(base: str, leaf: str, shape) -> bool:
    """attn.bias / attention.bias with 2+ dimensions: GPT-2's causal masks (saved as F32 in some checkpoints)."""
    return leaf == "bias" and len(shape) >= 2 and base.rpartition(".")[2] in ("attn", "attention")


def _unquantized_role(kind: str, leaf: str, attention_mask: bool) -> tuple[str, str]:
    """(role, reason) of a tensor that no quantization rule claimed: rule 2, buffers by name, then rule 3, the
    dtype (integer and bool tensors are buffers, floating-point and complex ones parameters)."""
    if leaf in _BUFFER_LEAVES:
        return "buffer", f"buffer by name ({leaf})"
    if attention_mask:
        return "buffer", "causal attention mask (attn.bias with 2+ dims)"
    return ("buffer" if kind in _INT_KINDS else "parameter"), f"{kind} dtype"


def _quant_rules_may_apply(dtype: str, leaf: str) -> bool:
    """Whether a rule of section 1 of _Classifier.classify (or rule 3's FP8 flag) may concern a tensor of this
    dtype and leaf, depending on its siblings, shape or config.json; False only when none can (a name holding
    '.quant_state.' aside: the caller tests that). Dtypes outside DTYPES, 8-bit floats and F8_E8M0 may, so do
    the leaves a rule looks at (by name or by suffix), and "weight" of an integer dtype."""
    d = DTYPES.get(dtype)
    if d is None or dtype == "F8_E8M0" or (d.kind == "float" and d.bits == 8):
        return True
    if leaf in _QUANT_LEAVES or leaf.endswith(("_blocks", "_scales")):
        return True
    return leaf == "weight" and d.kind in _INT_KINDS


_UNSEEN = object()


class _Classifier:
    def __init__(self, table: TensorTable, quant: _Quant):
        self._tensors = table.tensors
        self.q = quant
        self.detected: dict[str, int] = {}      # method detected from names -> tensors
        self.notes: list[str] = []

    @functools.cached_property
    def by_name(self) -> dict[str, TensorInfo]:   # built on first use: the inline path needs none
        return {t.name: t for t in self._tensors}

    # --- helpers
    def _has(self, name: str) -> bool:
        return name in self.by_name

    def _detect(self, method: str) -> None:
        self.detected[method] = self.detected.get(method, 0) + 1

    def _packed(self, t: TensorInfo, bits: float, method: str, reason: str) -> TensorRole:
        stored_bits = t.numel * DTYPES[t.dtype].bits
        logical = Fraction(stored_bits) / Fraction(bits)
        if logical.denominator != 1:
            self.notes.append(f"{t.name}: {stored_bits} stored bits are not a multiple of "
                              f"{bits} bits per weight; logical count rounded down")
        logical_n = int(logical)
        factor = Fraction(DTYPES[t.dtype].bits) / Fraction(bits)
        self._detect(method)
        return TensorRole(t.name, "packed_parameter", t.dtype, tuple(t.shape), t.numel, logical_n,
                          float(factor) if factor.denominator != 1 else int(factor),
                          float(bits) if not float(bits).is_integer() else int(bits),
                          method, reason)

    def _state(self, t: TensorInfo, method: str | None, reason: str) -> TensorRole:
        if method:
            self._detect(method)
        return TensorRole(t.name, "quant_state", t.dtype, tuple(t.shape), t.numel, 0, 1, None,
                          method, reason)

    def _gptq_awq_bits(self, t: TensorInfo, base: str) -> tuple[int, str]:
        """Bits per weight of a GPTQ/AWQ qweight: config first, else inferred from sibling shapes."""
        q = self.q
        if q.method in ("gptq", "awq") and q.bits:
            return int(q.bits), f"quantization_config bits={q.bits}"
        sc = self.by_name.get(_sib(base, "scales"))
        qz = self.by_name.get(_sib(base, "qzeros"))
        gi = self.by_name.get(_sib(base, "g_idx"))
        dbits = DTYPES[t.dtype].bits

        def ratio(num: int, den: int) -> int | None:   # dbits * num / den when it is a whole 1..dbits bits
            return dbits * num // den if 0 < num <= den and (dbits * num) % den == 0 else None
        if len(t.shape) == 2 and sc is not None and len(sc.shape) == 2:
            if sc.shape[-1] == t.shape[-1]:          # GPTQ layout: packed along the input dim
                if qz is not None and len(qz.shape) == 2 and (b := ratio(qz.shape[-1], t.shape[-1])):
                    return b, "inferred from qzeros/qweight shapes"
                if gi is not None and len(gi.shape) == 1 and (b := ratio(t.shape[0], gi.shape[0])):
                    return b, "inferred from g_idx/qweight shapes"
            elif b := ratio(t.shape[-1], sc.shape[-1]):  # AWQ layout
                return b, "inferred from scales/qweight shapes (AWQ layout)"
        self.notes.append(f"{t.name}: bits per weight unknown (no quantization_config, shapes "
                          "inconclusive); assuming 4")
        return 4, "assumed 4 bits"

    # --- all tensors
    def classify_all(self, tensors: list[TensorInfo]) -> list[TensorRole]:
        """[classify(t) for t in tensors], each role's .layer = _layer_of(name). A tensor that no
        quantization rule can concern (_quant_rules_may_apply) gets its role from _unquantized_role, the
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
                key = (dtype, leaf, leaf == "bias" and _is_attention_mask(base, leaf, t.shape))
            d = decided.get(key, _UNSEEN)
            if d is _UNSEEN:
                d = decided[key] = None if _quant_rules_may_apply(dtype, key[1]) else \
                    _unquantized_role(DTYPES[dtype].kind, key[1], key[2])
            if d is None or ".quant_state." in name:
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
        q = self.q
        base, leaf = _split(t.name)
        dt = DTYPES.get(t.dtype)
        if dt is None:
            # a block-quantized type of another format (GGUF Q4_K, ...): the shape is logical
            bits = (8 * t.nbytes / t.numel) if t.numel else None
            self._detect(t.dtype)
            return TensorRole(t.name, "packed_parameter", t.dtype, tuple(t.shape), t.numel, t.numel,
                              1, None if bits is None else round(bits, 4), t.dtype,
                              f"block-quantized {t.dtype}: the shape is the logical element count")
        kind = dt.kind
        is_int = kind in _INT_KINDS
        qmeth = q.method

        # 1. quantized checkpoints ------------------------------------------------------
        if leaf == "qweight" and is_int:
            bits, why = self._gptq_awq_bits(t, base)
            method = qmeth if qmeth in ("gptq", "awq") else (
                "awq" if (sc := self.by_name.get(_sib(base, "scales"))) is not None
                and len(sc.shape) == 2 and len(t.shape) == 2 and sc.shape[-1] != t.shape[-1]
                else "gptq")
            return self._packed(t, bits, method, f"{method} qweight, {why}")
        if leaf in ("qzeros", "g_idx") or (leaf in ("scales", "zeros") and
                                            (self._has(_sib(base, "qweight")) or
                                             self._has(_sib(base, "weight_packed")))):
            return self._state(t, qmeth or ("gptq" if self._has(_sib(base, "qweight")) else None),
                               f"quantization state ({leaf})")
        if leaf == "weight_packed" and is_int:
            if qmeth == "compressed-tensors" and q.bits:
                bits, why = int(q.bits), f"quantization_config num_bits={q.bits}"
            elif t.dtype == "U8":       # nvfp4-pack-quantized
                bits, why = 4, "U8 weight_packed (nvfp4 pack)"
            else:
                bits, why = 4, "assumed 4 bits"
                self.notes.append(f"{t.name}: weight_packed without quantization_config; assuming 4 bits")
            return self._packed(t, bits, "compressed-tensors", f"compressed-tensors weight_packed, {why}")
        if leaf in _QSTATE_LEAVES or ".quant_state." in t.name or t.dtype == "F8_E8M0":
            method = qmeth
            if method is None:
                if leaf in ("absmax", "quant_map", "nested_absmax", "nested_quant_map", "SCB") \
                        or ".quant_state." in t.name:
                    method = "bitsandbytes"
                elif leaf == "weight_scale_inv":
                    method = "fp8"
            why = "E8M0 block scale" if t.dtype == "F8_E8M0" else f"quantization state ({leaf})"
            return self._state(t, method, why)
        if leaf.endswith("_blocks") and t.dtype == "U8" and \
                self._has(_sib(base, leaf[: -len("_blocks")] + "_scales")):
            bits = 4
            return self._packed(t, bits, "mxfp4", "MXFP4 _blocks: two E2M1 values per U8")
        if leaf.endswith("_scales") and is_int and \
                self._has(_sib(base, leaf[: -len("_scales")] + "_blocks")):
            return self._state(t, "mxfp4", "MXFP4 E8M0 block scales")
        if leaf == "weight" and is_int:
            if t.dtype == "U8" and (self._has(t.name + ".absmax") or
                                     any(self._has(f"{t.name}.quant_state.bitsandbytes__{k}")
                                         for k in ("nf4", "fp4")) or
                                     (qmeth == "bitsandbytes" and q.bnb_4bit)):
                return self._packed(t, 4, "bitsandbytes", "bitsandbytes 4-bit: two 4-bit values per U8")
            if t.dtype == "I8" and (self._has(_sib(base, "SCB")) or
                                     (qmeth == "bitsandbytes" and q.bnb_8bit)):
                return self._packed(t, 8, "bitsandbytes", "bitsandbytes 8-bit (LLM.int8) weight")
            ws = self.by_name.get(_sib(base, "weight_scale"))
            if ws is not None or self._has(_sib(base, "weight_scale_inv")):
                if q.bits:
                    bits = int(q.bits)
                elif t.dtype == "U8" and ws is not None and ws.dtype == "F8_E4M3":
                    bits = 4    # NVFP4: two E2M1 values per byte, FP8 block scales
                else:
                    bits = dt.bits
                method = qmeth or ("nvfp4" if bits == 4 and t.dtype == "U8" else "int-quantized")
                return self._packed(t, bits, method, f"integer weight with weight_scale ({bits}-bit)")
            if qmeth is not None:
                bits = int(q.bits) if q.bits else dt.bits
                return self._packed(t, bits, qmeth, f"integer weight in a {qmeth} checkpoint "
                                                    f"({bits}-bit per quantization_config)")

        # 2. buffers by name, 3. the dtype rule --------------------------------------------
        role_name, why = _unquantized_role(kind, leaf, _is_attention_mask(base, leaf, t.shape))
        role = TensorRole(t.name, role_name, t.dtype, tuple(t.shape), t.numel,
                          t.numel if role_name == "parameter" else 0, reason=why)
        if role_name == "parameter" and kind == "float" and dt.bits == 8 and (
                self._has(_sib(base, "weight_scale")) or self._has(_sib(base, "weight_scale_inv")) or
                (leaf == "weight" and qmeth in ("fp8", "fbgemm-fp8", "compressed-tensors"))):
            role.quant_method = qmeth or "fp8"
            role.flags.append("fp8_quantized")
            role.reason = "FP8 weight (scaled)"
            self._detect(role.quant_method)
        return role


# --------------------------------------------------------------------------- ties

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


# --------------------------------------------------------------------------- main entry

def _grp() -> dict[str, int]:
    return {"params": 0, "elements": 0, "bytes": 0, "tensors": 0}


def _add_grp(bucket: dict[str, dict[str, int]], key: str, params: int, elements: int, nbytes: int,
             tensors: int) -> None:
    g = bucket.get(key)
    if g is None:
        g = bucket[key] = _grp()
    g["params"] += params
    g["elements"] += elements
    g["bytes"] += nbytes
    g["tensors"] += tensors


def count_table(table: TensorTable, *, tie_check: str = "sample") -> Counting:
    """Count a model from its TensorTable (and ``table.config``).

    Rules (formats.md "What counts as a parameter", issue 5), in the order they are applied:

    1. Quantized checkpoints.  The method comes from ``config.json``'s ``quantization_config``
       (``quant_method``: gptq, awq, bitsandbytes, compressed-tensors, fp8, fbgemm_fp8, mxfp4, ...);
       without one, from name patterns (``.qweight`` + ``.scales``/``.qzeros``/``.g_idx`` = GPTQ/AWQ,
       ``.weight`` U8 + ``.weight.absmax``/``.quant_state.bitsandbytes__*`` = bitsandbytes 4-bit,
       ``.weight`` I8 + ``.SCB`` = bitsandbytes 8-bit, ``weight_packed`` = compressed-tensors,
       ``*_blocks`` U8 + ``*_scales`` = MXFP4, U8 ``weight`` + F8 ``weight_scale`` = NVFP4).  Packed weights count ``stored bits / logical bits``
       logical parameters (GPTQ/AWQ I32 ``qweight`` = 32/bits per element, bnb 4-bit and MXFP4 U8 = 2).
       Scales, zero points, ``g_idx``, ``absmax``, ``quant_map``, ``nested_*``, ``SCB``,
       ``weight_scale*``, ``input_scale``, ``weight_shape`` and E8M0 tensors are ``quant_state``.
    2. Buffers by name: ``position_ids``, ``token_type_ids``, ``inv_freq``, ``masked_bias``,
       ``num_batches_tracked``, ``running_mean``/``running_var``, and ``attn.bias`` /
       ``attention.bias`` with 2+ dimensions (GPT-2's causal masks, saved as F32 in some
       checkpoints) — whatever their dtype.
    3. Otherwise integer / bool tensors are buffers, floating-point (and complex) ones parameters.

    Then ties (``tie_word_embeddings``: an absent lm_head is normal; a present one with the
    embedding's shape is counted once), and MoE (routed experts by ``experts.N.`` names or as
    stacked tensors under an ``experts`` module; shared experts and routers always active).

    ``tie_check`` decides how a present lm_head that config.json says is tied to the embedding
    is confirmed: ``"none"`` reads nothing (trust config.json), ``"sample"`` (default) compares
    three 64 KiB windows of the two tensors, ``"full"`` compares all bytes. This is the only
    tensor data counting ever reads, and only in that case.
    """
    if tie_check not in ("none", "sample", "full"):
        raise ValueError(f"tie_check must be 'none', 'sample' or 'full', not {tie_check!r}")
    with gc_paused():   # a few acyclic objects per tensor, 100k tensors in MoE headers
        return _count_table(table, tie_check)


def _count_table(table: TensorTable, tie_check: str) -> Counting:
    config = table.config if isinstance(table.config, dict) else None
    quant = _parse_quant_config(config)
    clf = _Classifier(table, quant)
    roles = clf.classify_all(table.tensors)
    notes = list(clf.notes)

    # quantization summary
    qsum = quant.to_dict()
    if quant.method is None and clf.detected:
        top = max(clf.detected, key=clf.detected.get)
        qsum.update(method=top, source="name patterns")
        bits = {r.logical_bits for r in roles if r.role == "packed_parameter" and r.quant_method == top}
        if len(bits) == 1:
            qsum["bits"] = bits.pop()
    elif quant.method and not clf.detected:
        notes.append(f"config.json declares quant_method={quant.method!r} but no quantized "
                     "tensor was recognised")
    qsum["detected_in_tensors"] = dict(clf.detected)

    # ties ----------------------------------------------------------------------------
    tie_cfg = config_get(config, "tie_word_embeddings")
    if not isinstance(tie_cfg, bool):
        tie_cfg = None
    candidates = [r for r in roles if r.name.endswith(_TIE_SUFFIXES)]   # one cheap pass over the names
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
        same_shape = tuple(clf.by_name[emb.name].shape) == tuple(clf.by_name[head.name].shape) and \
            emb.dtype == head.dtype
        if tie_cfg is True and same_shape:
            equal = None
            if tie_check in ("sample", "full"):
                equal = _bytes_equal(clf.by_name[emb.name], clf.by_name[head.name], tie_check)
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

    # MoE --------------------------------------------------------------------------------
    moe = _moe(roles, config, notes)

    # totals -----------------------------------------------------------------------------
    # One pass over 100k tensors in the largest headers, sums in locals: per run of consecutive
    # tensors with the same dtype (elements_by_dtype, params_by_dtype), and per segment of consecutive
    # tensors with the same first name component and layer (the module and layer groups), each run
    # added to its dict entry when it ends -- entries in order of first appearance, the same sums,
    # a few dict operations per run instead of per tensor (tensors come in file order: long runs).
    # A layer is a prefix of whole name components, so the same layer means the same module.
    total_params = 0
    parameter_elements = packed_stored = packed_logical = buffer_el = qstate_el = 0
    b_param = b_packed = b_buffer = b_qstate = 0
    elements_by_dtype: dict[str, int] = {}
    params_by_dtype: dict[str, int] = {}
    modules: dict[str, dict[str, int]] = {}
    layers: dict[str, dict[str, int]] = {}
    d_key = None                        # dtype run: its elements, its counted plain parameters
    d_e = d_p = d_n = 0
    d_has_p = False
    s_top = s_lay = None                # segment: module, layer (None: none) and group sums
    s_p = s_e = s_b = s_n = 0
    for t, r in zip(table.tensors, roles):
        numel = t.numel
        nbytes = t.nbytes
        dtype = t.dtype
        if dtype is not d_key and dtype != d_key:
            if d_n:
                elements_by_dtype[d_key] = elements_by_dtype.get(d_key, 0) + d_e
                if d_has_p:
                    params_by_dtype[d_key] = params_by_dtype.get(d_key, 0) + d_p
            d_key = dtype
            d_e = d_p = d_n = 0
            d_has_p = False
        d_e += numel
        d_n += 1
        role = r.role
        if role == "parameter":
            b_param += nbytes
            if r.counted:
                counted = r.logical_numel
                parameter_elements += numel
                d_p += numel
                d_has_p = True
            else:
                counted = 0
        elif role == "packed_parameter":
            b_packed += nbytes
            packed_stored += numel
            if r.counted:
                counted = r.logical_numel
                packed_logical += counted
                pf = r.pack_factor
                key = f"{dtype}×{int(pf) if float(pf).is_integer() else round(float(pf), 4)}"
                params_by_dtype[key] = params_by_dtype.get(key, 0) + counted
            else:
                counted = 0
        elif role == "buffer":
            b_buffer += nbytes
            buffer_el += numel
            counted = 0
        else:
            b_qstate += nbytes
            qstate_el += numel
            counted = 0
        total_params += counted
        lay = r.layer
        if lay is None or lay is not s_lay:
            top = t.name.partition(".")[0]
            if s_n and (top != s_top or lay != s_lay):
                _add_grp(modules, s_top, s_p, s_e, s_b, s_n)
                if s_lay is not None:
                    _add_grp(layers, s_lay, s_p, s_e, s_b, s_n)
                s_p = s_e = s_b = s_n = 0
            s_top = top
            s_lay = lay
        s_p += counted
        s_e += numel
        s_b += nbytes
        s_n += 1
    if d_n:
        elements_by_dtype[d_key] = elements_by_dtype.get(d_key, 0) + d_e
        if d_has_p:
            params_by_dtype[d_key] = params_by_dtype.get(d_key, 0) + d_p
    if s_n:
        _add_grp(modules, s_top, s_p, s_e, s_b, s_n)
        if s_lay is not None:
            _add_grp(layers, s_lay, s_p, s_e, s_b, s_n)
    bytes_by_role = {"parameter": b_param, "buffer": b_buffer, "quant_state": b_qstate,
                     "packed_parameter": b_packed}
    bytes_total = b_param + b_buffer + b_qstate + b_packed         # each tensor is in one role
    total_elements = sum(elements_by_dtype.values())                # and has one dtype
    elements_by_dtype = dict(sorted(elements_by_dtype.items(), key=lambda kv: (-kv[1], kv[0])))
    params_by_dtype = dict(sorted(params_by_dtype.items(), key=lambda kv: (-kv[1], kv[0])))

    # declared totals --------------------------------------------------------------------
    declared: dict[str, dict] = {}
    sources = [("index", table.index_metadata or {}), ("metadata", table.metadata or {})]
    for key, computed in (("total_parameters", total_params), ("total_size", bytes_total)):
        for src, meta in sources:
            v = meta.get(key) if isinstance(meta, dict) else None
            if v is None:
                continue
            try:
                dv = int(v)
            except (TypeError, ValueError):
                notes.append(f"declared {key} {v!r} is not an integer")
                continue
            declared[key] = {"declared": dv, "computed": computed, "difference": computed - dv,
                             "source": src}
            if dv != computed:
                what = "parameters" if key == "total_parameters" else "data bytes"
                notes.append(f"{src} metadata declares {key}={dv:,}; computed {what}: {computed:,} "
                             f"(difference {computed - dv:+,})")
            break

    if moe.get("detected"):
        active, reason = moe.get("active_params"), moe.get("active_reason", "")
    else:
        active, reason = total_params, "dense model: every parameter is active"
    moe.pop("active_params", None)
    moe.pop("active_reason", None)

    return Counting(
        path=table.path, format=table.format, roles=roles, total_params=total_params,
        total_elements=total_elements, parameter_elements=parameter_elements,
        packed_stored_elements=packed_stored, packed_logical_params=packed_logical,
        buffer_elements=buffer_el, quant_state_elements=qstate_el,
        elements_by_dtype=elements_by_dtype, params_by_dtype=params_by_dtype,
        bytes_total=bytes_total, bytes_by_role=bytes_by_role,
        groups={"modules": modules, "layers": layers}, declared=declared, quantization=qsum,
        ties=ties, moe=moe, active_params=active, active_params_reason=reason, notes=notes)


# --------------------------------------------------------------------------- MoE

def _moe(roles: list[TensorRole], config: dict | None, notes: list[str]) -> dict:
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


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (decimal prefixes), for tables."""
    if n is None:
        return "?"
    a = abs(n)
    for div, suf in ((1e12, "T"), (1e9, "B" if not unit else "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{n / div:.2f}{suf}{unit}"
    return f"{n:g}{unit}" if isinstance(n, float) else f"{n}{unit}"


__all__ = ["count_table", "Counting", "TensorRole", "ROLES", "config_get", "human"]
