"""Terminal output a person can read: every line of scan, quant, plan and doctor fits the width
(COLUMNS, 80 when piped), for MiniLM and the demo at 80 and 120 columns; tensor names are shortened
in the middle and never wrapped; dtypes and numbers are whole (checked against values decoded here
from the file's bytes); columns are dropped in the stated order; --wide, --sort, --filter, --top, --format."""
from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from rich.cells import cell_len

from conftest import bf16_to_f64, tensor_infos
from paramkit.cli import main

WIDTHS = (80, 120)
STAT_HEADERS = ("min", "max", "mean", "std", "absmax", "zeros", "nan", "inf")
#: the stated order in which scan's columns are left out when the width is short (README, --help)
SCAN_DROP_ORDER = ("role", "inf", "nan", "min", "max", "zeros", "mean", "std", "absmax")


# ---- helpers ------------------------------------------------------------------------------------
def run(argv, monkeypatch, capsys, width: int | None = None):
    if width is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", str(width))
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_fits(out: str, width: int):
    too_wide = [(cell_len(ln), ln) for ln in out.splitlines() if cell_len(ln) > width]
    assert not too_wide, f"{len(too_wide)} lines wider than {width}: {too_wide[:3]}"


def values(path: str) -> dict[str, tuple[str, tuple, np.ndarray]]:
    """name -> (dtype, shape, values) decoded from the file's bytes here (F32, BF16, I64)."""
    out = {}
    with open(path, "rb") as f:
        for t in tensor_infos(path):
            f.seek(t.offset)
            raw = f.read(t.nbytes)
            if t.dtype == "F32":
                v = np.frombuffer(raw, "<f4").astype(np.float64)
            elif t.dtype == "BF16":
                v = bf16_to_f64(np.frombuffer(raw, "<u2"))
            elif t.dtype == "I64":
                v = np.frombuffer(raw, "<i8")
            else:
                raise AssertionError(f"test helper lacks dtype {t.dtype}")
            out[t.name] = (t.dtype, t.shape, v)
    return out


def expected_stat(v: np.ndarray, key: str):
    if key == "zeros":
        return int(np.count_nonzero(v == 0))
    if key in ("nan", "inf"):
        return int(np.count_nonzero(np.isnan(v) if key == "nan" else np.isinf(v)))
    return {"min": np.min, "max": np.max, "mean": np.mean, "std": np.std,
            "absmax": lambda a: np.max(np.abs(a))}[key](v.astype(np.float64))


def table_block(out: str, title: str) -> tuple[list[str], list[list[str]]]:
    """(headers, rows of cells) of the table printed under the line `title`; cells are separated by
    2 or more spaces (the tables' column gap), so a cell such as "11.82 MB" stays one cell."""
    lines = out.splitlines()
    i = lines.index(title)

    def cells(ln: str) -> list[str]:
        return re.split(r"\s{2,}", ln.strip())

    header = cells(lines[i + 1])
    assert set(lines[i + 2].strip()) == {"─"}, lines[i + 2]
    rows = []
    for ln in lines[i + 3:]:
        if not ln.strip() or ln[0] == " " or len(cells(ln)) != len(header):
            break
        rows.append(cells(ln))
    return header, rows


def matches_shortened(shown: str, name: str) -> bool:
    """`shown` is `name`, or its head + '…' + its tail."""
    if shown == name:
        return True
    if "…" not in shown:
        return False
    head, tail = shown.split("…")
    return name.startswith(head) and name.endswith(tail) and len(head) + len(tail) < len(name)


def check_tensor_table(out: str, path: str, width: int, expect_names: list[str] | None = None):
    """The tensor table: fits, names whole or shortened in the middle (never wrapped), dtype and
    shape whole, every number whole and equal (to its 4 significant digits) to the file's values."""
    vals = values(path)
    header, rows = table_block(out, "tensors")
    assert header[:3] == ["name", "dtype", "shape"], header
    names = expect_names if expect_names is not None else list(vals)[:len(rows)]
    assert len(rows) == len(names), (len(rows), len(names))
    for toks, name in zip(rows, names):
        dtype, shape, v = vals[name]
        cells = dict(zip(header, toks))
        assert matches_shortened(cells["name"], name), (cells["name"], name)
        assert cells["dtype"] == dtype
        assert cells["shape"] == ("×".join(map(str, shape)) or "scalar")
        for key in STAT_HEADERS:
            if key not in cells:
                continue
            want = expected_stat(v, key)
            got = float(cells[key].replace(",", ""))         # a cut number does not parse
            if key in ("zeros", "nan", "inf") or (dtype == "I64" and key in ("min", "max", "absmax")):
                assert got == want, (name, key, cells[key], want)
            else:
                assert got == pytest.approx(want, rel=6e-4, abs=1e-300), (name, key, cells[key], want)
    assert_fits(out, width)
    return header, rows


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory) -> str:
    from paramkit.demo import write_demo_checkpoint
    return write_demo_checkpoint(str(tmp_path_factory.mktemp("demo")))


@pytest.fixture(params=["minilm", "demo"])
def model_path(request, minilm_path, demo_path) -> str:
    return minilm_path if request.param == "minilm" else demo_path


# ---- the pieces ---------------------------------------------------------------------------------
def test_terminal_width_sources(monkeypatch):
    from paramkit.cli_render import terminal_width

    class Pipe(io.StringIO):
        def isatty(self):
            return False

    monkeypatch.setenv("COLUMNS", "123")
    assert terminal_width(Pipe()) == 123
    monkeypatch.delenv("COLUMNS")
    assert terminal_width(Pipe()) == 80
    monkeypatch.setenv("COLUMNS", "not a number")
    assert terminal_width(Pipe()) == 80


def test_shorten_middle_keeps_the_meaningful_tail():
    from paramkit.cli_render import shorten_middle
    name = "encoder.layer.0.attention.self.query.weight"
    assert shorten_middle(name, 39) == "enc…layer.0.attention.self.query.weight"     # the example
    assert shorten_middle(name, len(name)) == name
    for w in range(1, len(name) + 1):
        s = shorten_middle(name, w)
        assert cell_len(s) <= w, (w, s)
        if w >= 3:
            assert matches_shortened(s, name), (w, s)
        if w >= 10:                                   # room for 3 + '…' + 'weight'
            assert s.endswith("weight"), (w, s)


def test_percent_never_rounds_a_share_to_zero():
    from paramkit.cli_render import percent
    assert percent(3, 11_720_448) != "0.0%" and float(percent(3, 11_720_448)[:-1]) == pytest.approx(
        100 * 3 / 11_720_448, rel=0.05)
    assert percent(0, 10) == "0.0%" and percent(1, 4) == "25.0%" and percent(1, 0) == "-"


def test_columns_drop_in_the_stated_order():
    from rich.console import Console
    from paramkit.cli_render import Col, fit_table
    cols = [Col("name", fit="name", min_width=10), Col("a", drop=1), Col("bb", drop=3), Col("ccc", drop=2)]
    rows = [["x" * 30, "1" * 8, "2" * 8, "3" * 8]]

    def shown(width):
        con = Console(width=width, file=io.StringIO())
        con.print(fit_table(cols, rows, width))
        text = con.file.getvalue()
        assert_fits(text, width)
        return text.splitlines()[0].split(), text

    assert shown(200)[0] == ["name", "a", "bb", "ccc"]
    assert shown(40)[0] == ["name", "a", "bb", "ccc"]      # 10 + 3 × 8 + 3 gaps of 2 = 40
    assert shown(39)[0] == ["name", "a", "ccc"]            # bb (rank 3) goes first
    hdr, text = shown(29)
    assert hdr == ["name", "a"] and "columns left out to fit 29 columns: bb, ccc" in " ".join(text.split())
    cols[1:] = [Col("a")]                # "a" always shown: below its min_width the name gives way
    hdr, text = shown(18)
    assert hdr == ["name", "a"] and "xxx…xxxx  11111111" in text


# ---- every command fits, at 80 and 120 columns ------------------------------------------------------
@pytest.mark.parametrize("width", WIDTHS)
def test_scan_fits_and_keeps_names_dtypes_numbers_whole(model_path, width, monkeypatch, capsys):
    rc, out, err = run(["scan", model_path, "--all"], monkeypatch, capsys, width)
    assert rc == 0, err
    header, rows = check_tensor_table(out, model_path, width)
    assert len(rows) == len(values(model_path))                      # --all: every tensor, one line each
    assert {"std", "absmax"} <= set(header)
    if width == 120:
        assert {"mean", "zeros"} <= set(header)
    left_out = [h for h in SCAN_DROP_ORDER if h not in header]
    assert left_out == list(SCAN_DROP_ORDER[:len(left_out)]), header    # dropped in the stated order
    if left_out:
        assert f"columns left out to fit {width} columns: {', '.join(left_out)}" in " ".join(out.split())


@pytest.mark.parametrize("width", WIDTHS)
def test_demo_command_fits(width, tmp_path, demo_path, monkeypatch, capsys):
    rc, out, err = run(["demo", "--dir", str(tmp_path)], monkeypatch, capsys, width)
    assert rc == 0, err
    check_tensor_table(out, str(tmp_path / "model.safetensors"), width)


def test_piped_without_columns_is_80_wide(minilm_path, monkeypatch, capsys):
    rc, out, _ = run(["scan", minilm_path], monkeypatch, capsys, None)
    assert rc == 0
    check_tensor_table(out, minilm_path, 80)
    assert max(cell_len(ln) for ln in out.splitlines()) > 70


def test_zeros_column_shows_the_count(minilm_path, monkeypatch, capsys):
    """word_embeddings has 3 zeros in 11.7M elements: the column says 3, not 0.0%."""
    rc, out, _ = run(["scan", minilm_path, "--filter", "word_embeddings"], monkeypatch, capsys, 120)
    header, rows = table_block(out, "tensors")
    assert dict(zip(header, rows[0]))["zeros"] == "3"
    rc, out, _ = run(["scan", minilm_path], monkeypatch, capsys, 120)
    _, rows = table_block(out, "stored elements by dtype")
    dtypes = {r[0]: r[2] for r in rows}
    assert dtypes["I64"] != "0.0%" and float(dtypes["I64"][:-1]) == pytest.approx(100 * 512 / (22_713_216 + 512),
                                                                                  rel=0.05)


@pytest.mark.parametrize("width", WIDTHS)
def test_quant_fits_and_shows_the_worst_tensor(model_path, width, monkeypatch, capsys):
    import paramkit
    rc, out, err = run(["quant", model_path], monkeypatch, capsys, width)
    assert rc == 0, err
    assert_fits(out, width)
    summary = {s["scheme"]: s for s in paramkit.scan(model_path, stats=False, quant="default").quant_summary()}
    header, rows = table_block(out, "quantization schemes (fewest bits first)")
    assert [r[0] for r in rows] == sorted(summary, key=lambda s: (summary[s]["bits_per_weight"],
                                                                  -summary[s]["sqnr_db"]))
    col = header.index("SQNR dB")
    for r in rows:
        assert float(r[col]) == pytest.approx(summary[r[0]]["sqnr_db"], abs=0.006)
    _, worst = table_block(out, "worst tensor per scheme (lowest SQNR)")
    for r in worst:
        assert r[-1] == summary[r[0]]["worst"][0]["name"]          # whole at 80 columns too


@pytest.mark.parametrize("width", WIDTHS)
def test_plan_fits(model_path, width, monkeypatch, capsys):
    from paramkit.planning import GPUS
    for extra in ([], ["--explain"]):
        rc, out, err = run(["plan", model_path, *extra], monkeypatch, capsys, width)
        assert rc == 0, err
        assert_fits(out, width)
        lines = out.splitlines()
        for name, _, _ in GPUS:      # one line per GPU, name whole, "usable" whole
            row = [ln for ln in lines if ln.startswith(name + " ")]
            assert len(row) == 1, name
            assert re.search(r"\s\d+\.\d\d GB\s", row[0]), row[0]


@pytest.mark.parametrize("width", WIDTHS)
def test_doctor_fits(width, monkeypatch, capsys):
    rc, out, _ = run(["doctor"], monkeypatch, capsys, width)
    assert rc == 0
    assert_fits(out, width)
    assert "backends (auto picks the first available)" in out


def test_wide_shows_every_column_and_whole_names(minilm_path, monkeypatch, capsys):
    rc, out, _ = run(["scan", minilm_path, "--wide", "--all"], monkeypatch, capsys, 80)
    header, rows = check_tensor_table(out, minilm_path, 10_000)
    assert header == ["name", "dtype", "shape", "role", *STAT_HEADERS]
    assert [r[0] for r in rows] == list(values(minilm_path))
    assert "columns left out" not in out


def test_scan_in_a_real_terminal_width_is_not_160(minilm_path, tmp_path):
    """As a subprocess with COLUMNS=100: the width is COLUMNS (before: always 160 when piped)."""
    import os
    env = dict(os.environ, COLUMNS="100")
    out = subprocess.run([sys.executable, "-m", "paramkit", "scan", minilm_path], capture_output=True, text=True,
                         env=env, check=True).stdout
    check_tensor_table(out, minilm_path, 100)


# ---- --sort, --filter, --top, --format ----------------------------------------------------------------
def test_sort_top_csv(minilm_path, monkeypatch, capsys):
    vals = values(minilm_path)
    rc, out, _ = run(["scan", minilm_path, "--sort", "absmax", "--top", "5", "--format", "csv"],
                     monkeypatch, capsys, 80)
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    want = sorted(vals, key=lambda n: -np.max(np.abs(vals[n][2].astype(np.float64))))[:5]
    assert [r["name"] for r in rows] == want
    for r in rows:
        assert float(r["absmax"]) == pytest.approx(float(np.max(np.abs(vals[r["name"]][2]))), rel=1e-12)
        assert r["dtype"] == vals[r["name"]][0]
    rc, out, _ = run(["scan", minilm_path, "--sort", "min", "--top", "1", "--format", "csv"], monkeypatch, capsys)
    assert next(csv.DictReader(io.StringIO(out)))["name"] == min(vals, key=lambda n: np.min(vals[n][2]))


def test_filter_every_format(minilm_path, monkeypatch, capsys):
    names = [n for n in values(minilm_path) if re.search(r"attention\.self\.query", n)]
    assert len(names) == 12
    rc, out, _ = run(["scan", minilm_path, "--filter", r"attention\.self\.query", "--format", "csv"],
                     monkeypatch, capsys)
    assert [r["name"] for r in csv.DictReader(io.StringIO(out))] == names
    rc, out, _ = run(["scan", minilm_path, "--filter", r"attention\.self\.query", "--format", "markdown"],
                     monkeypatch, capsys, 80)
    md = [ln for ln in out.splitlines() if ln.startswith("| ") and not ln.startswith("| ---")]
    assert md[0] == "| name | dtype | shape | role | " + " | ".join(STAT_HEADERS) + " |"
    assert [ln.split(" | ")[0][2:] for ln in md[1:]] == names       # whole names, not width-limited
    assert max(cell_len(ln) for ln in md) > 80
    rc, out, _ = run(["scan", minilm_path, "--filter", r"attention\.self\.query", "--format", "json"],
                     monkeypatch, capsys)
    d = json.loads(out)
    assert [t["name"] for t in d["tensors"]] == names and d["total_params"] == 22_713_216
    # only the matching tensors were read, and the model-wide statistics are theirs
    vals, infos = values(minilm_path), {t.name: t for t in tensor_infos(minilm_path)}
    assert d["timing"]["data_bytes"] == sum(infos[n].nbytes for n in names)
    assert d["aggregates"]["numel"] == sum(vals[n][2].size for n in names)
    assert d["aggregates"]["max"] == max(float(vals[n][2].max()) for n in names)
    rc, out, _ = run(["scan", minilm_path, "--filter", r"attention\.self\.query", "--top", "3"],
                     monkeypatch, capsys, 120)
    check_tensor_table(out, minilm_path, 120, expect_names=names[:3])
    assert "3 of 12 tensors matching" in out


def test_json_alias_is_format_json(small_checkpoint, monkeypatch, capsys):
    outs = []
    for flags in (["--json"], ["--format", "json"]):
        rc, out, _ = run(["scan", small_checkpoint, *flags], monkeypatch, capsys)
        d = json.loads(out)
        for k in ("timing", "engine"):
            d.pop(k)
        outs.append(d)
    assert outs[0] == outs[1] and len(outs[0]["tensors"]) == 8


@pytest.mark.parametrize("argv, message", [
    (["scan", "{path}", "--filter", "("], "--filter '(' is not a regular expression"),
    (["scan", "{path}", "--filter", "no_such_tensor"], "--filter 'no_such_tensor' matches none of the"),
    (["quant", "{path}", "--tensors", "("], "--tensors '(' is not a regular expression"),
    (["quant", "{path}", "--tensors", "no_such_tensor"], "--tensors 'no_such_tensor' selects no tensor"),
    (["quant", "{path}", "--tensors", "position_ids"], "selects no tensor to quantize"),
    (["quant", "{path}", "--tensors", "zzz", "--out", "{tmp}/x.safetensors", "--scheme", "q8_0"],
     "selects no tensor"),
    (["scan", "{path}", "--no-stats", "--sort", "std"], "--sort std needs the statistics"),
    (["scan", "{path}", "--top", "0"], "--top N needs N >= 1"),
])
def test_bad_selection_is_a_one_line_error(argv, message, small_checkpoint, tmp_path, monkeypatch, capsys):
    argv = [a.format(path=small_checkpoint, tmp=tmp_path) for a in argv]
    rc, out, err = run(argv, monkeypatch, capsys, 80)
    assert rc == 1
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "x.safetensors").exists()


def test_bad_regex_as_a_subprocess_has_no_traceback(small_checkpoint):
    p = subprocess.run([sys.executable, "-m", "paramkit", "quant", small_checkpoint, "--tensors", "("],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr


def test_stated_drop_order_is_the_one_in_readme_and_help():
    import os
    from paramkit.cli import build_parser
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert f"| `scan`, `demo` tensor table | {', '.join(SCAN_DROP_ORDER)} | name, dtype, shape |" in readme
    import argparse
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert ", ".join(SCAN_DROP_ORDER) in " ".join(sub.choices["scan"].format_help().split())


def test_real_terminal_width_without_columns(minilm_path):
    """In a terminal (a pty of 90 columns here) with COLUMNS unset, the width is the terminal's."""
    import fcntl
    import os
    import pty
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 90, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    p = subprocess.Popen([sys.executable, "-m", "paramkit", "scan", minilm_path], stdin=slave, stdout=slave,
                         stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:              # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert p.wait(timeout=120) == 0
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode()).replace("\r\n", "\n")
    check_tensor_table(out, minilm_path, 90)
    assert "columns left out to fit 90 columns" in " ".join(out.split())
