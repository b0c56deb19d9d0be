"""A method that config.json's quantization_config names but no other detector knows the layout of (hqq, ...):
its bits / group_size are read generically, and its integer ``weight`` tensors are packed at those bits."""
from __future__ import annotations

from .base import INT_KINDS, Detector, QuantConfig


class Declared(Detector):
    def read_config(self, q: QuantConfig, qc: dict, method: str | None) -> str | None:
        q.bits = qc.get("bits", qc.get("w_bit", qc.get("nbits")))
        q.group_size = qc.get("group_size")
        return method

    def may_concern(self, dt, dtype, leaf):
        return leaf == "weight" and dt.kind in INT_KINDS

    def claim(self, clf, t, base, leaf, dt):
        qmeth = clf.q.method
        if leaf != "weight" or dt.kind not in INT_KINDS or qmeth is None:
            return None
        bits = int(clf.q.bits) if clf.q.bits else dt.bits
        return clf.packed(t, bits, qmeth, f"integer weight in a {qmeth} checkpoint "
                                          f"({bits}-bit per quantization_config)")


DETECTOR = Declared()
