"""Deployment planning: the seed numbers (70B fp16 = 140 GB on two 80 GB GPUs, 4-bit ≈ 35 GB on one;
7B = 14 / 7 / 3.5 GB), KV cache from published configs, training rows, GPU fit, FLOPs, formulas, CLI."""
from __future__ import annotations

import json

import pytest

import synthetic_models as sm
from paramkit.counting import count_table
from paramkit.planning import GPUS, kv_cache, plan, resolve_gpus

GB = 1e9


def counted(model):
    return count_table(sm.table_of(model))


def bare(n_params: int):
    """A model of exactly n parameters and no config.json (one 1-D BF16 tensor)."""
    return counted(sm.Model(f"{n_params}", [("w", "BF16", (n_params,))], None))


# --------------------------------------------------------------------------- seeds

def test_seed_70b():
    p = plan(bare(70_000_000_000), None)
    assert p.weights_bytes("bf16") == 140 * GB
    assert p.weights_bytes("int4") == 35 * GB
    assert p.gpus_needed("H100 80GB", "bf16") == 2
    assert p.gpus_needed("A100 80GB", "bf16") == 2
    assert p.gpus_needed("H100 80GB", "int4") == 1
    assert p.gpus_needed("H100 80GB", "fp8") == 1
    assert p.gpus_needed("A100 40GB", "bf16") == 4
    d = p.to_dict()
    bf16 = next(r for r in d["weights"] if r["id"] == "bf16")
    assert bf16["bytes"]["formula"].startswith("70,000,000,000 params × 2 B = 140,000,000,000 B")
    assert "int4_g128" in [r["id"] for r in d["weights"]]
    assert 36 * GB < p.weights_bytes("int4_g128") < 36.2 * GB        # 4.125 bits/weight
    assert p.weights_bytes("nf4") == 70e9 * 4.5 / 8
    assert p.weights_bytes("int4_g128_asym") == 70e9 * 4.15625 / 8


def test_seed_7b():
    p = plan(bare(7_000_000_000), None)
    assert (p.weights_bytes("bf16"), p.weights_bytes("int8"), p.weights_bytes("int4")) == (14 * GB, 7 * GB, 3.5 * GB)
    assert p.weights_bytes("fp32") == 28 * GB
    assert p.gpus_needed("T4", "bf16") == 1          # 14 GB <= 16 GB × 0.9
    assert p.gpus_needed("RTX 3090", "stored") == 1
    assert p.kv_cache["applicable"] is False and "no config.json" in p.kv_cache["reason"]


def test_llama3_70b_with_kv_cache():
    m = sm.llama3_70b()
    c = counted(m)
    assert c.total_params == 70_553_706_496
    p = plan(c, m.config, context=8192)
    assert p.kv_cache["total"]["value"] == 2 * 80 * 8 * 128 * 2 * 8192
    assert p.gpus_needed("H100", "bf16") == 2
    assert p.gpus_needed("H100", "int4") == 1
    assert p.gpus_needed("H200", "bf16") == 2          # 141.1 GB + KV > 126.9 GB usable
    assert p.gpus_needed("B200", "bf16") == 1


# --------------------------------------------------------------------------- KV cache

def test_kv_llama3_8b():
    m = sm.llama3_8b()
    p = plan(counted(m), m.config)
    kv = p.kv_cache
    assert (kv["layers"], kv["kv_heads"], kv["head_dim"], kv["kind"]) == (32, 8, 128, "gqa")
    assert kv["per_token"]["value"] == 131_072
    assert kv["total"]["value"] == 1_073_741_824
    assert kv["total"]["formula"] == ("2 × 32 layers × 8 kv heads × 128 head_dim × 2 B × 8192 tokens × "
                                      "batch 1 = 1,073,741,824 B")
    assert p.weights_bytes("bf16") == 16_060_522_496
    big = plan(counted(m), m.config, context=131072, batch=4, kv_dtype="fp8").kv_cache
    assert big["total"]["value"] == 131_072 // 2 * 131072 * 4


def test_kv_sliding_windows():
    mistral = {"model_type": "mistral", "hidden_size": 4096, "num_attention_heads": 32,
               "num_hidden_layers": 32, "num_key_value_heads": 8, "sliding_window": 4096}
    kv = kv_cache(mistral, context=32768, batch=1, kv_dtype="bf16")
    assert kv["sliding_window_layers"] == 32
    assert kv["total"]["value"] == 2 * 32 * 8 * 128 * 2 * 4096
    assert kv_cache(mistral, context=1000, batch=1, kv_dtype="bf16")["total"]["value"] == 131_072 * 1000
    oss = kv_cache(sm.GPT_OSS_20B_CONFIG, context=8192, batch=1, kv_dtype="bf16")
    assert (oss["full_attention_layers"], oss["sliding_window_layers"]) == (12, 12)
    assert oss["total"]["value"] == 2 * 8 * 64 * 2 * (12 * 8192 + 12 * 128) == 204_472_320
    gemma2 = {"model_type": "gemma2", "num_hidden_layers": 42, "num_attention_heads": 16,
              "num_key_value_heads": 8, "head_dim": 256, "hidden_size": 3584, "sliding_window": 4096}
    g = kv_cache(gemma2, context=8192, batch=1, kv_dtype="bf16")
    assert g["total"]["value"] == 2 * 8 * 256 * 2 * (21 * 8192 + 21 * 4096)
    gemma3 = {"model_type": "gemma3_text", "num_hidden_layers": 62, "num_attention_heads": 32,
              "num_key_value_heads": 16, "head_dim": 128, "hidden_size": 5376,
              "sliding_window": 1024, "sliding_window_pattern": 6}
    g3 = kv_cache(gemma3, context=32768, batch=1, kv_dtype="bf16")
    assert (g3["full_attention_layers"], g3["sliding_window_layers"]) == (10, 52)
    qwen = {"model_type": "qwen2", "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "hidden_size": 3584, "sliding_window": 131072,
            "use_sliding_window": False, "max_window_layers": 28}
    q = kv_cache(qwen, context=8192, batch=1, kv_dtype="bf16")
    assert q["sliding_window_layers"] == 0 and q["per_token"]["value"] == 57_344


def test_kv_mla_gpt2_encoder():
    ds3 = {"model_type": "deepseek_v3", "num_hidden_layers": 61, "num_attention_heads": 128,
           "num_key_value_heads": 128, "hidden_size": 7168, "kv_lora_rank": 512,
           "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128}
    kv = kv_cache(ds3, context=4096, batch=1, kv_dtype="bf16")
    assert kv["kind"] == "mla" and kv["per_token"]["value"] == 61 * 576 * 2 == 70_272
    assert "MLA" in kv["per_token"]["formula"]
    g = kv_cache(sm.GPT2_CONFIG, context=1024, batch=1, kv_dtype="fp32")
    assert (g["layers"], g["kv_heads"], g["head_dim"], g["kind"]) == (12, 12, 64, "mha")
    assert g["per_token"]["value"] == 2 * 12 * 12 * 64 * 4
    r = kv_cache(sm.MINILM_L6_CONFIG, context=512, batch=1, kv_dtype="bf16")
    assert r["applicable"] is False and "encoder-only" in r["reason"]
    with pytest.raises(ValueError):
        kv_cache(sm.GPT2_CONFIG, context=1, batch=1, kv_dtype="int3")


# --------------------------------------------------------------------------- training, MoE, compute

def test_training_rows_and_lora():
    m = sm.llama3_8b()
    p = plan(counted(m), m.config)
    rows = {r["id"]: r for r in p.training}
    P = 8_030_261_248
    assert rows["adam_mixed"]["bytes"]["value"] == 16 * P
    assert rows["adam_mixed_fp32_grads"]["bytes"]["value"] == 18 * P
    assert rows["adam_mixed_fp32_grads_bf16_copy"]["bytes"]["value"] == 20 * P
    assert "activations excluded" in rows["adam_mixed"]["bytes"]["formula"]
    assert rows["lora_4bit"]["adapter_params"]["value"] == 41_943_040   # r=16, all 7 projections
    assert rows["lora_4bit"]["bytes"]["value"] == 6_979_321_856 * 4.5 / 8 + 1_050_939_392 * 2 + 41_943_040 * 16
    # a bitsandbytes checkpoint: linear dims recovered from config.json, base = bytes as stored
    qm = sm.llama31_8b_bnb4()
    qc = counted(qm)
    qp = plan(qc, qm.config)
    q = {r["id"]: r for r in qp.training}["lora_4bit"]
    assert q["adapter_params"]["value"] == 41_943_040
    assert q["bytes"]["value"] == qc.bytes_total + 41_943_040 * 16
    assert qp.notes == []
    assert qp.weights_bytes("stored") == qc.bytes_total
    g = counted(sm.llama31_8b_gptq())
    assert {r["id"]: r for r in plan(g, sm.llama31_8b_gptq().config).training}["lora_4bit"][
        "adapter_params"]["value"] == 41_943_040


def test_moe_compute_uses_active():
    m = sm.mixtral_8x7b()
    p = plan(counted(m), m.config, train_tokens=1e12)
    c = p.compute
    assert c["inference_flops_per_token"]["value"] == 2 * 12_879_925_248
    assert "active" in c["inference_flops_per_token"]["formula"]
    assert c["chinchilla_tokens"]["value"] == 20 * 46_702_792_704
    assert c["training_flops"]["value"] == 6 * 12_879_925_248 * 1e12
    assert p.params["active"]["value"] == 12_879_925_248
    assert p.weights_bytes("bf16") == 93_405_585_408
    assert p.gpus_needed("H100", "bf16") == 2 and p.gpus_needed("H200", "bf16") == 1
    d = counted(sm.llama3_8b())
    pd = plan(d, sm.LLAMA3_8B_CONFIG)
    assert pd.compute["inference_flops_per_token"]["value"] == 2 * 8_030_261_248
    assert pd.compute["training_flops"]["value"] == 6 * 8_030_261_248 * 20 * 8_030_261_248


def test_moe_without_config_falls_back_to_total_for_flops():
    m = sm.mixtral_8x7b()
    m.config = None
    p = plan(counted(m), None)
    assert p.compute["inference_flops_per_token"]["value"] == 2 * 46_702_792_704
    assert any("active parameters unknown" in n for n in p.notes)


# --------------------------------------------------------------------------- GPU table, overhead, formulas

def test_gpu_table_and_resolution():
    names = [g[0] for g in GPUS]
    for want in ("H100 80GB", "H200 141GB", "A100 80GB", "A100 40GB", "L40S 48GB", "L4 24GB",
                 "RTX 4090 24GB", "RTX 3090 24GB", "T4 16GB"):
        assert want in names
    assert [g[0] for g in resolve_gpus("a100")] == ["A100 80GB", "A100 40GB"]
    assert [g[0] for g in resolve_gpus(["4090"])] == ["RTX 4090 24GB"]
    assert resolve_gpus("mine:32")[0][:2] == ("mine", 32e9)
    with pytest.raises(ValueError):
        resolve_gpus("z80")
    p = plan(bare(7_000_000_000), None, gpus=["l4"])
    assert [r["gpu"] for r in p.gpu_fit["rows"]] == ["L4 24GB"]
    assert p.gpus_needed("L4", "bf16") == 1      # 14 GB < 21.6 GB usable
    tight = plan(bare(7_000_000_000), None, gpus=["t4"], overhead=3e9)   # 16 - 3 = 13 GB usable
    assert tight.gpus_needed("T4", "bf16") == 2
    assert "3.00 GB reserved per GPU" in tight.gpu_fit["overhead"]["formula"]
    assert "10%" in plan(bare(1000), None).gpu_fit["overhead"]["formula"]


def _figures(obj, path=""):
    if isinstance(obj, dict):
        if "value" in obj and "formula" in obj:
            yield path, obj
        for k, v in obj.items():
            yield from _figures(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _figures(v, f"{path}[{i}]")


def test_every_figure_has_a_formula():
    for m in (sm.llama3_8b(), sm.gpt_oss_20b(), sm.llama31_8b_bnb4(), sm.gpt2_small()):
        d = plan(counted(m), m.config).to_dict()
        json.dumps(d)
        figs = list(_figures(d))
        assert len(figs) > 30
        for path, f in figs:
            assert isinstance(f["formula"], str) and f["formula"], (m.name, path)
            assert "unit" in f, path
        for row in d["gpu_fit"]["rows"]:
            for k, v in row["fit"].items():
                assert v["formula"].startswith("ceil("), k
        assert set(d) == {"inputs", "params", "weights", "kv_cache", "training", "gpu_fit",
                          "compute", "assumptions", "notes"}


# --------------------------------------------------------------------------- CLI

def _main(argv):
    from paramkit.cli import main
    return main(argv)


def test_cli_plan(tmp_path, capsys):
    if not sm.has_real_reader():
        pytest.skip("paramkit.formats.open_table not available yet")
    d = sm.write_model(str(tmp_path / "mix"), sm.mixtral_8x7b(), shards=2)
    assert _main(["plan", d, "--json", "--context", "4096", "--gpu", "h100"]) == 0
    out = json.loads(capsys.readouterr().out)
    pl = out["plan"]
    assert pl["params"]["total"]["value"] == 46_702_792_704
    assert pl["params"]["active"]["value"] == 12_879_925_248
    assert pl["kv_cache"]["total"]["value"] == 131_072 * 4096
    assert [r["gpu"] for r in pl["gpu_fit"]["rows"]] == ["H100 80GB"]
    assert _main(["plan", d, "--explain", "--gpu", "h100", "--kv-dtype", "fp8"]) == 0
    text = capsys.readouterr().out
    assert "46,702,792,704 parameters, 12,879,925,248 active" in text
    assert "GPUs needed" in text and "ceil(" in text and "params × 2 B" in text
    assert _main(["plan", d, "--gpu", "nosuchgpu"]) == 1


def test_cli_plan_bad_file_is_format_error(tmp_path, capsys):
    if not sm.has_real_reader():
        pytest.skip("paramkit.formats.open_table not available yet")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x01")
    assert _main(["plan", str(bad)]) == 2


# --------------------------------------------------------------------------- FLOPs: embeddings are lookups

def test_flops_per_token_minilm_both_figures(minilm_path, capsys, monkeypatch):
    """all-MiniLM-L6-v2: 11.9M of its 22.7M parameters are embedding lookups; the plan gives 2 ×
    non-embedding (Kaplan) and 2 × all parameters, labelled, and --explain says which one feeds the
    training FLOPs and H100-hours. Expected values from the header's shapes, here."""
    from conftest import tensor_infos
    infos = tensor_infos(minilm_path)
    total = sum(t.numel for t in infos if t.dtype == "F32")
    lookups = sum(t.numel for t in infos if t.name.endswith(("word_embeddings.weight",
                                                             "position_embeddings.weight",
                                                             "token_type_embeddings.weight")))
    assert (total, lookups) == (22_713_216, 30522 * 384 + 512 * 384 + 2 * 384)
    assert _main(["plan", minilm_path, "--json"]) == 0
    pl = json.loads(capsys.readouterr().out)["plan"]
    c = pl["compute"]
    ne, full = c["inference_flops_per_token_non_embedding"], c["inference_flops_per_token"]
    assert ne["value"] == 2 * (total - lookups) == 21_590_784
    assert full["value"] == 2 * total == 45_426_432
    assert "non-embedding" in ne["label"] and "Kaplan" in ne["label"] and ne["unit"] == "FLOP"
    assert "all parameters" in full["label"]
    assert pl["params"]["embedding"]["value"] == lookups
    assert pl["params"]["non_embedding"]["value"] == total - lookups
    assert c["training_flops"]["value"] == 6 * total * 20 * total          # 6 × all parameters × tokens
    assert _main(["plan", minilm_path, "--explain"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "training FLOPs and H100-hours use 6 × all parameters × tokens" in text
    monkeypatch.setenv("COLUMNS", "120")
    assert _main(["plan", minilm_path]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "inference FLOPs / token, 2 × non-embedding parameters (Kaplan et al.) 2.16e+07" in text
    assert "inference FLOPs / token, 2 × all parameters 4.54e+07" in text


@pytest.mark.parametrize("model, lookups", [
    (sm.gpt2_small, 50257 * 768 + 1024 * 768),         # wte + wpe: GPT-2 small's 85M non-embedding
    (sm.llama3_8b, 128256 * 4096),                      # embed_tokens; the untied lm_head is a matmul
    (sm.mixtral_8x7b, 32000 * 4096),                    # from the active parameters
])
def test_non_embedding_flops_of_known_models(model, lookups):
    m = model()
    c = counted(m)
    p = plan(c, m.config)
    act = c.active_params
    assert p.params["embedding"]["value"] == lookups
    assert p.compute["inference_flops_per_token_non_embedding"]["value"] == 2 * (act - lookups)
    assert p.compute["inference_flops_per_token"]["value"] == 2 * act
    if model is sm.gpt2_small:
        assert act - lookups == 85_056_000
