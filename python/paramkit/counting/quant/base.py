"""The detector interface every quantization method of counting implements (one module per method), and the
parsed quantization_config of config.json the detectors read."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # the classifier is in ..roles, which imports the detectors
    from ...dtypes import DType
    from ...table import TensorInfo
    from ..roles import Classifier, TensorRole

INT_KINDS = ("int", "uint", "bool")


def sibling(base: str, leaf: str) -> str:
    """The name of the tensor with last component ``leaf`` beside the one named ``base``.<its leaf>."""
    return f"{base}.{leaf}" if base else leaf


@dataclass
class QuantConfig:
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


class Detector:
    """One quantization method (or one family of tensors that quantized checkpoints share). The classifier
    (..roles.Classifier) asks the detectors of quant.DETECTORS, in that order, to claim each tensor; the first
    role returned decides it. Every method has a default that claims nothing."""

    name: str = ""                  # the method a tensor it claims or names_state() is attributed to
    methods: tuple[str, ...] = ()   # normalised quant_method values of config.json whose settings read_config reads
    state_leaves: frozenset[str] = frozenset()   # last name components that are this method's quantization state

    def read_config(self, q: QuantConfig, qc: dict, method: str) -> str:
        """Fill q's bits / group_size / format from the quantization_config qc; returns the method's name."""
        return method

    def may_concern(self, dt: DType, dtype: str, leaf: str) -> bool:
        """Whether claim() or annotate() may take a tensor of this dtype and last name component, depending on
        its siblings, shape or config.json; False lets the classifier's fast path skip this detector."""
        return False

    def claim(self, clf: Classifier, t: TensorInfo, base: str, leaf: str, dt: DType) -> TensorRole | None:
        """The role of t (name = base.leaf) when this method decides it, else None."""
        return None

    def names_state(self, name: str, leaf: str) -> bool:
        """Whether a quantization-state tensor of this name is this method's when config.json names none."""
        return False

    def annotate(self, clf: Classifier, t: TensorInfo, role: TensorRole, base: str, leaf: str, dt: DType) -> None:
        """Mark the role of a tensor that no detector claimed (an FP8 weight stays a parameter, say)."""
