"""compressed-tensors (llm-compressor): pack-quantized ``weight_packed`` integers with their ``weight_scale`` /
``weight_zero_point`` / ``weight_shape`` state; the bits come from the config_groups of quantization_config."""
from __future__ import annotations

from .base import INT_KINDS, Detector, QuantConfig, sibling


class CompressedTensors(Detector):
    name = "compressed-tensors"
    methods = ("compressed-tensors",)
    state_leaves = frozenset({"weight_scale", "weight_zero_point", "weight_global_scale", "weight_shape",
                              "weight_g_idx", "input_scale", "input_global_scale", "input_zero_point",
                              "output_scale", "output_zero_point", "k_scale", "v_scale", "q_scale", "prob_scale"})

    def read_config(self, q: QuantConfig, qc: dict, method: str) -> str:
        q.fmt = qc.get("format")
        for grp in (qc.get("config_groups") or {}).values():
            w = (grp or {}).get("weights") or {}
            if w.get("num_bits") is not None:
                q.bits = w.get("num_bits")
                q.group_size = w.get("group_size")
                q.fmt = grp.get("format") or q.fmt
                break
        return method

    def may_concern(self, dt, dtype, leaf):
        return leaf in ("weight_packed", "scales", "zeros")

    def claim(self, clf, t, base, leaf, dt):
        q = clf.q
        if leaf in ("scales", "zeros") and clf.has(sibling(base, "weight_packed")):
            return clf.state(t, q.method, f"quantization state ({leaf})")
        if leaf == "weight_packed" and dt.kind in INT_KINDS:
            if q.method == "compressed-tensors" and q.bits:
                bits, why = int(q.bits), f"quantization_config num_bits={q.bits}"
            elif t.dtype == "U8":       # nvfp4-pack-quantized
                bits, why = 4, "U8 weight_packed (nvfp4 pack)"
            else:
                bits, why = 4, "assumed 4 bits"
                clf.notes.append(f"{t.name}: weight_packed without quantization_config; assuming 4 bits")
            return clf.packed(t, bits, "compressed-tensors", f"compressed-tensors weight_packed, {why}")
        return None


DETECTOR = CompressedTensors()
