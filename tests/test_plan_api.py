"""paramkit.plan(): a checkpoint path (scanned headers-only first), a ScanReport as is, or a config.json alone;
the config-only parameter count (paramkit.config_params) against real files (MiniLM, the demo checkpoint),
the synthetic published models of tests/synthetic_models.py and published totals of other families."""
from __future__ import annotations

import json
import os

import pytest

import paramkit
import synthetic_models as sm
from paramkit.config_params import config_tensors
from paramkit.counting import count_table
from paramkit.planning import plan as plan_counting


def _parameters(report) -> set[tuple[str, tuple[int, ...]]]:
    return {(t.name, tuple(t.shape)) for t in report.tensors if t.role == "parameter"}


def _strip_notes(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "notes"}


# --------------------------------------------------------------------------- the three kinds of source

def test_plan_of_a_path_scans_headers_only(minilm_path, monkeypatch):
    """A checkpoint path: scan(path, stats=False) first (no data pass), then the report's plan."""
    from paramkit.backends import get_engine
    calls = []
    real = get_engine

    def spy(name):
        calls.append(name)
        return real(name)
    monkeypatch.setattr("paramkit.api.get_engine", spy)
    p = paramkit.plan(minilm_path, context=512, gpus=["t4"])
    assert calls == []   # no engine: no tensor byte was read
    want = paramkit.scan(minilm_path, stats=False).plan(context=512, gpus=["t4"])
    assert p.to_dict() == want.to_dict()
    assert p.params["total"]["value"] == 22_713_216


def test_plan_of_a_report_uses_it_as_is(small_checkpoint):
    r = paramkit.scan(small_checkpoint)
    assert paramkit.plan(r, context=100, batch=2).to_dict() == r.plan(context=100, batch=2).to_dict()
    with pytest.raises(TypeError):
        paramkit.plan(42)


def test_minilm_config_alone_gives_the_scanned_model(minilm_path):
    """MiniLM's config.json beside its weights: the same parameter tensors (names and shapes) as the file,
    so exactly its scanned total; a config dict is the same as its file."""
    cfg_path = os.path.join(os.path.dirname(minilm_path), "config.json")
    scanned = paramkit.scan(minilm_path, stats=False)
    with open(cfg_path) as f:
        cfg = json.load(f)
    assert set(config_tensors(cfg)) == _parameters(scanned)
    p = paramkit.plan(cfg_path, context=256)
    assert p.params["total"]["value"] == scanned.total_params == 22_713_216
    assert "no weights read" in p.notes[0] and "float32" in p.notes[0]
    assert p.weights_bytes("stored") == 4 * scanned.total_params      # F32, as the file stores it
    assert _strip_notes(paramkit.plan(cfg, context=256).to_dict()) == _strip_notes(p.to_dict())


def test_demo_config_alone_gives_the_scanned_model(tmp_path):
    from paramkit.demo import write_demo_checkpoint
    path = write_demo_checkpoint(str(tmp_path))
    scanned = paramkit.scan(path, stats=False)
    cfg_path = str(tmp_path / "config.json")
    with open(cfg_path) as f:
        assert set(config_tensors(json.load(f))) == _parameters(scanned)
    from_config = paramkit.plan(cfg_path, context=2048, batch=3)
    from_weights = paramkit.plan(path, context=2048, batch=3)
    assert from_config.params["total"]["value"] == scanned.total_params
    # bf16 as stored, the same KV cache, training, GPU fit and FLOPs; "as stored" here has no int64 buffer
    for key in ("kv_cache", "training", "compute"):
        assert from_config.to_dict()[key] == from_weights.to_dict()[key], key
    assert from_config.weights_bytes("stored") == 2 * scanned.total_params


# --------------------------------------------------------------------------- the families

@pytest.mark.parametrize("model", ["llama3_8b", "llama32_1b", "llama3_70b", "minilm_l6", "roberta_base"])
def test_config_tensors_equal_the_published_layouts(model):
    """tests/synthetic_models.py holds the published configs with the tensors their checkpoints store:
    the config alone names the same parameter tensors, and plan() counts their total."""
    m = sm.ALL[model]()
    counted = count_table(sm.table_of(m))
    params = {(r.name, tuple(r.shape)) for r in counted.roles if r.role == "parameter"}
    assert set(config_tensors(m.config)) == params
    p = paramkit.plan(m.config)
    assert p.params["total"]["value"] == counted.total_params
    same = plan_counting(counted, m.config).to_dict()
    for key in ("kv_cache", "training", "compute"):
        assert p.to_dict()[key] == same[key], key
    # every weights row but "as stored", which holds the checkpoint's buffers (position_ids) too
    assert [r for r in p.to_dict()["weights"] if r["id"] != "stored"] == \
        [r for r in same["weights"] if r["id"] != "stored"]


# Published config.json values (sizes only) and the models' published parameter totals; the totals' splits
# agree with the technical reports (Gemma 3 1B: 302M embedding + 698M other; Qwen3-0.6B: 0.44B non-embedding).
PUBLISHED = [
    ("Mistral-7B-v0.1", 7_241_732_096, {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
        "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 32000}),
    ("Qwen2-0.5B", 494_032_768, {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "use_sliding_window": False, "vocab_size": 151936}),
    ("Qwen3-0.6B", 596_049_920, {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False, "head_dim": 128,
        "hidden_size": 1024, "intermediate_size": 3072, "num_attention_heads": 16, "num_hidden_layers": 28,
        "num_key_value_heads": 8, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "vocab_size": 151936}),
    ("gemma-2b", 2_506_172_416, {
        "architectures": ["GemmaForCausalLM"], "model_type": "gemma", "head_dim": 256, "hidden_size": 2048,
        "intermediate_size": 16384, "num_attention_heads": 8, "num_hidden_layers": 18, "num_key_value_heads": 1,
        "torch_dtype": "bfloat16", "vocab_size": 256000}),
    ("gemma-7b", 8_537_680_896, {
        "architectures": ["GemmaForCausalLM"], "model_type": "gemma", "head_dim": 256, "hidden_size": 3072,
        "intermediate_size": 24576, "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 16,
        "torch_dtype": "bfloat16", "vocab_size": 256000}),
    ("gemma-2-2b", 2_614_341_888, {
        "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "head_dim": 256, "hidden_size": 2304,
        "intermediate_size": 9216, "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4,
        "sliding_window": 4096, "torch_dtype": "float32", "vocab_size": 256000}),
    ("gemma-3-1b", 999_885_952, {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "head_dim": 256, "hidden_size": 1152,
        "intermediate_size": 6912, "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
        "sliding_window": 512, "torch_dtype": "bfloat16", "vocab_size": 262144}),
]


@pytest.mark.parametrize("name,total,config", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_config_alone_gives_published_totals(name, total, config):
    assert paramkit.plan(config).params["total"]["value"] == total


def test_llama_biases_follow_attention_bias_and_mlp_bias():
    base = dict(sm.LLAMA32_1B_CONFIG)
    n = paramkit.plan(base).params["total"]["value"]
    h, layers, kv = base["hidden_size"], base["num_hidden_layers"], base["num_key_value_heads"] * base["head_dim"]
    q = base["num_attention_heads"] * base["head_dim"]
    with_attn = paramkit.plan(dict(base, attention_bias=True)).params["total"]["value"]
    assert with_attn - n == layers * (q + 2 * kv + h)
    with_mlp = paramkit.plan(dict(base, mlp_bias=True)).params["total"]["value"]
    assert with_mlp - n == layers * (2 * base["intermediate_size"] + h)


@pytest.mark.parametrize("config,match", [
    (sm.MIXTRAL_8X7B_CONFIG, "model_type 'mixtral'"),
    (sm.GPT2_CONFIG, "model_type 'gpt2'"),
    ({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]}, "not a causal LM"),
    (dict(sm.MINILM_L6_CONFIG, architectures=["BertForSequenceClassification"]), "BertModel and BertForMaskedLM"),
    ({k: v for k, v in sm.LLAMA3_8B_CONFIG.items() if k != "hidden_size"}, "lacks hidden_size"),
    (dict(sm.LLAMA3_8B_CONFIG, num_hidden_layers="32"), "num_hidden_layers is '32'"),
    ({"text_config": sm.LLAMA3_8B_CONFIG}, "model_type None"),
])
def test_unknown_architectures_are_a_clear_value_error(config, match):
    with pytest.raises(ValueError, match=match):
        paramkit.plan(config)


def test_config_path_errors(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("[1, 2]")
    with pytest.raises(paramkit.FormatError) as e:
        paramkit.plan(str(bad))
    assert e.value.code == "config_invalid"
