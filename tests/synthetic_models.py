"""Synthetic checkpoints with the real tensor names, dtypes and shapes of published models (from
their config.json), written as sparse safetensors files (header + hole) so exact counts are cheap."""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field

from paramkit.dtypes import DTYPES
from paramkit.table import TensorInfo, TensorTable

Spec = list[tuple[str, str, tuple[int, ...]]]   # (name, dtype, shape)


@dataclass
class Model:
    name: str
    tensors: Spec
    config: dict | None
    index_metadata: dict | None = None
    extra_files: dict[str, str] = field(default_factory=dict)


def nbytes_of(dtype: str, shape) -> int:
    n = 1
    for d in shape:
        n *= d
    bits = n * DTYPES[dtype].bits
    assert bits % 8 == 0, (dtype, shape)
    return bits // 8


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# --------------------------------------------------------------------------- writing / reading

def write_sparse_safetensors(path: str, tensors: Spec, metadata: dict | None = None,
                             data: dict[str, bytes] | None = None) -> int:
    """Write the header, then extend the file to its full length without writing the data (a hole).
    Tensors named in ``data`` get those bytes written. Returns the file length."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    off = 0
    spans = {}
    for name, dtype, shape in tensors:
        nb = nbytes_of(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nb]}
        spans[name] = (off, nb)
        off += nb
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, payload in (data or {}).items():
            o, nb = spans[name]
            assert len(payload) == nb, name
            f.seek(8 + len(hb) + o)
            f.write(payload)
    os.truncate(path, 8 + len(hb) + off)
    return 8 + len(hb) + off


def write_model(directory: str, model: Model, shards: int = 1, *, config: bool = True,
                data: dict[str, bytes] | None = None) -> str:
    """Write ``model`` into ``directory`` (config.json + one file or an index and ``shards`` shards).
    Returns the directory."""
    os.makedirs(directory, exist_ok=True)
    if config and model.config is not None:
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(model.config, f)
    if shards <= 1:
        write_sparse_safetensors(os.path.join(directory, "model.safetensors"), model.tensors,
                                 {"format": "pt"}, data)
    else:
        per = -(-len(model.tensors) // shards)
        weight_map = {}
        for i in range(shards):
            part = model.tensors[i * per:(i + 1) * per]
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            write_sparse_safetensors(os.path.join(directory, fname), part, {"format": "pt"},
                                     {k: v for k, v in (data or {}).items()
                                      if any(k == n for n, _, _ in part)})
            for n, _, _ in part:
                weight_map[n] = fname
        meta = model.index_metadata if model.index_metadata is not None else {
            "total_size": sum(nbytes_of(d, s) for _, d, s in model.tensors)}
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": meta, "weight_map": weight_map}, f)
    for fname, text in model.extra_files.items():
        with open(os.path.join(directory, fname), "w") as f:
            f.write(text)
    return directory


def _read_header(path: str) -> tuple[dict, int]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n


def minimal_open_table(path: str) -> TensorTable:
    """A small header reader for when paramkit.formats.open_table is not there yet (no validation)."""
    path = os.path.abspath(path)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    index = os.path.join(directory, "model.safetensors.index.json")
    index_meta = None
    if os.path.isdir(path) and os.path.exists(index):
        with open(index) as f:
            idx = json.load(f)
        index_meta = idx.get("metadata")
        files = []
        for fn in idx["weight_map"].values():
            full = os.path.join(directory, fn)
            if full not in files:
                files.append(full)
    elif os.path.isdir(path):
        files = sorted(os.path.join(directory, f) for f in os.listdir(directory)
                       if f.endswith(".safetensors"))
    else:
        files = [path]
    tensors: list[TensorInfo] = []
    metadata: dict = {}
    for fp in files:
        header, start = _read_header(fp)
        metadata.update(header.pop("__metadata__", {}) or {})
        for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            b, en = e["data_offsets"]
            tensors.append(TensorInfo(name, e["dtype"], tuple(e["shape"]), fp, start + b, en - b,
                                      numel(e["shape"])))
    cfg = None
    cp = os.path.join(directory, "config.json")
    if os.path.exists(cp):
        with open(cp) as f:
            cfg = json.load(f)
    return TensorTable(path=path, format="safetensors", files=files, tensors=tensors,
                       metadata=metadata, index_metadata=index_meta, config=cfg)


def open_table(path: str) -> TensorTable:
    """paramkit.formats.open_table when it exists, else the minimal reader above."""
    try:
        from paramkit.formats import open_table as real
    except ImportError:
        return minimal_open_table(path)
    return real(path)


def has_real_reader() -> bool:
    try:
        from paramkit.formats import open_table  # noqa: F401
    except ImportError:
        return False
    return True


def table_of(model: Model, path: str = "<memory>") -> TensorTable:
    """A TensorTable built directly (no file): offsets are consecutive in one virtual file."""
    off = 0
    infos = []
    for name, dtype, shape in model.tensors:
        nb = nbytes_of(dtype, shape)
        infos.append(TensorInfo(name, dtype, tuple(shape), path, off, nb, numel(shape)))
        off += nb
    return TensorTable(path=path, format="safetensors", files=[path], tensors=infos,
                       index_metadata=model.index_metadata, config=model.config)


# --------------------------------------------------------------------------- published configs

LLAMA3_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 8192,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0.dev0", "use_cache": True, "vocab_size": 128256,
}
LLAMA31_8B_CONFIG = dict(LLAMA3_8B_CONFIG, max_position_embeddings=131072, rope_scaling={
    "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    transformers_version="4.43.0.dev0")
LLAMA32_1B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256,
}
MIXTRAL_8X7B_CONFIG = {
    "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
    "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
    "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
    "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.36.0.dev0", "use_cache": True, "vocab_size": 32000,
}
GPT2_CONFIG = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768,
    "n_head": 12, "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1,
    "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
    "summary_type": "cls_index", "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}
ROBERTA_BASE_CONFIG = {
    "architectures": ["RobertaForMaskedLM"], "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 514, "model_type": "roberta",
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
    "type_vocab_size": 1, "vocab_size": 50265,
}
MINILM_L6_CONFIG = {
    "_name_or_path": "nreimers/MiniLM-L6-H384-uncased", "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": False, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 384, "initializer_range": 0.02,
    "intermediate_size": 1536, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
    "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 6, "pad_token_id": 0,
    "position_embedding_type": "absolute", "transformers_version": "4.8.2", "type_vocab_size": 2,
    "use_cache": True, "vocab_size": 30522,
}
BNB_4BIT_QUANT_CONFIG = {
    "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True, "llm_int8_enable_fp32_cpu_offload": False,
    "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": None,
    "llm_int8_threshold": 6.0, "load_in_4bit": True, "load_in_8bit": False,
    "quant_method": "bitsandbytes",
}
GPTQ_QUANT_CONFIG = {
    "bits": 4, "checkpoint_format": "gptq", "damp_percent": 0.01, "desc_act": True,
    "group_size": 128, "model_file_base_name": None, "model_name_or_path": None,
    "quant_method": "gptq", "static_groups": False, "sym": True, "true_sequential": True,
}
AWQ_QUANT_CONFIG = {"bits": 4, "group_size": 128, "modules_to_not_convert": None,
                    "quant_method": "awq", "version": "gemm", "zero_point": True}
COMPRESSED_W4A16_CONFIG = {
    "config_groups": {"group_0": {
        "input_activations": None, "output_activations": None, "targets": ["Linear"],
        "weights": {"actorder": None, "block_structure": None, "dynamic": False,
                    "group_size": 128, "num_bits": 4, "observer": "minmax",
                    "observer_kwargs": {}, "strategy": "group", "symmetric": True,
                    "type": "int"}}},
    "format": "pack-quantized", "global_compression_ratio": 2.6, "ignore": ["lm_head"],
    "kv_cache_scheme": None, "quant_method": "compressed-tensors",
    "quantization_status": "compressed",
}
GPT_OSS_20B_CONFIG = {
    "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0,
    "eos_token_id": 200002, "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 2880, "initial_context_length": 4096, "initializer_range": 0.02,
    "intermediate_size": 2880, "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 131072, "model_type": "gpt_oss", "num_attention_heads": 64,
    "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 8,
    "num_local_experts": 32, "output_router_logits": False, "pad_token_id": 199999,
    "quantization_config": {"modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
        "quant_method": "mxfp4"},
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                     "original_max_position_embeddings": 4096, "rope_type": "yarn",
                     "truncate": False},
    "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128,
    "swiglu_limit": 7.0, "tie_word_embeddings": False, "transformers_version": "4.55.0.dev0",
    "use_cache": True, "vocab_size": 201088,
}
QWEN15_MOE_A27B_CONFIG = {
    "architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "decoder_sparse_step": 1, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 5632, "max_position_embeddings": 8192,
    "max_window_layers": 21, "model_type": "qwen2_moe", "moe_intermediate_size": 1408,
    "norm_topk_prob": False, "num_attention_heads": 16, "num_experts": 60,
    "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 16,
    "output_router_logits": False, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.001, "shared_expert_intermediate_size": 5632,
    "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}


# --------------------------------------------------------------------------- builders

def _llama_layers(cfg: dict, dtype: str, linear) -> Spec:
    h = cfg["hidden_size"]
    inter = cfg["intermediate_size"]
    nh = cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // nh
    out: Spec = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out.append((f"{p}.input_layernorm.weight", dtype, (h,)))
        out += linear(f"{p}.mlp.down_proj", inter, h)
        out += linear(f"{p}.mlp.gate_proj", h, inter)
        out += linear(f"{p}.mlp.up_proj", h, inter)
        out.append((f"{p}.post_attention_layernorm.weight", dtype, (h,)))
        out += linear(f"{p}.self_attn.k_proj", h, kv * hd)
        out += linear(f"{p}.self_attn.o_proj", nh * hd, h)
        out += linear(f"{p}.self_attn.q_proj", h, nh * hd)
        out += linear(f"{p}.self_attn.v_proj", h, kv * hd)
    return out


def _llama(cfg: dict, dtype: str, linear=None, *, name: str, lm_head: bool | None = None,
           head_dtype: str | None = None) -> Model:
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    if linear is None:
        def linear(prefix, fan_in, fan_out):
            return [(f"{prefix}.weight", dtype, (fan_out, fan_in))]
    t: Spec = [("model.embed_tokens.weight", head_dtype or dtype, (v, h))]
    t += _llama_layers(cfg, dtype, linear)
    t.append(("model.norm.weight", dtype, (h,)))
    if lm_head if lm_head is not None else not cfg.get("tie_word_embeddings", False):
        t.append(("lm_head.weight", head_dtype or dtype, (v, h)))
    return Model(name, t, cfg)


def llama3_8b() -> Model:
    m = _llama(LLAMA3_8B_CONFIG, "BF16", name="Meta-Llama-3-8B")
    m.index_metadata = {"total_size": 16060522496}
    return m


def llama31_8b() -> Model:
    return _llama(LLAMA31_8B_CONFIG, "BF16", name="Llama-3.1-8B")


LLAMA3_70B_CONFIG = dict(LLAMA3_8B_CONFIG, hidden_size=8192, intermediate_size=28672,
                         num_attention_heads=64, num_hidden_layers=80)


def llama3_70b() -> Model:
    return _llama(LLAMA3_70B_CONFIG, "BF16", name="Meta-Llama-3-70B")


def llama32_1b(*, with_lm_head: bool = False) -> Model:
    """Llama-3.2-1B: tied; the published file has no lm_head.weight."""
    return _llama(LLAMA32_1B_CONFIG, "BF16", name="Llama-3.2-1B", lm_head=with_lm_head)


def llama31_8b_bnb4() -> Model:
    """unsloth/meta-llama-3.1-8b-bnb-4bit layout: NF4 with double quantisation."""
    def linear(prefix, fan_in, fan_out):
        n = fan_in * fan_out
        w = f"{prefix}.weight"
        return [(w, "U8", (n // 2, 1)),
                (f"{w}.absmax", "U8", (n // 64,)),
                (f"{w}.nested_absmax", "F32", (n // 64 // 256,)),
                (f"{w}.nested_quant_map", "F32", (256,)),
                (f"{w}.quant_map", "F32", (16,)),
                (f"{w}.quant_state.bitsandbytes__nf4", "U8", (122,))]
    cfg = dict(LLAMA31_8B_CONFIG, quantization_config=dict(BNB_4BIT_QUANT_CONFIG))
    return _llama(cfg, "BF16", linear, name="meta-llama-3.1-8b-bnb-4bit")


def llama_bnb8(cfg: dict | None = None) -> Model:
    """bitsandbytes LLM.int8 serialisation: I8 weight + F32 SCB + U8 weight_format."""
    base = cfg or LLAMA32_1B_CONFIG

    def linear(prefix, fan_in, fan_out):
        return [(f"{prefix}.weight", "I8", (fan_out, fan_in)), (f"{prefix}.SCB", "F32", (fan_out,)),
                (f"{prefix}.weight_format", "U8", ())]
    qc = {"load_in_8bit": True, "load_in_4bit": False, "quant_method": "bitsandbytes",
          "llm_int8_threshold": 6.0}
    return _llama(dict(base, quantization_config=qc), "F16", linear, name="llama-bnb-8bit")


def llama31_8b_gptq(*, config: bool = True, bits: int = 4, group: int = 128) -> Model:
    """A GPTQ w4a16 (auto-gptq / gptqmodel "gptq" format) Llama-3.1-8B: fp16 embed/lm_head/norms."""
    pf = 32 // bits

    def linear(prefix, fan_in, fan_out):
        return [(f"{prefix}.g_idx", "I32", (fan_in,)),
                (f"{prefix}.qweight", "I32", (fan_in // pf, fan_out)),
                (f"{prefix}.qzeros", "I32", (fan_in // group, fan_out // pf)),
                (f"{prefix}.scales", "F16", (fan_in // group, fan_out))]
    cfg = dict(LLAMA31_8B_CONFIG, torch_dtype="float16",
               quantization_config=dict(GPTQ_QUANT_CONFIG, bits=bits, group_size=group))
    m = _llama(cfg, "F16", linear, name=f"Llama-3.1-8B-GPTQ-INT{bits}")
    if not config:
        m.config = None
    return m


def llama31_8b_awq(*, config: bool = True) -> Model:
    def linear(prefix, fan_in, fan_out):
        return [(f"{prefix}.qweight", "I32", (fan_in, fan_out // 8)),
                (f"{prefix}.qzeros", "I32", (fan_in // 128, fan_out // 8)),
                (f"{prefix}.scales", "F16", (fan_in // 128, fan_out))]
    cfg = dict(LLAMA31_8B_CONFIG, torch_dtype="float16", quantization_config=dict(AWQ_QUANT_CONFIG))
    m = _llama(cfg, "F16", linear, name="Llama-3.1-8B-AWQ-INT4")
    if not config:
        m.config = None
    return m


def llama31_8b_w4a16_compressed() -> Model:
    """neuralmagic-style compressed-tensors pack-quantized w4a16 (weight_packed I32 [out, in/8])."""
    def linear(prefix, fan_in, fan_out):
        return [(f"{prefix}.weight_packed", "I32", (fan_out, fan_in // 8)),
                (f"{prefix}.weight_scale", "BF16", (fan_out, fan_in // 128)),
                (f"{prefix}.weight_shape", "I64", (2,))]
    cfg = dict(LLAMA31_8B_CONFIG, quantization_config=dict(COMPRESSED_W4A16_CONFIG))
    return _llama(cfg, "BF16", linear, name="Llama-3.1-8B-quantized.w4a16")


def llama31_8b_fp8() -> Model:
    """compressed-tensors float-quantized FP8 (per-channel weight_scale, static input_scale)."""
    def linear(prefix, fan_in, fan_out):
        return [(f"{prefix}.input_scale", "BF16", (1,)),
                (f"{prefix}.weight", "F8_E4M3", (fan_out, fan_in)),
                (f"{prefix}.weight_scale", "BF16", (fan_out, 1))]
    qc = {"config_groups": {"group_0": {"input_activations": {"num_bits": 8, "type": "float"},
                                        "targets": ["Linear"],
                                        "weights": {"num_bits": 8, "strategy": "channel",
                                                    "type": "float"}}},
          "format": "float-quantized", "ignore": ["lm_head"], "quant_method": "compressed-tensors"}
    cfg = dict(LLAMA31_8B_CONFIG, quantization_config=qc)
    return _llama(cfg, "BF16", linear, name="Llama-3.1-8B-FP8")


def llama31_8b_nvfp4(*, config: bool = True) -> Model:
    """NVIDIA ModelOpt NVFP4: U8 weight [out, in/2], F8_E4M3 weight_scale per 16, F32 weight_scale_2."""
    def linear(prefix, fan_in, fan_out):
        return [(f"{prefix}.input_scale", "F32", ()), (f"{prefix}.weight", "U8", (fan_out, fan_in // 2)),
                (f"{prefix}.weight_scale", "F8_E4M3", (fan_out, fan_in // 16)),
                (f"{prefix}.weight_scale_2", "F32", ())]
    qc = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
          "exclude_modules": ["lm_head"]}
    m = _llama(dict(LLAMA31_8B_CONFIG, quantization_config=qc), "BF16", linear,
               name="Llama-3.1-8B-NVFP4")
    if not config:
        m.config = None
    return m


def mixtral_8x7b() -> Model:
    cfg = MIXTRAL_8X7B_CONFIG
    h, v, inter = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    kvd = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])
    t: Spec = [("model.embed_tokens.weight", "BF16", (v, h))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        for e in range(cfg["num_local_experts"]):
            q = f"{p}.block_sparse_moe.experts.{e}"
            t += [(f"{q}.w1.weight", "BF16", (inter, h)), (f"{q}.w2.weight", "BF16", (h, inter)),
                  (f"{q}.w3.weight", "BF16", (inter, h))]
        t += [(f"{p}.block_sparse_moe.gate.weight", "BF16", (cfg["num_local_experts"], h)),
              (f"{p}.input_layernorm.weight", "BF16", (h,)),
              (f"{p}.post_attention_layernorm.weight", "BF16", (h,)),
              (f"{p}.self_attn.k_proj.weight", "BF16", (kvd, h)),
              (f"{p}.self_attn.o_proj.weight", "BF16", (h, h)),
              (f"{p}.self_attn.q_proj.weight", "BF16", (h, h)),
              (f"{p}.self_attn.v_proj.weight", "BF16", (kvd, h))]
    t += [("model.norm.weight", "BF16", (h,)), ("lm_head.weight", "BF16", (v, h))]
    return Model("Mixtral-8x7B-v0.1", t, cfg, index_metadata={"total_size": 93405585408})


def gpt_oss_20b() -> Model:
    """openai/gpt-oss-20b: MXFP4 stacked experts (_blocks/_scales), sliding/full attention layers."""
    cfg = GPT_OSS_20B_CONFIG
    h, v, inter, e = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"], cfg["num_local_experts"]
    nh, kv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    t: Spec = [("model.embed_tokens.weight", "BF16", (v, h))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        t += [(f"{p}.input_layernorm.weight", "BF16", (h,)),
              (f"{p}.mlp.experts.down_proj_bias", "BF16", (e, h)),
              (f"{p}.mlp.experts.down_proj_blocks", "U8", (e, h, inter // 32, 16)),
              (f"{p}.mlp.experts.down_proj_scales", "U8", (e, h, inter // 32)),
              (f"{p}.mlp.experts.gate_up_proj_bias", "BF16", (e, 2 * inter)),
              (f"{p}.mlp.experts.gate_up_proj_blocks", "U8", (e, 2 * inter, h // 32, 16)),
              (f"{p}.mlp.experts.gate_up_proj_scales", "U8", (e, 2 * inter, h // 32)),
              (f"{p}.mlp.router.bias", "BF16", (e,)),
              (f"{p}.mlp.router.weight", "BF16", (e, h)),
              (f"{p}.post_attention_layernorm.weight", "BF16", (h,)),
              (f"{p}.self_attn.k_proj.bias", "BF16", (kv * hd,)),
              (f"{p}.self_attn.k_proj.weight", "BF16", (kv * hd, h)),
              (f"{p}.self_attn.o_proj.bias", "BF16", (h,)),
              (f"{p}.self_attn.o_proj.weight", "BF16", (h, nh * hd)),
              (f"{p}.self_attn.q_proj.bias", "BF16", (nh * hd,)),
              (f"{p}.self_attn.q_proj.weight", "BF16", (nh * hd, h)),
              (f"{p}.self_attn.sinks", "BF16", (nh,)),
              (f"{p}.self_attn.v_proj.bias", "BF16", (kv * hd,)),
              (f"{p}.self_attn.v_proj.weight", "BF16", (kv * hd, h))]
    t += [("model.norm.weight", "BF16", (h,)), ("lm_head.weight", "BF16", (v, h))]
    return Model("gpt-oss-20b", t, cfg)


def qwen15_moe_a27b() -> Model:
    """Qwen1.5-MoE-A2.7B: 60 routed experts (top-4) + a shared expert with its sigmoid gate."""
    cfg = QWEN15_MOE_A27B_CONFIG
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    mi, si, e = cfg["moe_intermediate_size"], cfg["shared_expert_intermediate_size"], cfg["num_experts"]
    t: Spec = [("model.embed_tokens.weight", "BF16", (v, h))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        t.append((f"{p}.input_layernorm.weight", "BF16", (h,)))
        for j in range(e):
            q = f"{p}.mlp.experts.{j}"
            t += [(f"{q}.down_proj.weight", "BF16", (h, mi)), (f"{q}.gate_proj.weight", "BF16", (mi, h)),
                  (f"{q}.up_proj.weight", "BF16", (mi, h))]
        t += [(f"{p}.mlp.gate.weight", "BF16", (e, h)),
              (f"{p}.mlp.shared_expert.down_proj.weight", "BF16", (h, si)),
              (f"{p}.mlp.shared_expert.gate_proj.weight", "BF16", (si, h)),
              (f"{p}.mlp.shared_expert.up_proj.weight", "BF16", (si, h)),
              (f"{p}.mlp.shared_expert_gate.weight", "BF16", (1, h)),
              (f"{p}.post_attention_layernorm.weight", "BF16", (h,))]
        for n in ("q", "k", "v"):
            t += [(f"{p}.self_attn.{n}_proj.bias", "BF16", (h,)),
                  (f"{p}.self_attn.{n}_proj.weight", "BF16", (h, h))]
        t.append((f"{p}.self_attn.o_proj.weight", "BF16", (h, h)))
    t += [("model.norm.weight", "BF16", (h,)), ("lm_head.weight", "BF16", (v, h))]
    return Model("Qwen1.5-MoE-A2.7B", t, cfg)


def deepseek_like_tiny() -> Model:
    """A small DeepSeek-V3-shaped MoE: first layer dense (first_k_dense_replace=1), routed
    experts.N, one shared expert, router with e_score_correction_bias, MLA projections."""
    cfg = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
           "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 16,
           "num_hidden_layers": 3, "first_k_dense_replace": 1, "n_routed_experts": 8,
           "n_shared_experts": 1, "num_experts_per_tok": 2, "num_attention_heads": 4,
           "num_key_value_heads": 4, "kv_lora_rank": 32, "q_lora_rank": 48,
           "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
           "vocab_size": 100, "tie_word_embeddings": False}
    h, mi, inter = 64, 16, 128
    t: Spec = [("model.embed_tokens.weight", "BF16", (100, h))]
    for i in range(3):
        p = f"model.layers.{i}"
        t += [(f"{p}.input_layernorm.weight", "BF16", (h,)),
              (f"{p}.post_attention_layernorm.weight", "BF16", (h,)),
              (f"{p}.self_attn.q_a_proj.weight", "BF16", (48, h)),
              (f"{p}.self_attn.q_a_layernorm.weight", "BF16", (48,)),
              (f"{p}.self_attn.q_b_proj.weight", "BF16", (4 * 24, 48)),
              (f"{p}.self_attn.kv_a_proj_with_mqa.weight", "BF16", (32 + 8, h)),
              (f"{p}.self_attn.kv_a_layernorm.weight", "BF16", (32,)),
              (f"{p}.self_attn.kv_b_proj.weight", "BF16", (4 * (16 + 16), 32)),
              (f"{p}.self_attn.o_proj.weight", "BF16", (h, 4 * 16))]
        if i == 0:
            t += [(f"{p}.mlp.{n}.weight", "BF16", s) for n, s in
                  (("gate_proj", (inter, h)), ("up_proj", (inter, h)), ("down_proj", (h, inter)))]
        else:
            for j in range(8):
                t += [(f"{p}.mlp.experts.{j}.{n}.weight", "BF16", s) for n, s in
                      (("gate_proj", (mi, h)), ("up_proj", (mi, h)), ("down_proj", (h, mi)))]
            t += [(f"{p}.mlp.shared_experts.{n}.weight", "BF16", s) for n, s in
                  (("gate_proj", (mi, h)), ("up_proj", (mi, h)), ("down_proj", (h, mi)))]
            t += [(f"{p}.mlp.gate.weight", "BF16", (8, h)),
                  (f"{p}.mlp.gate.e_score_correction_bias", "F32", (8,))]
    t += [("model.norm.weight", "BF16", (h,)), ("lm_head.weight", "BF16", (100, h))]
    return Model("deepseek-v3-tiny", t, cfg)


def gpt2_small(*, masks: bool = True, masked_bias: bool = False) -> Model:
    """gpt2 (124M): Conv1D weights [in, out]; each block saves its causal mask `attn.bias`
    (F32 [1, 1, 1024, 1024]); lm_head is tied to wte and absent."""
    cfg = GPT2_CONFIG
    d, n_pos, v = cfg["n_embd"], cfg["n_positions"], cfg["vocab_size"]
    t: Spec = []
    for i in range(cfg["n_layer"]):
        p = f"h.{i}"
        if masks:
            t.append((f"{p}.attn.bias", "F32", (1, 1, n_pos, n_pos)))
        if masked_bias:
            t.append((f"{p}.attn.masked_bias", "F32", ()))
        t += [(f"{p}.attn.c_attn.bias", "F32", (3 * d,)), (f"{p}.attn.c_attn.weight", "F32", (d, 3 * d)),
              (f"{p}.attn.c_proj.bias", "F32", (d,)), (f"{p}.attn.c_proj.weight", "F32", (d, d)),
              (f"{p}.ln_1.bias", "F32", (d,)), (f"{p}.ln_1.weight", "F32", (d,)),
              (f"{p}.ln_2.bias", "F32", (d,)), (f"{p}.ln_2.weight", "F32", (d,)),
              (f"{p}.mlp.c_fc.bias", "F32", (4 * d,)), (f"{p}.mlp.c_fc.weight", "F32", (d, 4 * d)),
              (f"{p}.mlp.c_proj.bias", "F32", (d,)), (f"{p}.mlp.c_proj.weight", "F32", (4 * d, d))]
    t += [("ln_f.bias", "F32", (d,)), ("ln_f.weight", "F32", (d,)),
          ("wpe.weight", "F32", (n_pos, d)), ("wte.weight", "F32", (v, d))]
    return Model("gpt2", t, cfg)


def _bert_layers(prefix: str, n: int, h: int, inter: int) -> Spec:
    t: Spec = []
    for i in range(n):
        p = f"{prefix}encoder.layer.{i}"
        for m in ("query", "key", "value"):
            t += [(f"{p}.attention.self.{m}.weight", "F32", (h, h)), (f"{p}.attention.self.{m}.bias", "F32", (h,))]
        t += [(f"{p}.attention.output.dense.weight", "F32", (h, h)),
              (f"{p}.attention.output.dense.bias", "F32", (h,)),
              (f"{p}.attention.output.LayerNorm.weight", "F32", (h,)),
              (f"{p}.attention.output.LayerNorm.bias", "F32", (h,)),
              (f"{p}.intermediate.dense.weight", "F32", (inter, h)),
              (f"{p}.intermediate.dense.bias", "F32", (inter,)),
              (f"{p}.output.dense.weight", "F32", (h, inter)), (f"{p}.output.dense.bias", "F32", (h,)),
              (f"{p}.output.LayerNorm.weight", "F32", (h,)), (f"{p}.output.LayerNorm.bias", "F32", (h,))]
    return t


def _bert_embeddings(prefix: str, cfg: dict) -> Spec:
    h = cfg["hidden_size"]
    return [(f"{prefix}embeddings.word_embeddings.weight", "F32", (cfg["vocab_size"], h)),
            (f"{prefix}embeddings.position_embeddings.weight", "F32", (cfg["max_position_embeddings"], h)),
            (f"{prefix}embeddings.token_type_embeddings.weight", "F32", (cfg["type_vocab_size"], h)),
            (f"{prefix}embeddings.LayerNorm.weight", "F32", (h,)),
            (f"{prefix}embeddings.LayerNorm.bias", "F32", (h,)),
            (f"{prefix}embeddings.position_ids", "I64", (1, cfg["max_position_embeddings"]))]


def minilm_l6() -> Model:
    """sentence-transformers/all-MiniLM-L6-v2 (BertModel, 104 tensors, pooler included)."""
    cfg = MINILM_L6_CONFIG
    h = cfg["hidden_size"]
    t = _bert_embeddings("", cfg) + _bert_layers("", cfg["num_hidden_layers"], h, cfg["intermediate_size"])
    t += [("pooler.dense.weight", "F32", (h, h)), ("pooler.dense.bias", "F32", (h,))]
    return Model("all-MiniLM-L6-v2", t, cfg)


def roberta_base() -> Model:
    """roberta-base (RobertaForMaskedLM): no pooler; lm_head.decoder tied to word_embeddings."""
    cfg = ROBERTA_BASE_CONFIG
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    t = _bert_embeddings("roberta.", cfg) + _bert_layers("roberta.", cfg["num_hidden_layers"], h,
                                                         cfg["intermediate_size"])
    t += [("lm_head.bias", "F32", (v,)), ("lm_head.dense.weight", "F32", (h, h)),
          ("lm_head.dense.bias", "F32", (h,)), ("lm_head.layer_norm.weight", "F32", (h,)),
          ("lm_head.layer_norm.bias", "F32", (h,))]
    return Model("roberta-base", t, cfg)


ALL = {
    "llama3_8b": llama3_8b, "llama3_70b": llama3_70b, "llama31_8b": llama31_8b, "llama32_1b": llama32_1b,
    "llama31_8b_bnb4": llama31_8b_bnb4, "llama31_8b_gptq": llama31_8b_gptq,
    "llama31_8b_awq": llama31_8b_awq, "llama31_8b_w4a16_compressed": llama31_8b_w4a16_compressed,
    "llama31_8b_fp8": llama31_8b_fp8, "llama31_8b_nvfp4": llama31_8b_nvfp4,
    "mixtral_8x7b": mixtral_8x7b, "gpt_oss_20b": gpt_oss_20b,
    "qwen15_moe_a27b": qwen15_moe_a27b, "deepseek_like_tiny": deepseek_like_tiny,
    "gpt2_small": gpt2_small, "minilm_l6": minilm_l6, "roberta_base": roberta_base,
}
