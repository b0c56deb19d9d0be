"""FP8 (fp8, fbgemm_fp8, DeepSeek block-scaled): 8-bit float weights stay parameters, flagged fp8_quantized when
scaled (a ``weight_scale`` / ``weight_scale_inv`` sibling, or an FP8 quantization_config)."""
from __future__ import annotations

from .base import Detector, QuantConfig, sibling

_FP8_CONFIG_METHODS = ("fp8", "fbgemm-fp8", "compressed-tensors")


class Fp8(Detector):
    name = "fp8"
    methods = ("fp8", "fbgemm-fp8")
    state_leaves = frozenset({"weight_scale", "weight_scale_inv", "input_scale", "k_scale", "v_scale"})

    def read_config(self, q: QuantConfig, qc: dict, method: str) -> str:
        q.bits = 8
        q.fmt = qc.get("fmt") or "e4m3"
        q.group_size = qc.get("weight_block_size")
        return method

    def may_concern(self, dt, dtype, leaf):
        return dt.kind == "float" and dt.bits == 8

    def names_state(self, name, leaf):
        return leaf == "weight_scale_inv"

    def annotate(self, clf, t, role, base, leaf, dt):
        qmeth = clf.q.method
        if role.role == "parameter" and dt.kind == "float" and dt.bits == 8 and (
                clf.has(sibling(base, "weight_scale")) or clf.has(sibling(base, "weight_scale_inv")) or
                (leaf == "weight" and qmeth in _FP8_CONFIG_METHODS)):
            role.quant_method = qmeth or "fp8"
            role.flags.append("fp8_quantized")
            role.reason = "FP8 weight (scaled)"
            clf.detect(role.quant_method)


DETECTOR = Fp8()
