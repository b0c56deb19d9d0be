"""MXFP4 (gpt-oss): U8 ``*_blocks`` holding two E2M1 values per byte beside ``*_scales`` E8M0 block scales
(one per 32 values)."""
from __future__ import annotations

from .base import INT_KINDS, Detector, QuantConfig, sibling


class Mxfp4(Detector):
    name = "mxfp4"
    methods = ("mxfp4",)

    def read_config(self, q: QuantConfig, qc: dict, method: str) -> str:
        q.bits = 4
        q.group_size = 32
        return method

    def may_concern(self, dt, dtype, leaf):
        return leaf.endswith(("_blocks", "_scales"))

    def claim(self, clf, t, base, leaf, dt):
        if leaf.endswith("_blocks") and t.dtype == "U8" and \
                clf.has(sibling(base, leaf[: -len("_blocks")] + "_scales")):
            return clf.packed(t, 4, "mxfp4", "MXFP4 _blocks: two E2M1 values per U8")
        if leaf.endswith("_scales") and dt.kind in INT_KINDS and \
                clf.has(sibling(base, leaf[: -len("_scales")] + "_blocks")):
            return clf.state(t, "mxfp4", "MXFP4 E8M0 block scales")
        return None


DETECTOR = Mxfp4()
