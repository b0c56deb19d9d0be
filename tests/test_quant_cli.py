"""`paramkit quant` as a user runs it: the scheme table (every default scheme), --json, --out/--scheme
export, and exit code 1 for misused arguments."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import paramkit.quant as Q
from paramkit.cli import main


@pytest.fixture
def model(tmp_path) -> str:
    g = torch.Generator().manual_seed(7)
    t = {"model.embed_tokens.weight": (torch.randn(128, 64, generator=g) * 0.02).to(torch.bfloat16),
         "model.layers.0.mlp.up_proj.weight": (torch.randn(96, 64, generator=g) * 0.05).to(torch.float16),
         "model.layers.0.mlp.up_proj.bias": torch.randn(96, generator=g),
         "model.norm.weight": torch.ones(64),
         "position_ids": torch.arange(16, dtype=torch.int64).reshape(1, 16)}
    path = str(tmp_path / "model.safetensors")
    save_file(t, path, metadata={"format": "pt"})
    return path


def test_table_lists_every_default_scheme(model, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")      # wide enough for every column
    assert main(["quant", model]) == 0
    out = capsys.readouterr().out
    for s in Q.DEFAULT_SCHEMES:
        assert s in out, s
    for col in ("bits/weight", "model size", "SQNR dB", "rel. error", "cosine", "clipped", "tensors",
                "worst tensor per scheme"):
        assert col in out, col
    assert "columns left out" not in out
    # fewest bits first
    ids = [ln.split()[0] for ln in out.splitlines() if ln.split() and ln.split()[0] in Q.DEFAULT_SCHEMES]
    ids = ids[:len(Q.DEFAULT_SCHEMES)]        # the scheme table (the worst-tensor table follows)
    assert ids.index("int4_g128") < ids.index("int8_tensor") < ids.index("q8_0")


def test_json_and_scheme_selection(model, capsys):
    assert main(["quant", model, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["schemes"] == list(Q.DEFAULT_SCHEMES)
    assert {r["scheme"] for r in d["summary"]} == set(Q.DEFAULT_SCHEMES)
    assert "policy" in d
    for r in d["summary"]:
        assert r["tensors"] == 2 and r["original_bytes"] > r["quantized_bytes"] > 0
    assert main(["quant", model, "--json", "--schemes", "q4_0,int4_g64", "--backend", "numpy"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [r["scheme"] for r in d["summary"]] == ["q4_0", "int4_g64"]
    assert main(["quant", model, "--json", "--schemes", "nf4", "--tensors", "embed"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["summary"][0]["tensors"] == 1


def test_export(model, tmp_path, capsys):
    out = str(tmp_path / "model.q4_0.safetensors")
    assert main(["quant", model, "--out", out, "--scheme", "q4_0"]) == 0
    text = capsys.readouterr().out
    assert "model.q4_0.safetensors" in text and "q4_0" in text
    got, orig = load_file(out), load_file(model)
    assert set(got) == set(orig)
    assert torch.equal(got["model.norm.weight"], orig["model.norm.weight"])
    assert not torch.equal(got["model.embed_tokens.weight"], orig["model.embed_tokens.weight"])
    # an existing output needs --overwrite; --json prints the export summary
    assert main(["quant", model, "--out", out, "--scheme", "nf4"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["quant", model, "--out", out, "--scheme", "nf4", "--overwrite", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["scheme"] == "nf4" and s["n_quantized"] == 2 and s["out"] == os.path.abspath(out)


@pytest.mark.parametrize("argv", [
    ["--out", "x.safetensors"],                                  # --out without --scheme
    ["--scheme", "q4_0"],                                        # --scheme without --out
    ["--out", "x.safetensors", "--scheme", "q4_0", "--schemes", "nf4"],
    ["--overwrite"],
    ["--schemes", "q3_nonsense"],                                # unknown scheme
])
def test_misuse_exits_1(model, tmp_path, argv, capsys):
    argv = [a if a != "x.safetensors" else str(tmp_path / a) for a in argv]
    assert main(["quant", model, *argv]) == 1
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_refuses_to_overwrite_input(model, capsys):
    before = open(model, "rb").read()
    assert main(["quant", model, "--out", model, "--scheme", "q8_0", "--overwrite"]) == 1
    assert "input" in capsys.readouterr().err
    assert open(model, "rb").read() == before


def test_help_says_default_schemes():
    from paramkit.cli import build_parser
    import argparse
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["quant"].format_help().split())
    assert "must-have" not in text
    assert "the nine default schemes: " + ", ".join(Q.DEFAULT_SCHEMES) in text
