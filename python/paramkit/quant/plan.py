"""Which tensors a scan quantizes under which schemes (the visible, overridable policy), and the
facts the streaming engines need for each tensor: scheme bitmask, row/channel lengths, piece alignment."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..dtypes import DTYPES
from ..backends.block_types import values_readable
from .schemes import Scheme

# engine ids of cpp/include/paramkit/quant.hpp QuantKind
_KIND = {"int8_tensor": 0, "int8_channel": 1, "q8_0": 5, "q4_0": 6, "nf4": 7, "fp8_e4m3": 8}

DEFAULT_POLICY = "floating-point parameters with 2 or more dimensions (norms, biases, 1-D tensors and buffers stay as they are)"


def default_quant_policy(name: str, dtype: str, shape: Sequence[int], role: str) -> bool:
    """The default: floating-point parameters with 2+ dimensions, as the common tools do (GGML block tensors
    are floating-point too: the schemes take their dequantized values)."""
    return role == "parameter" and DTYPES[dtype].kind in ("float", "block") and len(shape) >= 2


def engine_kind(s: Scheme) -> tuple[int, int]:
    """(QuantKind, group size) of a scheme for the native engines."""
    if s.family == "int_group":
        return (2 if s.bits == 8 else 3), int(s.group_size)
    if s.family == "int_group_asym":
        return 4, int(s.group_size)
    return _KIND[s.family], int(s.group_size or 1)


@dataclass
class QuantPlan:
    schemes: list[Scheme]
    masks: list[int]                                  # per tensor: bit k = schemes[k] applies
    policy: str = DEFAULT_POLICY
    not_applicable: dict[int, dict[str, str]] = field(default_factory=dict)  # tensor -> scheme -> why

    @property
    def second_pass_bits(self) -> int:
        """Schemes whose scale needs the whole tensor's absmax (a second, cached read)."""
        return sum(1 << k for k, s in enumerate(self.schemes) if s.needs_tensor_absmax)

    def only(self, chosen: Sequence[int]) -> "QuantPlan":
        """The plan with every tensor but those at the indices `chosen` left unquantized."""
        keep = set(chosen)
        return QuantPlan(self.schemes, [m if i in keep else 0 for i, m in enumerate(self.masks)], self.policy,
                         {i: na for i, na in self.not_applicable.items() if i in keep})

    def take(self, chosen: Sequence[int]) -> "QuantPlan":
        """The plan of the tensors at the indices `chosen`, renumbered 0.. in that order (what an engine run
        over just those tensors gets)."""
        where = {i: k for k, i in enumerate(chosen)}
        return QuantPlan(self.schemes, [self.masks[i] for i in chosen], self.policy,
                         {where[i]: na for i, na in self.not_applicable.items() if i in where})

    def piece_multiple(self, shape: Sequence[int], mask: int) -> int:
        m = 1
        for k, s in enumerate(self.schemes):
            if mask >> k & 1:
                c = s.chunk_multiple(shape)
                m = m * c // math.gcd(m, c)
        return m


def make_plan(tensors, roles: Sequence[str], schemes: Sequence[Scheme], quant_tensors=None) -> QuantPlan:
    """Decide per tensor which schemes apply. quant_tensors: None (default policy), a regex string
    matched with re.search against tensor names, or a callable(name, dtype, shape, role) -> bool."""
    if len(schemes) > 16:
        raise ValueError("at most 16 quantization schemes per scan")
    if quant_tensors is None:
        pick: Callable = default_quant_policy
        policy = DEFAULT_POLICY
    elif isinstance(quant_tensors, str):
        try:
            rx = re.compile(quant_tensors)
        except re.error as e:
            raise ValueError(f"quant_tensors: {quant_tensors!r} is not a valid regular expression ({e})") from None
        pick = lambda name, dtype, shape, role: bool(rx.search(name)) and values_readable(dtype)
        policy = f"floating-point tensors whose name matches /{quant_tensors}/"
    elif callable(quant_tensors):
        pick = quant_tensors
        policy = f"custom: {getattr(quant_tensors, '__qualname__', repr(quant_tensors))}"
    else:
        raise TypeError("quant_tensors must be None, a regex string or a callable(name, dtype, shape, role)")
    masks, na = [], {}
    for i, (t, role) in enumerate(zip(tensors, roles)):
        mask = 0
        if values_readable(t.dtype) and role not in ("buffer", "quant_state") and \
                pick(t.name, t.dtype, tuple(t.shape), role):
            for k, s in enumerate(schemes):
                try:
                    s.check_shape(t.shape)
                except ValueError as e:
                    na.setdefault(i, {})[s.id] = str(e)
                    continue
                mask |= 1 << k
        masks.append(mask)
    return QuantPlan(list(schemes), masks, policy, na)
