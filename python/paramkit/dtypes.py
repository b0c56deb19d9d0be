"""The dtype table, in one place: the safetensors dtypes (bit widths, value kinds, the numpy dtype used to
decode each one, the numeric id shared with the C++ engine, cpp/include/paramkit/dtype.hpp), then the GGML
block-quantized types a GGUF file stores (elements and bytes per block; kind "block")."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str          # safetensors spelling, e.g. "BF16"
    bits: int          # bits per element
    kind: str          # "float" | "int" | "uint" | "bool" | "complex" | "other"
    engine_id: int     # id in cpp/include/paramkit/dtype.hpp, -1 = no statistics
    numpy_name: str | None  # numpy / ml_dtypes name to decode with, None if not decodable
    block: int = 1     # elements per block: GGML block types (bits is 0 for them: see bits_per_weight)
    block_bytes: int = 0

    @property
    def bits_per_weight(self) -> float:
        return self.block_bytes * 8 / self.block if self.kind == "block" else float(self.bits)

    @property
    def has_stats(self) -> bool:
        return self.engine_id >= 0

    @property
    def is_floating(self) -> bool:
        return self.kind == "float"


_ROWS = [
    # name, bits, kind, engine id, numpy name
    ("F64", 64, "float", 0, "float64"),
    ("F32", 32, "float", 1, "float32"),
    ("F16", 16, "float", 2, "float16"),
    ("BF16", 16, "float", 3, "bfloat16"),
    ("F8_E4M3", 8, "float", 4, "float8_e4m3fn"),
    ("F8_E5M2", 8, "float", 5, "float8_e5m2"),
    ("I8", 8, "int", 6, "int8"),
    ("U8", 8, "uint", 7, "uint8"),
    ("I16", 16, "int", 8, "int16"),
    ("U16", 16, "uint", 9, "uint16"),
    ("I32", 32, "int", 10, "int32"),
    ("U32", 32, "uint", 11, "uint32"),
    ("I64", 64, "int", 12, "int64"),
    ("U64", 64, "uint", 13, "uint64"),
    ("BOOL", 8, "bool", 14, "bool"),
    # valid in files, counted, but no statistics (yet)
    ("F4", 4, "float", -1, None),
    ("F6_E2M3", 6, "float", -1, None),
    ("F6_E3M2", 6, "float", -1, None),
    ("F8_E8M0", 8, "float", -1, None),
    ("F8_E4M3FNUZ", 8, "float", -1, None),
    ("F8_E5M2FNUZ", 8, "float", -1, None),
    ("C64", 64, "complex", -1, None),
]

SAFETENSORS_DTYPES: tuple[str, ...] = tuple(r[0] for r in _ROWS)


# GGML block types the native engines dequantize (cpp/include/paramkit/ggml_blocks.hpp); their engine id is
# GGML_DTYPE_BASE + the GGML type id, as there (tests/test_gguf_stats.py checks both sides agree). The other
# block types get statistics from the numpy backend only (gguf.quants), where it can dequantize them.
GGML_DTYPE_BASE = 64
GGML_NATIVE = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
               "IQ4_NL", "IQ4_XS", "MXFP4")


def _ggml_block_rows() -> list[DType]:
    from .ggml_types import GGML_TYPES
    return [DType(g.name, 0, "block", GGML_DTYPE_BASE + g.id if g.name in GGML_NATIVE else -1, None,
                  g.block, g.type_size)
            for g in GGML_TYPES.values() if g.block > 1]


DTYPES: dict[str, DType] = {r[0]: DType(*r) for r in _ROWS}
DTYPES.update((d.name, d) for d in _ggml_block_rows())
BY_ENGINE_ID: dict[int, DType] = {d.engine_id: d for d in DTYPES.values() if d.engine_id >= 0}


def stats_dtype(name: str) -> DType:
    """The DType of `name` for a statistics call (every engine's array_stats / dlpack_stats checks
    with this): ValueError for a name that is not a safetensors dtype, TypeError for one that
    paramkit counts but has no statistics for (F4, F6_*, F8_E8M0, the FNUZ fp8 variants, C64)."""
    d = DTYPES.get(name)
    if d is None:
        raise ValueError(f"unknown dtype {name!r} (safetensors dtypes: {', '.join(DTYPES)})")
    if d.kind == "block":
        raise TypeError(f"{name} is a GGML block type: its statistics come from scanning the GGUF file")
    if not d.has_stats:
        raise TypeError(f"no statistics for dtype {name} (paramkit computes statistics for "
                        + ", ".join(n for n, x in DTYPES.items() if x.has_stats) + ")")
    return d


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype that decodes a safetensors dtype (bf16/f8 need the ml_dtypes package)."""
    d = DTYPES[name]
    if d.numpy_name is None:
        raise ValueError(f"dtype {name} has no numpy decoding")
    if d.numpy_name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes  # noqa: F401  (registers the dtypes)
        return np.dtype(getattr(ml_dtypes, d.numpy_name))
    return np.dtype(d.numpy_name)


def from_numpy(dt: np.dtype) -> DType:
    """The safetensors dtype of a numpy array's dtype (ml_dtypes bfloat16/float8 included)."""
    dt = np.dtype(dt)
    for d in DTYPES.values():
        if d.numpy_name is not None and d.numpy_name == dt.name and dt.byteorder in ("=", "<", "|"):
            return d
    raise TypeError(f"no statistics for numpy dtype {dt} (supported: "
                    + ", ".join(d.numpy_name for d in DTYPES.values() if d.numpy_name) + ")")
