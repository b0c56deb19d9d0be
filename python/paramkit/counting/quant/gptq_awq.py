"""GPTQ and AWQ: int32 ``qweight`` packing 32/bits weights per element, with ``scales`` / ``qzeros`` / ``g_idx``
quantization state; the bits come from quantization_config or from the sibling shapes."""
from __future__ import annotations

from ...dtypes import DTYPES
from .base import INT_KINDS, Detector, QuantConfig, sibling

_LEAVES = frozenset({"qweight", "qzeros", "g_idx", "scales", "zeros"})


class GptqAwq(Detector):
    name = "gptq"
    methods = ("gptq", "awq")
    state_leaves = frozenset({"qzeros", "g_idx"})

    def read_config(self, q: QuantConfig, qc: dict, method: str) -> str:
        q.bits = qc.get("bits", qc.get("w_bit"))
        q.group_size = qc.get("group_size", qc.get("q_group_size"))
        q.fmt = qc.get("checkpoint_format") or qc.get("version") or qc.get("format")
        return method

    def may_concern(self, dt, dtype, leaf):
        return leaf in _LEAVES

    def claim(self, clf, t, base, leaf, dt):
        qmeth = clf.q.method
        if leaf == "qweight" and dt.kind in INT_KINDS:
            bits, why = self._bits(clf, t, base)
            method = qmeth if qmeth in self.methods else (
                "awq" if (sc := clf.by_name.get(sibling(base, "scales"))) is not None
                and len(sc.shape) == 2 and len(t.shape) == 2 and sc.shape[-1] != t.shape[-1]
                else "gptq")
            return clf.packed(t, bits, method, f"{method} qweight, {why}")
        if leaf in ("qzeros", "g_idx") or (leaf in ("scales", "zeros") and clf.has(sibling(base, "qweight"))):
            return clf.state(t, qmeth or ("gptq" if clf.has(sibling(base, "qweight")) else None),
                             f"quantization state ({leaf})")
        return None

    def _bits(self, clf, t, base: str) -> tuple[int, str]:
        """Bits per weight of a GPTQ/AWQ qweight: config first, else inferred from sibling shapes."""
        q = clf.q
        if q.method in self.methods and q.bits:
            return int(q.bits), f"quantization_config bits={q.bits}"
        sc = clf.by_name.get(sibling(base, "scales"))
        qz = clf.by_name.get(sibling(base, "qzeros"))
        gi = clf.by_name.get(sibling(base, "g_idx"))
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
        clf.notes.append(f"{t.name}: bits per weight unknown (no quantization_config, shapes "
                         "inconclusive); assuming 4")
        return 4, "assumed 4 bits"


DETECTOR = GptqAwq()
