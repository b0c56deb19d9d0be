"""Quantized checkpoints in counting: the detectors (one module per method) in the order the classifier tries
them, config.json's quantization_config parsed by the detector of its quant_method, and the summary."""
from __future__ import annotations

from ..config import config_get
from . import bitsandbytes, compressed_tensors, declared, fp8, gptq_awq, mxfp4, nvfp4, state
from .base import INT_KINDS, Detector, QuantConfig, sibling

# The order matters where two detectors could claim one tensor: GPTQ/AWQ and compressed-tensors name their
# scales/zeros (and a qweight / weight_packed inside a ".quant_state.") before the generic state rule does;
# the generic state rule takes ".quant_state." names before any detector of integer `weight` tensors; the
# bitsandbytes layouts win over a weight_scale sibling; a method only config.json names comes last but one,
# and FP8 only annotates the tensors nobody claimed. Adding a method: a module with a Detector, listed here.
DETECTORS: tuple[Detector, ...] = (
    gptq_awq.DETECTOR, compressed_tensors.DETECTOR, state.DETECTOR, mxfp4.DETECTOR, bitsandbytes.DETECTOR,
    nvfp4.DETECTOR, declared.DETECTOR, fp8.DETECTOR)
state.DETECTOR.bind(DETECTORS)
QSTATE_LEAVES = state.DETECTOR.leaves
_CONFIG_READERS = {m: d for d in DETECTORS for m in d.methods}


def parse_quant_config(config: dict | None) -> QuantConfig:
    """config.json's quantization_config (or compression_config) as a QuantConfig; empty without one."""
    qc = None
    if isinstance(config, dict):
        for key in ("quantization_config", "compression_config"):
            qc = config_get(config, key)
            if isinstance(qc, dict):
                break
            qc = None
    if not qc:
        return QuantConfig()
    q = QuantConfig(source="config.json quantization_config", raw=qc)
    method = str(qc.get("quant_method") or "").lower().replace("_", "-") or None
    if method is None and ("load_in_4bit" in qc or "load_in_8bit" in qc):   # transformers' legacy bnb config
        method = "bitsandbytes"
    if method is None and "config_groups" in qc:
        method = "compressed-tensors"
    q.method = _CONFIG_READERS.get(method, declared.DETECTOR).read_config(q, qc, method)
    if isinstance(q.bits, str) and q.bits.isdigit():
        q.bits = int(q.bits)
    return q


def quant_summary(quant: QuantConfig, detected: dict[str, int], roles: list, notes: list[str]) -> dict:
    """The report's "quantization": config.json's settings, else the method most tensors were detected as
    (with its bits when all its packed tensors agree); which methods the tensors showed, and how many each."""
    qsum = quant.to_dict()
    if quant.method is None and detected:
        top = max(detected, key=detected.get)
        qsum.update(method=top, source="name patterns")
        bits = {r.logical_bits for r in roles if r.role == "packed_parameter" and r.quant_method == top}
        if len(bits) == 1:
            qsum["bits"] = bits.pop()
    elif quant.method and not detected:
        notes.append(f"config.json declares quant_method={quant.method!r} but no quantized "
                     "tensor was recognised")
    qsum["detected_in_tensors"] = dict(detected)
    return qsum


__all__ = ["DETECTORS", "Detector", "QuantConfig", "QSTATE_LEAVES", "INT_KINDS", "parse_quant_config",
           "quant_summary", "sibling"]
