"""Deployment planning from a Counting and config.json: weights memory per precision and quantization
scheme, KV cache, training memory, GPU fit and FLOPs — every figure with the formula that produced it."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from .counting import Counting, config_get

# Units: bytes and decimal GB (1 GB = 1e9 B, as GPU memory is marketed and as formats.md's rules of
# thumb are written: 70e9 params × 2 B = 140 GB → two 80 GB GPUs).
GB = 1e9

# --------------------------------------------------------------------------- tables

#: GPUs of the fit table: (name, memory in bytes as marketed, dense bf16 TFLOP/s)
GPUS: tuple[tuple[str, float, float], ...] = (
    ("B200 192GB", 192e9, 2250.0),
    ("H200 141GB", 141e9, 989.0),
    ("H100 80GB", 80e9, 989.0),
    ("A100 80GB", 80e9, 312.0),
    ("A100 40GB", 40e9, 312.0),
    ("L40S 48GB", 48e9, 362.0),
    ("L4 24GB", 24e9, 121.0),
    ("RTX 4090 24GB", 24e9, 165.0),
    ("RTX 3090 24GB", 24e9, 71.0),
    ("T4 16GB", 16e9, 65.0),
)

#: plain precisions: (id, bytes per parameter, label)
PRECISIONS: tuple[tuple[str, float, str], ...] = (
    ("fp32", 4.0, "fp32"),
    ("bf16", 2.0, "bf16 / fp16"),
    ("fp8", 1.0, "fp8"),
    ("int8", 1.0, "int8"),
    ("int4", 0.5, "int4"),
)

KV_DTYPES = {"fp32": 4.0, "f32": 4.0, "float32": 4.0, "bf16": 2.0, "fp16": 2.0, "f16": 2.0,
             "float16": 2.0, "bfloat16": 2.0, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0,
             "int8": 1.0, "q8_0": 34 / 32, "int4": 0.5, "q4_0": 18 / 32, "fp4": 0.5}

#: bits per weight (scales included) of quant-schemes.md's must-have ids, used when the scheme
#: catalogue (paramkit.quant.schemes) cannot be imported
_FALLBACK_SCHEME_BITS = {"int8_tensor": 8.0, "int8_channel": None, "int8_g128": 8.125,
                         "int4_g128": 4.125, "int4_g128_asym": 4.15625, "q8_0": 8.5, "q4_0": 4.5,
                         "nf4": 4.5, "fp8_e4m3": 8.0}

# Training: bytes per parameter, mixed precision with Adam (activations excluded)
TRAIN_ROWS = (
    ("adam_mixed", 16, "2 bf16 weights + 2 bf16 grads + 4 fp32 master + 4 Adam m + 4 Adam v"),
    ("adam_mixed_fp32_grads", 18, "2 bf16 weights + 4 fp32 grads + 4 fp32 master + 4 m + 4 v"),
    ("adam_mixed_fp32_grads_bf16_copy", 20,
     "2 bf16 weights + 2 bf16 grads + 4 fp32 grads + 4 fp32 master + 4 m + 4 v"),
)

_ENCODER_ONLY = {"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta",
                 "deberta-v2", "mpnet", "camembert", "xlm", "ernie", "nomic_bert", "modernbert",
                 "vit", "dinov2", "clip_vision_model", "siglip_vision_model", "convnext", "resnet"}


# --------------------------------------------------------------------------- figure helpers

def fig(value: float | int | None, unit: str, formula: str, **extra: Any) -> dict:
    """One figure of the plan: its value, unit and the formula that produced it."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 63:
        value = int(value)   # whole byte / FLOP counts stay exact integers in JSON
    d = {"value": value, "unit": unit, "formula": formula}
    d.update(extra)
    return d


def fmt_int(n: float | int) -> str:
    if isinstance(n, float) and not n.is_integer():
        return f"{n:,.2f}"
    return f"{int(n):,}"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "?"
    if b >= 1e12:
        return f"{b / 1e12:.2f} TB"
    if b >= 1e9:
        return f"{b / 1e9:.2f} GB"
    if b >= 1e6:
        return f"{b / 1e6:.2f} MB"
    if b >= 1e3:
        return f"{b / 1e3:.2f} kB"
    return f"{b:g} B"


def fmt_num(x: float | None) -> str:
    """1.23e+21-style for big counts, e.g. FLOPs."""
    if x is None:
        return "?"
    return f"{x:.3g}" if abs(x) >= 1e6 else fmt_int(x)


def _fmt_bits(b: float) -> str:
    return f"{b:g}" if abs(b - round(b, 4)) < 1e-12 else f"{b:.4f}"


# --------------------------------------------------------------------------- the plan

@dataclass
class Plan:
    inputs: dict
    params: dict
    weights: list[dict]
    kv_cache: dict
    training: list[dict]
    gpu_fit: dict
    compute: dict
    assumptions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "inputs": dict(self.inputs),
            "params": dict(self.params),
            "weights": [dict(r) for r in self.weights],
            "kv_cache": dict(self.kv_cache),
            "training": [dict(r) for r in self.training],
            "gpu_fit": dict(self.gpu_fit),
            "compute": dict(self.compute),
            "assumptions": list(self.assumptions),
            "notes": list(self.notes),
        }

    def weights_bytes(self, precision: str) -> float | None:
        """Bytes of the weights at a precision or scheme id ("bf16", "int4", "nf4", "stored", ...)."""
        for r in self.weights:
            if r["id"] == precision:
                return r["bytes"]["value"]
        raise KeyError(f"no weights row {precision!r}; have {[r['id'] for r in self.weights]}")

    def gpus_needed(self, gpu: str, precision: str = "bf16") -> int | None:
        wanted = {r[0] for r in resolve_gpus(gpu)}
        for row in self.gpu_fit["rows"]:
            if row["gpu"] in wanted:
                return row["fit"][precision]["count"]
        raise KeyError(f"no GPU {gpu!r} in the fit table")


def _gpu_key(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def resolve_gpus(gpus: Iterable[str] | str | None) -> list[tuple[str, float, float]]:
    """GPU rows for names (case/space-insensitive substrings: "h100", "4090", "A100 40GB"), or a
    custom "NAME:GB" / "NAME=GB". None = the whole built-in table."""
    if gpus is None:
        return list(GPUS)
    if isinstance(gpus, str):
        gpus = [gpus]
    out: list[tuple[str, float, float]] = []
    for g in gpus:
        m = re.match(r"^\s*(.+?)\s*[:=]\s*([0-9]+(?:\.[0-9]+)?)\s*(?:GB)?\s*$", g, re.I)
        if m:
            out.append((m.group(1), float(m.group(2)) * GB, float("nan")))
            continue
        key = _gpu_key(g)
        hits = [row for row in GPUS if key in (_gpu_key(row[0]), _gpu_key(row[0].rsplit(" ", 1)[0]))]
        if not hits:
            hits = [row for row in GPUS if key and key in _gpu_key(row[0])]
        if not hits:
            raise ValueError(f"unknown GPU {g!r}; known: {', '.join(r[0] for r in GPUS)} "
                             "(or give NAME:GB)")
        for h in hits:
            if h not in out:
                out.append(h)
    return out


def _scheme_bits(row_len: int | None) -> list[tuple[str, float, str]]:
    """(scheme id, bits per weight incl. scales, how) for quant-schemes.md's must-have table."""
    try:
        from .quant.schemes import DEFAULT_SCHEMES, SCHEMES
    except Exception:  # noqa: BLE001 - the catalogue is optional here
        DEFAULT_SCHEMES, SCHEMES = tuple(_FALLBACK_SCHEME_BITS), None
    out = []
    for sid in DEFAULT_SCHEMES:
        if SCHEMES is not None:
            s = SCHEMES[sid]
            bits = s.bits_per_weight(row_len if s.granularity == "row" else None)
            if s.granularity == "row":
                how = (f"{s.bits} + {s.scale_bits}/{row_len} (one fp32 scale per row of {row_len})"
                       if row_len else f"{s.bits} (+ {s.scale_bits} bits per row)")
            elif s.granularity == "tensor":
                how = f"{s.bits} (one fp32 scale per tensor)"
            else:
                extra = s.scale_bits + s.zero_bits
                how = f"{s.bits} + {extra}/{s.group_size} (scale{' + zero' if s.zero_bits else ''} " \
                      f"per {s.group_size})"
        else:
            bits = _FALLBACK_SCHEME_BITS[sid]
            if bits is None:
                bits = 8 + (32 / row_len if row_len else 0)
            how = f"{_fmt_bits(bits)}"
        out.append((sid, float(bits), how))
    return out


def _row_len(counting: Counting, config: dict | None) -> int | None:
    h = config_get(config, "hidden_size", "n_embd", "d_model", "dim", "hidden_dim")
    if isinstance(h, int) and h > 0:
        return h
    best = None
    for r in counting.roles:
        if r.role == "parameter" and len(r.shape) == 2 and (best is None or r.stored_numel > best.stored_numel):
            best = r
    return best.shape[-1] if best is not None else None


# --------------------------------------------------------------------------- KV cache

def _layer_windows(config: dict, n_layers: int) -> tuple[list[int | None], str]:
    """Per layer: the sliding window (tokens) or None for full attention, and where that came from."""
    sw = config_get(config, "sliding_window", "attention_window")
    if isinstance(sw, list):
        sw = min(int(x) for x in sw) if sw else None
    lt = config_get(config, "layer_types")
    mt = str(config_get(config, "model_type", default="") or "")
    if isinstance(lt, list) and len(lt) == n_layers:
        if sw:
            return ([int(sw) if "sliding" in str(t) or "local" in str(t) else None for t in lt],
                    "layer_types + sliding_window")
        return [None] * n_layers, "layer_types (no sliding_window)"
    if not sw or (isinstance(sw, (int, float)) and sw <= 0):
        return [None] * n_layers, "no sliding_window"
    sw = int(sw)
    if config_get(config, "use_sliding_window") is False:
        return [None] * n_layers, "use_sliding_window is false"
    pattern = config_get(config, "sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 0:
        return ([sw if (i + 1) % pattern else None for i in range(n_layers)],
                f"sliding_window_pattern={pattern} (every {pattern}th layer global)")
    if mt.startswith("gemma2") or mt == "cohere2":
        return [sw if i % 2 == 0 else None for i in range(n_layers)], f"{mt}: alternating layers"
    mwl = config_get(config, "max_window_layers")
    if config_get(config, "use_sliding_window") is True and isinstance(mwl, int):
        return [sw if i >= mwl else None for i in range(n_layers)], f"layers ≥ max_window_layers={mwl}"
    return [sw] * n_layers, "sliding_window on every layer"


def kv_cache(config: dict | None, *, context: int, batch: int, kv_dtype: str) -> dict:
    """KV cache per token and for context × batch, from config.json."""
    if kv_dtype.lower() not in KV_DTYPES:
        raise ValueError(f"unknown kv dtype {kv_dtype!r}; one of {', '.join(sorted(KV_DTYPES))}")
    b = KV_DTYPES[kv_dtype.lower()]
    base = {"applicable": False, "kv_dtype": kv_dtype, "bytes_per_element": b,
            "context": context, "batch": batch, "per_token": None, "total": None}
    if not isinstance(config, dict):
        return dict(base, reason="no config.json beside the weights: layers / kv heads unknown")
    mt = str(config_get(config, "model_type", default="") or "").lower()
    if mt in _ENCODER_ONLY:
        return dict(base, reason=f"{mt} is an encoder-only model: no KV cache")
    layers = config_get(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers",
                        "num_decoder_layers")
    heads = config_get(config, "num_attention_heads", "n_head", "num_heads", "n_heads")
    hidden = config_get(config, "hidden_size", "n_embd", "d_model", "dim")
    if not isinstance(layers, int) or not isinstance(heads, int):
        return dict(base, reason="config.json lacks num_hidden_layers / num_attention_heads")
    kv = config_get(config, "num_key_value_heads", "num_kv_heads", "n_head_kv", "n_kv_heads",
                    "multi_query_group_num")
    kv_src = "num_key_value_heads"
    if kv is None:
        if config_get(config, "multi_query") is True:
            kv, kv_src = 1, "multi_query"
        else:
            kv, kv_src = heads, "= num_attention_heads (no GQA)"
    hd = config_get(config, "head_dim", "d_kv", "attention_head_size")
    hd_src = "head_dim"
    if not isinstance(hd, int):
        if not isinstance(hidden, int):
            return dict(base, reason="config.json lacks head_dim and hidden_size")
        hd, hd_src = hidden // heads, f"hidden_size {hidden} / {heads} heads"
    windows, win_src = _layer_windows(config, layers)
    kv_lora = config_get(config, "kv_lora_rank")
    rope = config_get(config, "qk_rope_head_dim")
    bstr = _fmt_bits(b)
    if isinstance(kv_lora, int) and kv_lora > 0:
        width = kv_lora + (rope or 0)
        per_layer_tok = width * b
        per_tok_desc = (f"{layers} layers × ({kv_lora} kv_lora_rank + {rope or 0} qk_rope_head_dim) "
                        f"× {bstr} B (MLA: one compressed latent per token, no per-head K/V)")
        kind = "mla"
    else:
        per_layer_tok = 2 * kv * hd * b
        per_tok_desc = f"2 × {layers} layers × {kv} kv heads × {hd} head_dim × {bstr} B"
        kind = "gqa" if kv < heads else ("mqa" if kv == 1 else "mha")
    per_token = per_layer_tok * layers
    full = sum(1 for w in windows if w is None)
    sliding = [w for w in windows if w is not None]
    cached = full * context + sum(min(context, w) for w in sliding)
    total = per_layer_tok * cached * batch
    if sliding:
        wset = sorted(set(sliding))
        win_txt = " + ".join(f"{sum(1 for w in sliding if w == x)} sliding layers × min({context}, {x})"
                             for x in wset)
        unit_desc_no_layers = (f"2 × {kv} kv heads × {hd} head_dim × {bstr} B" if kind != "mla"
                               else f"({kv_lora} + {rope or 0}) × {bstr} B")
        total_formula = (f"{unit_desc_no_layers} × ({full} full layers × {context} tokens + {win_txt})"
                         f" × batch {batch} = {fmt_int(total)} B")
    else:
        total_formula = f"{per_tok_desc} × {context} tokens × batch {batch} = {fmt_int(total)} B"
    return {
        "applicable": True, "kind": kind, "kv_dtype": kv_dtype, "bytes_per_element": b,
        "context": context, "batch": batch, "layers": layers, "attention_heads": heads,
        "kv_heads": kv, "kv_heads_source": kv_src, "head_dim": hd, "head_dim_source": hd_src,
        "kv_lora_rank": kv_lora if kind == "mla" else None,
        "full_attention_layers": full, "sliding_window_layers": len(sliding),
        "sliding_window": sorted(set(sliding)) or None, "windows_source": win_src,
        "per_token": fig(per_token, "bytes", f"{per_tok_desc} = {fmt_int(per_token)} B"
                         + (" (before the sliding-window cap)" if sliding else "")),
        "total": fig(total, "bytes", total_formula),
        "reason": None,
    }


# --------------------------------------------------------------------------- LoRA shapes

_LLAMA_LINEARS = {
    "q_proj": ("hidden", "q"), "k_proj": ("hidden", "kv"), "v_proj": ("hidden", "kv"),
    "o_proj": ("q", "hidden"), "gate_proj": ("hidden", "inter"), "up_proj": ("hidden", "inter"),
    "down_proj": ("inter", "hidden"), "w1": ("hidden", "inter"), "w3": ("hidden", "inter"),
    "w2": ("inter", "hidden"),
}


def _linear_in_out(r, config: dict | None) -> tuple[int, int] | None:
    """(in, out) of a linear weight, logical dims of packed ones included; None if unknown."""
    if r.role == "parameter":
        return (r.shape[1], r.shape[0]) if len(r.shape) == 2 else None
    if r.role != "packed_parameter" or len(r.shape) != 2:
        return None
    f = r.pack_factor
    name = r.name
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "qweight":
        if r.quant_method == "awq":                    # [in, out/f]
            return r.shape[0], int(r.shape[1] * f)
        return int(r.shape[0] * f), r.shape[1]         # GPTQ [in/f, out]
    if leaf == "weight_packed":                          # [out, in/f]
        return int(r.shape[1] * f), r.shape[0]
    if f == 1:
        return r.shape[1], r.shape[0]
    # bitsandbytes 4-bit: [n/2, 1] — recover from config.json by the module name
    mod = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
    if mod in _LLAMA_LINEARS and isinstance(config, dict):
        h = config_get(config, "hidden_size")
        nh = config_get(config, "num_attention_heads")
        kv = config_get(config, "num_key_value_heads", default=nh)
        hd = config_get(config, "head_dim") or (h // nh if h and nh else None)
        inter = config_get(config, "intermediate_size")
        dims = {"hidden": h, "q": (nh * hd) if nh and hd else None,
                "kv": (kv * hd) if kv and hd else None, "inter": inter}
        a, b = (dims[x] for x in _LLAMA_LINEARS[mod])
        if a and b and a * b == r.logical_numel:
            return a, b
    return None


def lora_params(counting: Counting, config: dict | None, rank: int) -> tuple[int, int, int, int]:
    """(adapter params, linear weights covered, their logical params, linear weights of unknown
    shape) for rank-``rank`` LoRA on every 2-D linear weight inside the numbered blocks
    (attention and MLP/experts; routers, embeddings and the lm_head excluded)."""
    total = covered = covered_params = unknown = 0
    for r in counting.roles:
        if r.role not in ("parameter", "packed_parameter") or "router" in r.flags:
            continue
        if not re.search(r"(^|\.)\d+\.", r.name):
            continue
        leaf = r.name.rsplit(".", 1)[-1]
        if leaf not in ("weight", "qweight", "weight_packed"):
            continue
        if r.role == "parameter" and len(r.shape) != 2:
            continue
        io = _linear_in_out(r, config)
        if io is None:
            unknown += 1
            continue
        total += rank * (io[0] + io[1])
        covered += 1
        covered_params += r.logical_numel
    return total, covered, covered_params, unknown


# --------------------------------------------------------------------------- embeddings (FLOPs)

#: modules whose weight is a lookup table (token, position, token-type embeddings, T5's relative
#: position bias): indexed, not multiplied, so they cost no FLOPs per token; Kaplan et al. (2020)
#: leave them out of the parameter count N of C ≈ 2N per token. Also any module named *_embedding(s).
#: (GPT-NeoX's embed_out is the output projection, a matmul: not a lookup.)
_LOOKUP_MODULES = frozenset({"wte", "wpe", "shared", "tok_embeddings", "token_embd", "embed_in", "embed_tokens",
                             "embed_positions", "embedding", "embeddings", "relative_attention_bias"})
_LOOKUP_SUFFIXES = ("_embeddings", "_embedding")


def embedding_params(counting: Counting) -> tuple[int, list[str]]:
    """(parameters, names) of the counted 2-D lookup-table weights (see _LOOKUP_MODULES)."""
    total, names = 0, []
    for r in counting.roles:
        if not r.counted or r.role not in ("parameter", "packed_parameter") or r.expert or len(r.shape) != 2:
            continue
        parts = r.name.rsplit(".", 2)
        if len(parts) < 2 or parts[-1] != "weight":
            continue
        if parts[-2] in _LOOKUP_MODULES or parts[-2].endswith(_LOOKUP_SUFFIXES):
            total += r.logical_numel
            names.append(r.name)
    return total, names


# --------------------------------------------------------------------------- main entry

def plan(counting: Counting, config: dict | None = None, *, context: int = 8192, batch: int = 1,
         kv_dtype: str = "bf16", gpus: Iterable[str] | str | None = None, overhead: float = 0.10,
         lora_rank: int = 16, train_tokens: float | None = None, mfu: float = 0.40) -> Plan:
    """What it takes to run or train the counted model.

    ``overhead``: below 1, the fraction of each GPU's memory reserved for the CUDA context,
    activations and fragmentation (default 10%); from 1 up, bytes reserved per GPU.
    ``train_tokens``: tokens for the training-compute figure (default: Chinchilla, 20 × params).
    """
    if context < 1 or batch < 1:
        raise ValueError("context and batch must be positive")
    if config is None:
        config = getattr(counting, "config", None)
    notes: list[str] = []
    P = counting.total_params
    active = counting.active_params
    moe = bool(counting.moe.get("detected"))
    inputs = {"context": context, "batch": batch, "kv_dtype": kv_dtype, "overhead": overhead,
              "lora_rank": lora_rank, "train_tokens": train_tokens, "mfu": mfu,
              "gpus": None if gpus is None else ([gpus] if isinstance(gpus, str) else list(gpus))}
    params = {
        "total": fig(P, "params", f"{fmt_int(P)} logical parameters (counted from the headers"
                     + (", packed quantized weights unpacked" if counting.packed_logical_params else "")
                     + ")"),
        "active": fig(active, "params", counting.active_params_reason),
        "buffers": fig(counting.buffer_elements, "elements", "integer/bool and mask tensors, not parameters"),
        "moe": moe,
    }
    emb, emb_names = embedding_params(counting)
    params["embedding"] = fig(emb, "params", "lookup tables (token, position and token-type embeddings): "
                              + (" + ".join(emb_names[:4]) + (f" + {len(emb_names) - 4} more" if len(emb_names) > 4
                                                              else "") if emb_names else "none found")
                              + f" = {fmt_int(emb)}")
    params["non_embedding"] = fig(P - emb, "params", f"{fmt_int(P)} − {fmt_int(emb)} embedding params = "
                                                     f"{fmt_int(P - emb)}")

    # weights -------------------------------------------------------------------------
    weights: list[dict] = []
    weights.append({
        "id": "stored", "label": "as stored", "bits_per_weight": (8 * counting.bytes_total / P) if P else None,
        "bytes": fig(counting.bytes_total, "bytes",
                     f"sum of the tensor byte lengths in the file(s) = {fmt_int(counting.bytes_total)} B"
                     + (" (parameters, buffers and quantization state)"
                        if counting.buffer_elements or counting.quant_state_elements else "")),
    })
    for pid, bpp, label in PRECISIONS:
        v = P * bpp
        weights.append({"id": pid, "label": label, "bits_per_weight": bpp * 8,
                        "bytes": fig(v, "bytes", f"{fmt_int(P)} params × {_fmt_bits(bpp)} B = "
                                                  f"{fmt_int(v)} B ({fmt_bytes(v)})")})
    row_len = _row_len(counting, config)
    for sid, bits, how in _scheme_bits(row_len):
        v = P * bits / 8
        weights.append({"id": sid, "label": sid, "bits_per_weight": bits, "scheme": True,
                        "bytes": fig(v, "bytes", f"{fmt_int(P)} params × {_fmt_bits(bits)} bits / 8 "
                                                  f"= {fmt_int(v)} B ({fmt_bytes(v)}); bits/weight = {how}")})

    # KV cache ------------------------------------------------------------------------
    kv = kv_cache(config, context=context, batch=batch, kv_dtype=kv_dtype)
    kv_total = kv["total"]["value"] if kv.get("applicable") else 0

    # training ------------------------------------------------------------------------
    training: list[dict] = []
    for tid, bpp, how in TRAIN_ROWS:
        v = P * bpp
        training.append({"id": tid, "label": f"full fine-tune, Adam mixed precision ({bpp} B/param)",
                         "bytes": fig(v, "bytes", f"{fmt_int(P)} params × {bpp} B ({how}) = "
                                                   f"{fmt_int(v)} B ({fmt_bytes(v)}); activations excluded")})
    n_lora, covered, covered_params, unknown = lora_params(counting, config, lora_rank)
    if unknown:
        notes.append(f"{unknown} linear weights of unknown logical shape left out of the LoRA "
                     "adapter estimate")
    other = P - covered_params
    quantized_ckpt = counting.packed_logical_params > 0
    if quantized_ckpt:
        base = counting.bytes_total
        base_formula = f"frozen quantized base as stored {fmt_int(base)} B"
    else:
        base = covered_params * 4.5 / 8 + other * 2
        base_formula = (f"frozen base: {fmt_int(covered_params)} linear params × 4.5 bits (nf4) / 8 + "
                        f"{fmt_int(other)} other params × 2 B")
    lora_v = base + n_lora * 16
    training.append({
        "id": "lora_4bit", "label": f"LoRA r={lora_rank} on a frozen 4-bit base (QLoRA)",
        "adapter_params": fig(n_lora, "params", f"{lora_rank} × Σ(in + out) over {covered} linear "
                                                f"weights in the blocks = {fmt_int(n_lora)}"),
        "bytes": fig(lora_v, "bytes", f"{base_formula} + {fmt_int(n_lora)} adapter params × 16 B "
                                      f"(Adam mixed precision) = {fmt_int(lora_v)} B ({fmt_bytes(lora_v)}); "
                                      "activations excluded")})
    lora16 = P * 2 + n_lora * 16
    training.append({
        "id": "lora_bf16", "label": f"LoRA r={lora_rank} on a frozen bf16 base",
        "adapter_params": fig(n_lora, "params", f"{lora_rank} × Σ(in + out) = {fmt_int(n_lora)}"),
        "bytes": fig(lora16, "bytes", f"{fmt_int(P)} params × 2 B + {fmt_int(n_lora)} adapter params × 16 B "
                                      f"= {fmt_int(lora16)} B ({fmt_bytes(lora16)}); activations excluded")})

    # GPU fit -------------------------------------------------------------------------
    if overhead < 0:
        raise ValueError("overhead must be >= 0")
    rows = []
    fit_needs = {}
    for w in weights:
        if w["id"] in ("stored", "bf16", "fp8", "int8", "int4"):
            fit_needs[w["id"]] = (w["bytes"]["value"] + kv_total, w["bytes"]["value"])
    fit_needs["train_adam"] = (training[0]["bytes"]["value"], training[0]["bytes"]["value"])
    fit_needs["train_qlora"] = (lora_v, lora_v)
    kv_txt = f" + {fmt_bytes(kv_total)} KV cache" if kv_total else ""
    if overhead < 1:
        ov_fig = fig(overhead, "fraction", f"{overhead:.0%} of each GPU's memory reserved for the CUDA "
                                           "context, activations and fragmentation")
    else:
        ov_fig = fig(overhead, "bytes", f"{fmt_bytes(overhead)} reserved per GPU for the CUDA context, "
                                        "activations and fragmentation")
    for name, mem, tflops in resolve_gpus(gpus):
        usable = mem * (1 - overhead) if overhead < 1 else mem - overhead
        ov_txt = f"{mem / GB:g} GB × (1 − {overhead:.0%})" if overhead < 1 else \
            f"({mem / GB:g} GB − {fmt_bytes(overhead)})"
        fit = {}
        for key, (need, wbytes) in fit_needs.items():
            if usable <= 0:
                fit[key] = {"count": None, "fits": False, "need": need,
                            "formula": f"overhead leaves no memory on {name}"}
                continue
            count = max(1, math.ceil(need / usable - 1e-12))
            what = (f"{fmt_bytes(wbytes)} weights{kv_txt}" if not key.startswith("train")
                    else f"{fmt_bytes(need)} training state")
            fit[key] = {"count": count, "fits": count == 1, "need": need,
                        "formula": f"ceil(({what}) / ({ov_txt} = {usable / GB:.1f} GB usable)) = {count}"}
        rows.append({"gpu": name, "memory": fig(mem, "bytes", f"{mem / GB:g} GB (decimal, as marketed)"),
                     "usable": fig(usable, "bytes", f"{ov_txt} = {usable / GB:.1f} GB"),
                     "fit": fit})
    gpu_fit = {"overhead": ov_fig, "needs": {k: v[0] for k, v in fit_needs.items()},
               "kv_cache_included": kv_total, "rows": rows,
               "method": "GPUs needed = ceil((weights + KV cache) / usable memory per GPU), the model "
                         "split evenly across them (tensor/pipeline parallel)"}

    # compute -------------------------------------------------------------------------
    act = active if active is not None else P
    act_txt = "active" if moe and active is not None else ("total (active unknown)" if moe else "")
    if moe and active is None:
        notes.append("MoE active parameters unknown: FLOPs use the total (an upper bound)")
    chin = 20 * P
    tokens = train_tokens if train_tokens is not None else chin
    train_flops = 6 * act * tokens
    infer = 2 * act
    act_params = f"{fmt_int(act)} {act_txt + ' ' if act_txt else ''}params"
    act_ne = max(act - emb, 0)
    compute = {
        "inference_flops_per_token_non_embedding": fig(
            2 * act_ne, "FLOP", f"2 × ({act_params} − {fmt_int(emb)} embedding params) = 2 × {fmt_int(act_ne)} = "
                                f"{fmt_num(2 * act_ne)} FLOP/token (Kaplan et al. 2020: embeddings are lookups, "
                                "no multiply-adds; attention over the context excluded)",
            label="2 × non-embedding parameters (Kaplan et al.)"),
        "inference_flops_per_token": fig(infer, "FLOP", f"2 × {act_params} = {fmt_num(infer)} FLOP/token "
                                                         "(embedding lookups counted as if multiplied; attention "
                                                         "over the context excluded)",
                                         label="2 × all parameters"),
        "chinchilla_tokens": fig(chin, "tokens", f"20 × {fmt_int(P)} params = {fmt_num(chin)} tokens"),
        "training_tokens": fig(tokens, "tokens", "Chinchilla-optimal (20 × params)" if train_tokens is None
                               else "given"),
        "training_flops": fig(train_flops, "FLOP", f"6 × {act_params} (all parameters, embeddings included: the "
                                                   "Chinchilla convention of the 20 tokens/param rule) × "
                                                   f"{fmt_num(tokens)} tokens = {fmt_num(train_flops)} FLOP; "
                                                   f"6 × non-embedding would give {fmt_num(6 * act_ne * tokens)}",
                              label="6 × all parameters × tokens"),
    }
    h100 = next(g for g in GPUS if g[0].startswith("H100"))
    gpu_hours = train_flops / (h100[2] * 1e12 * mfu) / 3600
    compute["training_h100_hours"] = fig(gpu_hours, "GPU-hours",
                                         f"{fmt_num(train_flops)} training FLOP (6 × all parameters × tokens) / "
                                         f"({h100[2]:g} TFLOP/s bf16 dense × "
                                         f"{mfu:.0%} MFU) / 3600 = "
                                         + (f"{gpu_hours:,.0f}" if gpu_hours >= 10 else f"{gpu_hours:.3g}")
                                         + " H100-hours", label="from the training FLOPs")

    assumptions = [
        "GB = 1e9 bytes; GPU memory as marketed (80 GB = 80e9 B)",
        "weights memory = parameters × bytes per parameter; buffers and quantization state are "
        "only in the 'as stored' row",
        "scheme rows apply the scheme's bits/weight (scales and zero points included) to every parameter",
        "training memory excludes activations (they depend on batch, sequence length and checkpointing)",
        "KV cache = 2 (K and V) × layers × kv heads × head_dim × bytes × cached tokens × batch; "
        "sliding-window layers cache at most the window; MLA caches one latent per token",
        "inference FLOPs per token: 2 × non-embedding (active) parameters (Kaplan et al. 2020: embedding "
        "lookups cost no multiply-adds) and 2 × all (active) parameters; training FLOPs and H100-hours use "
        "6 × all (active) parameters × tokens (the Chinchilla convention, Hoffmann et al. 2022)",
    ]
    if not kv.get("applicable"):
        notes.append(f"KV cache not included: {kv.get('reason')}")
    return Plan(inputs=inputs, params=params, weights=weights, kv_cache=kv, training=training,
                gpu_fit=gpu_fit, compute=compute, assumptions=assumptions, notes=notes)


__all__ = ["plan", "Plan", "kv_cache", "fig", "GPUS", "PRECISIONS", "KV_DTYPES", "resolve_gpus",
           "lora_params", "embedding_params", "fmt_bytes"]
