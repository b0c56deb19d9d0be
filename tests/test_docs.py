"""Keeps the README honest: every FormatError code is documented, and the quick-start commands
that .ci/run executes are present."""
from __future__ import annotations

import os

from paramkit.formats import ERROR_CODES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def test_every_error_code_documented():
    text = _readme()
    missing = [c for c in ERROR_CODES if f"`{c}`" not in text]
    assert not missing, f"README lacks error codes: {missing}"


def test_quick_start_markers():
    text = _readme()
    assert "<!-- quickstart:install -->" in text and "<!-- quickstart:test -->" in text
    assert "python -m pytest" in text
