"""The command line as a user runs it: exit codes, --json output, doctor, demo, python -m paramkit."""
from __future__ import annotations

import json
import subprocess
import sys

import paramkit
from paramkit.cli import main


def test_scan_json(small_checkpoint, capsys):
    assert main(["scan", small_checkpoint, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["total_params"] == paramkit.scan(small_checkpoint, stats=False).total_params
    assert d["tensors"][0]["stats"] is not None


def test_scan_table_and_no_stats(small_checkpoint, capsys):
    assert main(["scan", small_checkpoint, "--no-stats"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "skipped" in out
    assert main(["scan", small_checkpoint, "--backend", "numpy", "--threads", "1"]) == 0
    assert "model.embed_tokens.weight" in capsys.readouterr().out


def test_format_error_exit_code_2(tmp_path, capsys):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"\x01")
    assert main(["scan", str(p)]) == 2
    assert "[file_too_short]" in capsys.readouterr().err


def test_other_errors_exit_code_1(tmp_path, capsys):
    assert main(["scan", str(tmp_path / "nope.safetensors")]) == 1
    assert main(["scan", str(tmp_path), "--backend", "cuda"]) in (1, 2)


def test_doctor(capsys):
    assert main(["doctor", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {b["name"] for b in d["backends"]} == {"cuda", "cpu", "numpy"}
    assert main(["doctor"]) == 0
    assert "backends" in capsys.readouterr().out


def test_doctor_devices_row_names_a_missing_driver(monkeypatch, capsys):
    """With no NVIDIA driver the CUDA runtime says "driver version is insufficient"; doctor's devices row
    says what the backend list says instead: there is no driver (not: upgrade it)."""
    from paramkit.backends import cuda_backend as cb
    probe = {"built": True, "runtime_version": 12040, "driver_version": 0, "archs": "90", "device_count": 0,
             "devices": [], "error": "CUDA driver version is insufficient for CUDA runtime version"}
    monkeypatch.setattr(cb, "probe", lambda: dict(probe))
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "CUDA devices" in line)
    assert "no NVIDIA driver" in row and "insufficient" not in row


def test_demo_and_python_m(tmp_path):
    out = subprocess.run([sys.executable, "-m", "paramkit", "demo", "--dir", str(tmp_path), "--json"],
                         capture_output=True, text=True, check=True).stdout
    d = json.loads(out[out.index("{"):])
    from paramkit.demo import demo_tensors
    expect = sum(int(np.prod(s)) for n, dt, s, _ in demo_tensors() if dt == "BF16")
    assert d["total_params"] == expect and d["buffer_elements"] == 512


import numpy as np  # noqa: E402


def test_closed_pipe_is_not_an_error(tmp_path):
    """`paramkit scan --json FILE | head -c 10`: the reader leaves early; exit 0, nothing on stderr."""
    from safetensors.numpy import save_file
    path = str(tmp_path / "many.safetensors")   # a report far larger than a pipe's buffer
    save_file({f"layers.{i}.weight": np.full((2, 3), i, dtype=np.float32) for i in range(3000)}, path)
    p = subprocess.Popen([sys.executable, "-m", "paramkit", "scan", path, "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err


# ---- issue 12: errors and help a person can act on ------------------------------------------------
import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from paramkit.cli import build_parser
    return dict(next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices)


@pytest.mark.parametrize("command", ["scan", "quant", "plan"])
def test_missing_path_is_a_one_line_io_error(command, tmp_path, capsys):
    """A path that does not exist: exit 1 (an I/O error, not a FormatError), one line naming the path,
    and the README documents exactly that message."""
    missing = str(tmp_path / "nope.safetensors")
    assert main([command, missing]) == 1
    err = capsys.readouterr().err
    assert err == f"paramkit: error: {missing}: No such file or directory\n", err
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert err.strip().replace(missing, "PATH") in readme
    row = next(ln for ln in readme.splitlines() if ln.startswith("| `unknown_format` |"))
    assert "does not exist" in row and "exit 1" in row, row


def test_every_subcommand_has_a_description():
    for name, parser in _subparsers().items():
        assert parser.description and len(parser.description) > 40, name
        assert parser.description in " ".join(parser.format_help().split()) or \
            " ".join(parser.description.split()[:6]) in " ".join(parser.format_help().split()), name


def test_sharded_scan_shows_declared_totals_in_words(tmp_path, capsys, monkeypatch):
    import synthetic_models as sm
    d = sm.write_model(str(tmp_path / "m"), sm.Model("s", [("model.embed_tokens.weight", "BF16", (64, 32)),
                                                         ("model.layers.0.mlp.up_proj.weight", "BF16", (32, 32)),
                                                         ("lm_head.weight", "BF16", (64, 32))], None), shards=2)
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["scan", d, "--no-stats"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("declared total_size"))
    nbytes = 2 * (64 * 32 + 32 * 32 + 64 * 32)
    assert "{" not in line and re.search(rf"\b{nbytes:,} \(index metadata; computed {nbytes:,}: matches\)", line)
