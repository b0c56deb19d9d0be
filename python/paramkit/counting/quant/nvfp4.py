"""NVFP4 / ModelOpt and other integer weights beside a ``weight_scale`` (or ``weight_scale_inv``): U8 ``weight``
with F8_E4M3 block scales holds two E2M1 values per byte; any other integer weight is ``int-quantized``."""
from __future__ import annotations

from .base import INT_KINDS, Detector, QuantConfig, sibling


class Nvfp4(Detector):
    name = "nvfp4"
    methods = ("modelopt",)
    state_leaves = frozenset({"weight_scale", "weight_scale_2", "input_scale"})

    def read_config(self, q: QuantConfig, qc: dict, method: str) -> str:
        algo = str(qc.get("quant_algo") or "").upper()
        q.fmt = algo or None
        q.bits = 4 if "FP4" in algo or "INT4" in algo else (8 if algo else None)
        q.group_size = qc.get("group_size")
        return method

    def may_concern(self, dt, dtype, leaf):
        return leaf == "weight" and dt.kind in INT_KINDS

    def claim(self, clf, t, base, leaf, dt):
        if leaf != "weight" or dt.kind not in INT_KINDS:
            return None
        ws = clf.by_name.get(sibling(base, "weight_scale"))
        if ws is None and not clf.has(sibling(base, "weight_scale_inv")):
            return None
        q = clf.q
        if q.bits:
            bits = int(q.bits)
        elif t.dtype == "U8" and ws is not None and ws.dtype == "F8_E4M3":
            bits = 4    # NVFP4: two E2M1 values per byte, FP8 block scales
        else:
            bits = dt.bits
        method = q.method or ("nvfp4" if bits == 4 and t.dtype == "U8" else "int-quantized")
        return clf.packed(t, bits, method, f"integer weight with weight_scale ({bits}-bit)")


DETECTOR = Nvfp4()
