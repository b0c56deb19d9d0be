"""A model's tensors from its config.json alone, for planning before any weight is downloaded
(paramkit.plan(config)): the parameter tensors, named and shaped as transformers saves them, of the common
decoder families (Llama, Mistral, Qwen2/Qwen3, Gemma 1-3) and of BERT-style encoders (BERT, RoBERTa,
XLM-RoBERTa). counting.count_table then counts them like a scanned checkpoint."""
from __future__ import annotations

from .dtypes import DTYPES
from .table import TensorInfo, TensorTable

# model_type -> (q/k/v biases, o_proj bias, norms per layer, q_norm/k_norm, tie_word_embeddings default):
# biases None = the config's attention_bias (default False); the defaults are those of transformers' configs
DECODERS: dict[str, tuple[bool | None, bool | None, int, bool, bool]] = {
    "llama": (None, None, 2, False, False),
    "mistral": (False, False, 2, False, False),
    "qwen2": (True, False, 2, False, False),
    "qwen3": (None, None, 2, True, False),
    "gemma": (None, None, 2, False, True),
    "gemma2": (None, None, 4, False, True),
    "gemma3_text": (None, None, 4, True, True),
}
# model_type -> the class-name stem of its architectures: the base model (<stem>Model, pooler on top) and the
# masked LM (<stem>ForMaskedLM, its decoder tied to the word embeddings)
ENCODERS = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}

_TORCH_DTYPES = {"float32": "F32", "float": "F32", "bfloat16": "BF16", "float16": "F16", "half": "F16"}

Spec = list[tuple[str, tuple[int, ...]]]


def _size(config: dict, *keys: str, default: int | None = None) -> int:
    """The first of `keys` the config has, a positive integer; ValueError naming them when there is none."""
    for k in keys:
        v = config.get(k)
        if v is not None:
            if type(v) is not int or v < 1:
                raise ValueError(f"config.json {k} is {v!r}; expected a positive integer")
            return v
    if default is not None:
        return default
    raise ValueError(f"config.json lacks {' / '.join(keys)}: the parameter count needs it")


def _architecture(config: dict) -> str:
    archs = config.get("architectures")
    if archs is None:
        return ""
    if not isinstance(archs, list) or len(archs) != 1 or not isinstance(archs[0], str):
        raise ValueError(f"config.json architectures is {archs!r}; expected one class name")
    return archs[0]


def _decoder(config: dict, model_type: str) -> Spec:
    qkv_bias, o_bias, norms, qk_norm, tie_default = DECODERS[model_type]
    arch = _architecture(config)
    if arch and not arch.endswith("ForCausalLM"):
        raise ValueError(f"architecture {arch} is not a causal LM: only the *ForCausalLM tensors of "
                         f"{model_type} are known from config.json alone")
    attention_bias = config.get("attention_bias", False) is True
    qkv_bias = attention_bias if qkv_bias is None else qkv_bias
    o_bias = attention_bias if o_bias is None else o_bias
    mlp_bias = config.get("mlp_bias", False) is True
    h, v, n = _size(config, "hidden_size"), _size(config, "vocab_size"), _size(config, "num_hidden_layers")
    heads = _size(config, "num_attention_heads")
    kv = _size(config, "num_key_value_heads", default=heads)
    hd = _size(config, "head_dim", default=h // heads)
    inter = _size(config, "intermediate_size")
    tie = config.get("tie_word_embeddings", tie_default)

    def linear(name: str, fan_in: int, fan_out: int, bias: bool) -> Spec:
        return [(name + ".weight", (fan_out, fan_in))] + ([(name + ".bias", (fan_out,))] if bias else [])
    out: Spec = [("model.embed_tokens.weight", (v, h))]
    for i in range(n):
        p = f"model.layers.{i}."
        out += linear(p + "self_attn.q_proj", h, heads * hd, qkv_bias)
        out += linear(p + "self_attn.k_proj", h, kv * hd, qkv_bias)
        out += linear(p + "self_attn.v_proj", h, kv * hd, qkv_bias)
        out += linear(p + "self_attn.o_proj", heads * hd, h, o_bias)
        if qk_norm:
            out += [(p + "self_attn.q_norm.weight", (hd,)), (p + "self_attn.k_norm.weight", (hd,))]
        out += linear(p + "mlp.gate_proj", h, inter, mlp_bias)
        out += linear(p + "mlp.up_proj", h, inter, mlp_bias)
        out += linear(p + "mlp.down_proj", inter, h, mlp_bias)
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
        if norms == 4:
            out += [(p + "pre_feedforward_layernorm.weight", (h,)), (p + "post_feedforward_layernorm.weight", (h,))]
    out.append(("model.norm.weight", (h,)))
    if tie is not True:
        out.append(("lm_head.weight", (v, h)))
    return out


def _encoder(config: dict, model_type: str) -> Spec:
    arch, stem = _architecture(config), ENCODERS[model_type]
    head = {"": "pooler", stem + "Model": "pooler", stem + "ForMaskedLM": "mlm"}.get(arch)
    if head is None:
        raise ValueError(f"architecture {arch} is not known from config.json alone: only {stem}Model and "
                         f"{stem}ForMaskedLM of {model_type}")
    h, v, n = _size(config, "hidden_size"), _size(config, "vocab_size"), _size(config, "num_hidden_layers")
    inter = _size(config, "intermediate_size")
    prefix = "" if head == "pooler" else ("bert." if model_type == "bert" else "roberta.")
    e = prefix + "embeddings."
    out: Spec = [(e + "word_embeddings.weight", (v, h)),
                 (e + "position_embeddings.weight", (_size(config, "max_position_embeddings"), h)),
                 (e + "token_type_embeddings.weight", (_size(config, "type_vocab_size", default=2), h)),
                 (e + "LayerNorm.weight", (h,)), (e + "LayerNorm.bias", (h,))]
    for i in range(n):
        p = f"{prefix}encoder.layer.{i}."
        for m in ("query", "key", "value"):
            out += [(f"{p}attention.self.{m}.weight", (h, h)), (f"{p}attention.self.{m}.bias", (h,))]
        out += [(p + "attention.output.dense.weight", (h, h)), (p + "attention.output.dense.bias", (h,)),
                (p + "attention.output.LayerNorm.weight", (h,)), (p + "attention.output.LayerNorm.bias", (h,)),
                (p + "intermediate.dense.weight", (inter, h)), (p + "intermediate.dense.bias", (inter,)),
                (p + "output.dense.weight", (h, inter)), (p + "output.dense.bias", (h,)),
                (p + "output.LayerNorm.weight", (h,)), (p + "output.LayerNorm.bias", (h,))]
    if head == "pooler":
        out += [("pooler.dense.weight", (h, h)), ("pooler.dense.bias", (h,))]
    elif model_type == "bert":   # the decoder weight is the word embeddings (tied); its bias is its own
        c = "cls.predictions."
        out += [(c + "bias", (v,)), (c + "transform.dense.weight", (h, h)), (c + "transform.dense.bias", (h,)),
                (c + "transform.LayerNorm.weight", (h,)), (c + "transform.LayerNorm.bias", (h,))]
    else:
        out += [("lm_head.bias", (v,)), ("lm_head.dense.weight", (h, h)), ("lm_head.dense.bias", (h,)),
                ("lm_head.layer_norm.weight", (h,)), ("lm_head.layer_norm.bias", (h,))]
    return out


def config_tensors(config: dict) -> Spec:
    """(name, shape) of every parameter tensor a checkpoint of this config's architecture stores (buffers
    such as position_ids left out). ValueError for an architecture outside the families above (MoE and
    multimodal models included) or a config that lacks a size the count needs."""
    if not isinstance(config, dict):
        raise ValueError(f"a config.json object is needed, not {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type in DECODERS:
        return _decoder(config, model_type)
    if model_type in ENCODERS:
        return _encoder(config, model_type)
    known = ", ".join(sorted(DECODERS) + sorted(ENCODERS))
    raise ValueError(f"cannot count parameters of model_type {model_type!r} from config.json alone; known: "
                     f"{known} (scan the weights instead: paramkit.plan(path to the checkpoint))")


def config_dtype(config: dict) -> tuple[str, str]:
    """(safetensors dtype the weights are stored in, where that came from): torch_dtype (or dtype) of the
    config, float32 (PyTorch's default) when it names none."""
    for key in ("torch_dtype", "dtype"):
        name = config.get(key)
        if isinstance(name, str) and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name], f"config.json {key} {name}"
    return "F32", "float32: config.json names no torch_dtype"


def config_table(config: dict, path: str) -> TensorTable:
    """A TensorTable of the tensors config_tensors() lists, stored in config_dtype(): what count_table and the
    planner read (no data: nothing is read from `path`, the config's file, named for the report)."""
    dtype, _ = config_dtype(config)
    size = DTYPES[dtype].bits // 8
    tensors = []
    for name, shape in config_tensors(config):
        numel = 1
        for d in shape:
            numel *= d
        tensors.append(TensorInfo(name, dtype, shape, path, 0, numel * size, numel))
    return TensorTable(path=path, format="config.json", files=[], tensors=tensors, config=config)
