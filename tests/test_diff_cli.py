"""`paramkit diff A B`: exit status 0 identical / 1 different / 2 error (one line, no traceback), --threshold,
--only-changed, --format json and -o, and tables that fit COLUMNS=80 and COLUMNS=200."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from paramkit.cli import main

from test_diff import save

LONG = "model.layers.{}.self_attn.some_really_long_projection_name.weight"


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    a = {LONG.format(i): rng.standard_normal((16, 8)).astype(np.float32) for i in range(4)}
    a["same"] = np.arange(6, dtype=np.int64)
    b = {k: v.copy() for k, v in a.items()}
    b[LONG.format(1)] = (a[LONG.format(1)] * (1 + 1e-4)).astype(np.float32)     # rel_l2 ~1e-4
    b[LONG.format(2)] = (a[LONG.format(2)] + 0.5).astype(np.float32)             # rel_l2 ~0.5
    return save(tmp_path / "a.safetensors", a), save(tmp_path / "b.safetensors", b), a, b


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["diff", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_exit_status_identical_and_different(pair, capsys):
    pa, pb, _, _ = pair
    assert run(capsys, pa, pa)[0] == 0
    rc, out, _ = run(capsys, pa, pb)
    assert rc == 1 and "different" in out and "changed" in out


def test_threshold(pair, capsys):
    pa, pb, _, _ = pair
    assert run(capsys, pa, pb, "--threshold", "1e-3")[0] == 1          # layer 2 is far above it
    assert run(capsys, pa, pb, "--threshold", "1.0")[0] == 0
    rc, out, _ = run(capsys, pa, pb, "--threshold", "1e-3", "--only-changed", "--format", "json")
    names = [t["name"] for t in json.loads(out)["tensors"]]
    assert rc == 1 and names == [LONG.format(2)]
    rc, _, err = run(capsys, pa, pb, "--threshold", "-1")
    assert rc == 2 and err.startswith("paramkit: error:")


def test_added_tensor_is_a_difference_whatever_the_threshold(pair, tmp_path, capsys):
    pa, _, a, _ = pair
    pc = save(tmp_path / "c.safetensors", {**a, "extra": np.ones(2, np.float32)})
    assert run(capsys, pa, pc, "--threshold", "1e9")[0] == 1


def test_only_changed_and_json(pair, tmp_path, capsys):
    pa, pb, a, _ = pair
    rc, out, _ = run(capsys, pa, pb, "--only-changed", "--format", "json")
    d = json.loads(out)
    assert rc == 1 and sorted(t["name"] for t in d["tensors"]) == sorted([LONG.format(1), LONG.format(2)])
    assert d["aggregates"]["counts"]["identical"] == 3 and d["identical"] is False
    report = tmp_path / "report.json"
    rc, out, _ = run(capsys, pa, pb, "-o", str(report))
    assert rc == 1 and "most changed" in out
    saved = json.loads(report.read_text())
    assert len(saved["tensors"]) == len(a) and saved["schema_version"] == 1
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("width", [80, 200])
def test_output_fits_the_width(pair, capsys, monkeypatch, width):
    pa, pb, _, _ = pair
    monkeypatch.setenv("COLUMNS", str(width))
    rc, out, _ = run(capsys, pa, pb)
    lines = out.splitlines()
    assert rc == 1 and lines
    assert max(len(ln) for ln in lines) <= width, [ln for ln in lines if len(ln) > width]
    if width == 200:   # room for whole names and every column
        assert LONG.format(2) in out and "shape" in out and "columns left out" not in out
    else:
        assert "…" in out and "rel_l2" in out and "columns left out" in out


def test_wide_keeps_whole_names(pair, capsys, monkeypatch):
    pa, pb, _, _ = pair
    monkeypatch.setenv("COLUMNS", "60")
    rc, out, _ = run(capsys, pa, pb, "--wide")
    assert rc == 1 and LONG.format(3) in out and "mean |Δ|" in out


def test_errors_exit_2_with_one_line(pair, tmp_path, capsys):
    pa, _, _, _ = pair
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    for argv in ([pa, str(tmp_path / "missing.safetensors")], [pa, str(bad)], [pa, pa, "--tensors", "("],
                 [pa, pa, "-o", str(tmp_path / "no-such-dir" / "r.html")]):
        rc, out, err = run(capsys, *argv)
        assert rc == 2, argv
        assert len(err.strip().splitlines()) == 1 and err.startswith("paramkit: error"), err
        assert "Traceback" not in err
    assert run(capsys, pa, str(bad))[2].startswith("paramkit: error [header_not_json]:")


def test_real_process_exit_codes(pair, tmp_path):
    pa, pb, _, _ = pair
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    codes = [subprocess.run([sys.executable, "-m", "paramkit", "diff", *argv], capture_output=True, env=env).returncode
             for argv in ([pa, pa], [pa, pb], [pa, str(tmp_path / "nope")])]
    assert codes == [0, 1, 2]


def test_help_names_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["diff", "--help"])
    text = capsys.readouterr().out
    for opt in ("--only-changed", "--threshold", "--format", "--output", "--tensors", "--all", "--wide",
                "--backend", "--threads", "--progress"):
        assert opt in text, opt
    assert "exit" in text.lower()


def test_mapped_names_get_a_column_of_their_own(tmp_path, capsys, monkeypatch):
    from test_diff_formats import hf_llama, write_llama_gguf
    hf = hf_llama(np.random.default_rng(1), np.float32)
    st = save(tmp_path / "m.safetensors", hf)
    gg = str(tmp_path / "m.gguf")
    write_llama_gguf(gg, hf)
    monkeypatch.setenv("COLUMNS", "200")
    rc, out, _ = run(capsys, st, gg)
    assert rc == 0 and "name in B" in out and "blk.1.attn_q.weight" in out
    assert "conversion: rows un-permuted (llama.cpp Q/K permutation, 4 heads) (2 tensors)" in out
    rc, out, _ = run(capsys, st, st)
    assert rc == 0 and "name in B" not in out
