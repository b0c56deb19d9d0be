"""bitsandbytes: 4-bit (NF4/FP4) U8 ``weight`` holding two values per byte with ``absmax`` / ``quant_map`` /
``nested_*`` / ``quant_state.bitsandbytes__*`` state, and 8-bit (LLM.int8) I8 ``weight`` with ``SCB``."""
from __future__ import annotations

from .base import INT_KINDS, Detector, QuantConfig, sibling

_NAMING_LEAVES = frozenset({"absmax", "quant_map", "nested_absmax", "nested_quant_map", "SCB"})


class Bitsandbytes(Detector):
    name = "bitsandbytes"
    methods = ("bitsandbytes", "bitsandbytes-4bit", "bitsandbytes-8bit")
    state_leaves = _NAMING_LEAVES | {"weight_format"}

    def read_config(self, q: QuantConfig, qc: dict, method: str) -> str:
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
        return self.name

    def may_concern(self, dt, dtype, leaf):
        return leaf == "weight" and dt.kind in INT_KINDS

    def claim(self, clf, t, base, leaf, dt):
        if leaf != "weight" or dt.kind not in INT_KINDS:
            return None
        q = clf.q
        has = clf.has
        if t.dtype == "U8" and (has(t.name + ".absmax") or
                                 any(has(f"{t.name}.quant_state.bitsandbytes__{k}") for k in ("nf4", "fp4")) or
                                 (q.method == self.name and q.bnb_4bit)):
            return clf.packed(t, 4, self.name, "bitsandbytes 4-bit: two 4-bit values per U8")
        if t.dtype == "I8" and (has(sibling(base, "SCB")) or (q.method == self.name and q.bnb_8bit)):
            return clf.packed(t, 8, self.name, "bitsandbytes 8-bit (LLM.int8) weight")
        return None

    def names_state(self, name, leaf):
        return leaf in _NAMING_LEAVES or ".quant_state." in name


DETECTOR = Bitsandbytes()
