"""The quantization scheme catalogue: one `Scheme` per id (quant-schemes.md "Must have" plus the
group-size variants), with whose semantics it follows, its storage cost and its shape rules."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

# Granularity of the scales:
#   "tensor"     one scale for the whole tensor
#   "row"        one scale per output channel: the tensor viewed as [shape[0], numel/shape[0]]
#                (axis 0, like torch's per-channel axis=0 and TensorRT); 1-D = one row, scalar =
#                one element
#   "row_group"  groups of `group_size` consecutive elements within a row (the last dimension);
#                short last group allowed, a group longer than the row is the row
#   "ggml_block" like row_group, but the row length must be a multiple of the block (ggml types)
#   "flat_group" groups of `group_size` over the flattened tensor (bitsandbytes); short last group
# (Scheme.rows_view gives each one's [rows, row_len] view of a tensor.)
GRANULARITIES = ("tensor", "row", "row_group", "ggml_block", "flat_group")


@dataclass(frozen=True)
class Scheme:
    """One fake-quantization scheme. ``description`` says what it is, ``follows`` whose semantics
    it reproduces (bit for bit), ``deviations`` where and why it differs from that reference."""

    id: str
    family: str            # "int8_tensor" | "int8_channel" | "int_group" | "int_group_asym" |
                           # "q8_0" | "q4_0" | "nf4" | "fp8_e4m3"
    bits: int              # bits per stored element code
    granularity: str       # one of GRANULARITIES
    group_size: int | None  # elements per scale for the group granularities, else None
    scale_bits: int        # bits per stored scale (32: fp32, 16: fp16)
    zero_bits: int         # bits per stored zero point (0: symmetric)
    qmin: int | None       # integer code range (None for nf4 / fp8)
    qmax: int | None
    description: str
    follows: str
    deviations: str
    needs_tensor_absmax: bool = False  # the scale depends on the whole tensor (two passes when streaming)
    doc: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"bad granularity {self.granularity!r}")
        text = f"{self.id}: {self.description}\n\nFollows: {self.follows}\n\nDeviations: {self.deviations}"
        object.__setattr__(self, "doc", text)
        object.__setattr__(self, "__doc__", text)

    # ---- shape rules -------------------------------------------------------------------------
    @property
    def strict_rows(self) -> bool:
        """True when a row length that is not a multiple of the block is an error (ggml types)."""
        return self.granularity == "ggml_block"

    def rows_view(self, shape: Sequence[int]) -> tuple[int, int]:
        """(rows, row_len): the 2-D view [rows, row_len] of a tensor of `shape` in which this scheme
        lays out its scales, rows * row_len = numel. The one place every engine takes it from.

        * "row" (int8_channel): one row per output channel, [shape[0], numel/shape[0]] for 2 or
          more dimensions; a 1-D tensor is one channel [1, n];
        * "row_group", "ggml_block": rows along the last dimension, [numel/shape[-1], shape[-1]];
        * "tensor", "flat_group": the flattened tensor, [1, numel].

        A scalar is [1, 1]; an empty tensor keeps its other dimensions (shape (0, 5): [0, 5])."""
        dims = tuple(int(d) for d in shape)
        if not dims:
            return 1, 1
        if len(dims) == 1 or self.granularity in ("tensor", "flat_group"):
            return 1, _numel(dims)
        if self.granularity == "row":
            return dims[0], _numel(dims[1:])
        return _numel(dims[:-1]), dims[-1]

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raise ValueError if a tensor of this shape cannot take this scheme (ggml: the row length
        must be a multiple of the block size; a scalar is a row of length 1)."""
        if self.strict_rows:
            row_len = self.rows_view(shape)[1]
            if row_len % self.group_size:
                raise ValueError(f"{self.id}: row length {row_len} (shape {tuple(shape)}) is not a "
                                 f"multiple of the block size {self.group_size}")

    def n_groups(self, shape: Sequence[int]) -> int:
        """Number of stored scales for a tensor of this shape."""
        n = _numel(shape)
        if n == 0:
            return 0
        rows, row_len = self.rows_view(shape)
        if self.granularity == "tensor":
            return 1
        if self.granularity == "row":
            return rows
        if self.granularity in ("row_group", "ggml_block"):
            return rows * -(-row_len // self.group_size)
        return -(-n // self.group_size)  # flat_group

    def chunk_multiple(self, shape: Sequence[int]) -> int:
        """Streaming engines may split a tensor (in flattened order) only at multiples of this many
        elements; tensor-scale schemes additionally need the tensor absmax (needs_tensor_absmax).
        An empty tensor has nothing to split: 1."""
        if self.granularity == "tensor" or _numel(shape) == 0:
            return 1
        if self.granularity == "flat_group":
            return self.group_size
        row_len = self.rows_view(shape)[1]
        if self.granularity in ("row_group", "ggml_block") and row_len % self.group_size == 0:
            return self.group_size
        return row_len

    def piece_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """How a streaming engine shapes an aligned piece of a tensor of `shape` (consecutive
        elements that start at a multiple of chunk_multiple) so that the reference quantizes it
        exactly as inside the whole tensor: (-1, chunk_multiple), whole channels, rows or groups,
        for the row granularities; (-1,) for flat groups and per-tensor scales, where any aligned
        run will do (the last piece of a flat-group tensor may end in a short group)."""
        if self.granularity in ("row", "row_group", "ggml_block"):
            return (-1, self.chunk_multiple(shape))
        return (-1,)

    # ---- storage cost ------------------------------------------------------------------------
    def bits_per_weight(self, row_len: int | None = None) -> float:
        """Stored bits per weight including scales and zero points, for rows of ``row_len``
        elements (a short last group counts as a whole group; for ``int8_channel`` the row is one
        output channel, numel/shape[0] elements). ``None`` = the nominal value with
        full groups; for ``int8_channel`` that is the limit 8 (real cost 8 + 32/row_len), for the
        per-tensor schemes the single 4-byte scale is ignored (it is in `quantized_nbytes`)."""
        per_group = self.scale_bits + self.zero_bits
        if self.granularity == "tensor":
            return float(self.bits)
        if self.granularity == "row":
            return float(self.bits) if not row_len else self.bits + per_group / row_len
        if self.granularity == "flat_group" or not row_len:
            return self.bits + per_group / self.group_size
        groups = -(-row_len // self.group_size)
        return self.bits + per_group * groups / row_len

    def quantized_nbytes(self, shape: Sequence[int]) -> int:
        """Bytes of the quantized tensor: element codes packed densely over the whole tensor
        (ceil(n·bits/8)), plus scale_bits/8 per scale, plus zero points packed densely. For the
        ggml types this equals n_blocks · type_size (34 bytes for Q8_0, 18 for Q4_0)."""
        self.check_shape(shape)
        n = _numel(shape)
        if n == 0:
            return 0
        g = self.n_groups(shape)
        return -(-n * self.bits // 8) + g * self.scale_bits // 8 + -(-g * self.zero_bits // 8)


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


# ---- the catalogue ------------------------------------------------------------------------------
_NONFINITE = ("NaN stays NaN, ±Inf saturate to the extreme code; non-finite elements are left out "
              "of the scale statistics.")
_FP16_CLAMP = ("The fp16 scale is clamped to [2^-24, 65504] when fp16 conversion would give 0 or "
               "Inf (counted in scale_clamped); the reference then stores 0 / Inf instead.")


def _int8_tensor() -> Scheme:
    return Scheme(
        id="int8_tensor", family="int8_tensor", bits=8, granularity="tensor", group_size=None,
        scale_bits=32, zero_bits=0, qmin=-127, qmax=127, needs_tensor_absmax=True,
        description="Symmetric int8, one fp32 scale = absmax/127 for the whole tensor; "
                    "q = clamp(nearbyint(x·(1/scale)), -127, 127), dequantized q·scale.",
        follows="torch.fake_quantize_per_tensor_affine(x, scale, 0, -127, 127): float32 "
                "reciprocal multiply, round half to even.",
        deviations="None for finite inputs. " + _NONFINITE + " (torch's behaviour on Inf/NaN and on "
                   "scale 0 is undefined: a float-to-int64 cast.) A zero scale gives exact zeros.")


def _int8_channel() -> Scheme:
    return Scheme(
        id="int8_channel", family="int8_channel", bits=8, granularity="row", group_size=None,
        scale_bits=32, zero_bits=0, qmin=-127, qmax=127,
        description="Symmetric int8 per output channel (axis 0: one scale per row of a 2-D "
                    "[out, in] weight, per output filter of a conv weight [out, in, kh, kw]; "
                    "LLM.int8 / TensorRT style), fp32 scale = channel absmax/127. A 1-D tensor "
                    "is one channel.",
        follows="torch.fake_quantize_per_channel_affine(x, scales, zeros, axis=0, -127, 127) "
                "(the tensor viewed as [shape[0], numel/shape[0]]): float32 reciprocal multiply, "
                "half to even.",
        deviations="None for finite inputs with a normal scale. " + _NONFINITE
                   + " (torch's behaviour on Inf/NaN and on a zero or subnormal scale is "
                   "undefined: a float-to-int64 cast.) A zero scale gives exact zeros.")


def _int_group(bits: int, g: int) -> Scheme:
    qmax = 127 if bits == 8 else 7
    qmin = -127 if bits == 8 else -8
    return Scheme(
        id=f"int{bits}_g{g}", family="int_group", bits=bits, granularity="row_group", group_size=g,
        scale_bits=16, zero_bits=0, qmin=qmin, qmax=qmax,
        description=f"Symmetric int{bits} per group of {g} consecutive row elements; scale = "
                    f"absmax/{qmax} in fp32, stored fp16; q = clamp(round_half_even(x/scale), "
                    f"{qmin}, {qmax}) with the fp32 scale, dequantized q·fp16(scale).",
        follows=("GPTQ-sym style group quantization (absmax/7) as defined in quant-schemes.md"
                 if bits == 4 else "symmetric group int8 as defined in quant-schemes.md"),
        deviations=("GPTQ's own symmetric mode uses scale 2·absmax/15 with zero point 8 (so the "
                    "largest positive value clips); that is not this id. " if bits == 4 else "")
                   + "A row not a multiple of the group has a short last group. "
                   + _NONFINITE + " " + _FP16_CLAMP)


def _int_group_asym(g: int) -> Scheme:
    return Scheme(
        id=f"int4_g{g}_asym", family="int_group_asym", bits=4, granularity="row_group",
        group_size=g, scale_bits=16, zero_bits=4, qmin=0, qmax=15,
        description=f"Asymmetric int4 with a zero point per group of {g}: xmin = min(min x, 0), "
                    "xmax = max(max x, 0) (all-zero group: -1/+1), scale = (xmax-xmin)/15, "
                    "zero = round(-xmin/scale), q = clamp(round(x/scale)+zero, 0, 15), dequantized "
                    "fp16(scale)·(q-zero); fp32 arithmetic, round half to even.",
        follows="AutoGPTQ quantizer.py (asymmetric, per group) / AWQ, with the scale stored fp16.",
        deviations="GPTQ dequantizes with the fp32 scale during its search; here the stored fp16 "
                   "scale is used, as the packed checkpoint does. A short last group is allowed. "
                   "A group without a non-zero finite element keeps GPTQ's -1/+1 range: its zeros "
                   "stay exact and ±Inf there map to the extreme codes of that range. "
                   + _NONFINITE + " " + _FP16_CLAMP)


def _q8_0() -> Scheme:
    return Scheme(
        id="q8_0", family="q8_0", bits=8, granularity="ggml_block", group_size=32,
        scale_bits=16, zero_bits=0, qmin=-127, qmax=127,
        description="ggml Q8_0, blocks of 32: d = amax/127, q = roundf(x·(1/d)) (half away from "
                    "zero, fp32 reciprocal), dequantized q·fp16(d). 34 bytes per block.",
        follows="ggml quantize_row_q8_0_ref; bit-identical to gguf-py gguf.quants.Q8_0.",
        deviations="Identical for finite inputs whenever no scale is clamped. " + _NONFINITE
                   + " (gguf-py propagates NaN/Inf into the whole block.) " + _FP16_CLAMP
                   + " The row length must be a multiple of 32 (ValueError).")


def _q4_0() -> Scheme:
    return Scheme(
        id="q4_0", family="q4_0", bits=4, granularity="ggml_block", group_size=32,
        scale_bits=16, zero_bits=0, qmin=-8, qmax=7,
        description="ggml Q4_0, blocks of 32: m = the element of largest |x| (first one, sign "
                    "kept), d = m/-8, q = min(15, trunc(x·(1/d) + 8.5)), dequantized "
                    "(q-8)·fp16(d). 18 bytes per block.",
        follows="gguf-py gguf.quants.Q4_0 bit for bit (x·id and +8.5 rounded separately in "
                "float32, no fused multiply-add), which ports ggml quantize_row_q4_0_ref.",
        deviations="A ggml build that contracts x·id+8.5 into an FMA can differ by one code in "
                   "rare ties. " + _NONFINITE + " (gguf-py/ggml pick NaN/Inf as the block "
                   "maximum.) " + _FP16_CLAMP + " The row length must be a multiple of 32.")


def _nf4() -> Scheme:
    return Scheme(
        id="nf4", family="nf4", bits=4, granularity="flat_group", group_size=64,
        scale_bits=32, zero_bits=0, qmin=None, qmax=None,
        description="bitsandbytes NF4: blocks of 64 over the flattened tensor, fp32 absmax per "
                    "block, y = x·(1/absmax), nearest of the 16 NF4 codes (thresholds = float64 "
                    "midpoints rounded to float32, a tie goes to the lower code), dequantized "
                    "code·absmax. 4.5 bits/weight (≈4.127 with double quantization, not simulated).",
        follows="bitsandbytes quantize_4bit(quant_type='nf4', blocksize=64) / dQuantizeNF4.",
        deviations="No double quantization of the absmax values (bnb's compress_statistics=True "
                   "stores them in 8 bits; that changes the dequantized values slightly). "
                   + _NONFINITE + " A zero absmax gives exact zeros.")


def _fp8_e4m3() -> Scheme:
    return Scheme(
        id="fp8_e4m3", family="fp8_e4m3", bits=8, granularity="tensor", group_size=None,
        scale_bits=32, zero_bits=0, qmin=None, qmax=None, needs_tensor_absmax=True,
        description="OCP FP8 E4M3FN with one fp32 scale = amax/448 per tensor: value = "
                    "saturate(x/scale) rounded to the nearest E4M3 value (ties to even), "
                    "dequantized value·scale.",
        follows="a cast through ml_dtypes.float8_e4m3fn (== torch.float8_e4m3fn) after clamping "
                "x/scale to [-448, 448] (torchao / TensorRT-LLM per-tensor FP8 weights).",
        deviations="None for finite inputs. " + _NONFINITE + " (An unsaturated cast maps "
                   "|y| > 464 to NaN.) A zero amax gives exact zeros.")


_FIXED = {
    "int8_tensor": _int8_tensor, "int8_channel": _int8_channel, "q8_0": _q8_0, "q4_0": _q4_0,
    "nf4": _nf4, "fp8_e4m3": _fp8_e4m3,
}
_GROUP_ID = re.compile(r"^int(8|4)_g([1-9][0-9]*)(_asym)?$")
# Largest N of int8_gN / int4_gN / int4_gN_asym: 2^24 elements per scale, far beyond any real group
# (a group longer than a row is the row, so larger N would change nothing but the id)
MAX_GROUP_SIZE = 1 << 24

DEFAULT_SCHEMES: tuple[str, ...] = ("int8_tensor", "int8_channel", "int8_g128", "int4_g128",
                                    "int4_g128_asym", "q8_0", "q4_0", "nf4", "fp8_e4m3")
VARIANT_SCHEMES: tuple[str, ...] = ("int8_g32", "int8_g64", "int4_g32", "int4_g64",
                                    "int4_g32_asym", "int4_g64_asym")


def _build(scheme_id: str) -> Scheme:
    key = scheme_id.strip().lower()
    if key in _FIXED:
        return _FIXED[key]()
    m = _GROUP_ID.match(key)
    if m:
        digits = m.group(2)
        if len(digits) > len(str(MAX_GROUP_SIZE)) or int(digits) > MAX_GROUP_SIZE:
            shown = digits if len(digits) <= 12 else digits[:12] + f"... ({len(digits)} digits)"
            raise ValueError(f"quantization scheme {scheme_id[:40]!r}: group size {shown} is out of range; "
                             f"N in int8_gN / int4_gN / int4_gN_asym is 1 to {MAX_GROUP_SIZE} (2^24), "
                             "and a group longer than a row is the whole row")
        bits, g, asym = int(m.group(1)), int(digits), bool(m.group(3))
        if asym:
            if bits != 4:
                raise ValueError(f"unknown quantization scheme {scheme_id!r}: only int4 has an "
                                 "asymmetric group variant (int4_gN_asym)")
            return _int_group_asym(g)
        return _int_group(bits, g)
    raise ValueError(f"unknown quantization scheme {scheme_id!r}; known: "
                     + ", ".join(DEFAULT_SCHEMES + VARIANT_SCHEMES)
                     + f" (and int8_gN / int4_gN / int4_gN_asym for any group size 1 <= N <= {MAX_GROUP_SIZE})")


SCHEMES: dict[str, Scheme] = {i: _build(i) for i in DEFAULT_SCHEMES + VARIANT_SCHEMES}


def get_scheme(scheme: str | Scheme) -> Scheme:
    """The Scheme for an id (case-insensitive; group variants like ``int4_g64`` or
    ``int4_g32_asym`` are parsed), or the Scheme itself. Unknown ids raise ValueError."""
    if isinstance(scheme, Scheme):
        return scheme
    if not isinstance(scheme, str):
        raise TypeError(f"scheme must be an id string or a Scheme, not {type(scheme).__name__}")
    found = SCHEMES.get(scheme.strip().lower())
    return found if found is not None else _build(scheme)
