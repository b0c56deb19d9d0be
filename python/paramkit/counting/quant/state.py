"""Quantization state recognised by its own name whatever the siblings: the state leaves every method declares,
tensors inside a ``.quant_state.`` and E8M0 block scales; the method is config.json's, else the detector's
whose names_state() takes the name."""
from __future__ import annotations

from typing import Sequence

from .base import Detector


class QuantState(Detector):
    def __init__(self) -> None:
        self.leaves: frozenset[str] = frozenset()
        self._naming: tuple[Detector, ...] = ()

    def bind(self, detectors: Sequence[Detector]) -> None:
        """Take the state leaves of every detector, and the order in which they name a state tensor's method."""
        self.leaves = frozenset().union(*(d.state_leaves for d in detectors))
        self._naming = tuple(d for d in detectors if type(d).names_state is not Detector.names_state)

    def may_concern(self, dt, dtype, leaf):
        return leaf in self.leaves or dtype == "F8_E8M0"

    def claim(self, clf, t, base, leaf, dt):
        if leaf in self.leaves or ".quant_state." in t.name or t.dtype == "F8_E8M0":
            method = clf.q.method
            if method is None:
                method = next((d.name for d in self._naming if d.names_state(t.name, leaf)), None)
            why = "E8M0 block scale" if t.dtype == "F8_E8M0" else f"quantization state ({leaf})"
            return clf.state(t, method, why)
        return None


DETECTOR = QuantState()
