"""The HTML reports (ScanReport.to_html, DiffReport.to_html, `paramkit report`, `paramkit diff -o x.html`): one
self-contained file (no script, no external resource), the expected sections and charts, numbers that match
the model written here, strings from the file escaped, the engines' histograms (drawn without reading the file
again), the missing-extra error."""
from __future__ import annotations

import html.parser
import os
import subprocess
import sys

import numpy as np
import pytest

import paramkit
from conftest import available_backends
from paramkit.cli import main

CRAFTED = "model.layers.1.<script>alert(1)</script>.weight"
SCAN_HEADINGS = ["Summary", "Parameters by module and layer", "Per-layer statistics", "Value histograms",
                 "Quantization error", "Outliers", "Deployment plan"]
DIFF_HEADINGS = ["Summary", "Change per layer", "Most changed tensors", "Added, removed and reshaped tensors"]
OUTLIER = "model.layers.2.mlp.down_proj.weight"


def model_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(17)
    t = {"model.embed_tokens.weight": rng.normal(0, 0.02, (256, 64)).astype(np.float32)}
    for i in range(4):
        p = f"model.layers.{i}"
        t[f"{p}.self_attn.q_proj.weight"] = rng.normal(0, 0.05, (64, 64)).astype(np.float32)
        t[f"{p}.mlp.down_proj.weight"] = rng.normal(0, 0.05, (64, 128)).astype(np.float32)
        t[f"{p}.input_layernorm.weight"] = np.ones(64, dtype=np.float16)
    t[OUTLIER][3, 5] = 40.0          # the one heavy tail: absmax/std far above every other tensor's
    t[CRAFTED] = rng.normal(0, 0.05, (64, 32)).astype(np.float32)
    return t


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from safetensors.numpy import save_file
    d = tmp_path_factory.mktemp("report")
    arrays = model_arrays()
    path = str(d / "model.safetensors")
    save_file(arrays, path, metadata={"format": "pt", "note": "<img src=x onerror=alert(1)>evil"})
    return path, arrays


@pytest.fixture(scope="module")
def page(model):
    path, _ = model
    r = paramkit.scan(path, quant="default", backend="numpy")
    return r, r.to_html()


class Doc(html.parser.HTMLParser):
    """Every start tag with its attributes, the text of the h2 headings, and sections by id."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.h2: list[str] = []
        self._in_h2 = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data)


def assert_self_contained(text: str) -> Doc:
    doc = Doc(text)
    names = [t for t, _ in doc.tags]
    for bad in ("script", "link", "img", "iframe", "object", "embed", "base", "meta http-equiv"):
        assert bad not in names, bad
    for tag, attrs in doc.tags:
        assert "src" not in attrs, (tag, attrs)
        for k, v in attrs.items():
            if k in ("href", "xlink:href") and v is not None:
                assert v.startswith("#"), (tag, k, v)
            assert not k.startswith("on"), (tag, k)      # no event handlers
    low = text.lower()
    assert "http://" not in low and "https://" not in low
    assert "<link" not in low and "@import" not in low and "@font-face" not in low
    for part in low.split("url(")[1:]:
        assert part.startswith("#"), part[:40]
    return doc


def test_scan_report_is_self_contained_with_sections_and_charts(page):
    _, text = page
    doc = assert_self_contained(text)
    assert doc.h2 == SCAN_HEADINGS
    assert text.count("<svg") >= 4 + 3 + 1 + 1    # module and layer bars, 3 per-layer lines, histograms, SQNR
    assert 'charset="utf-8"' in text


def test_numbers_match_the_model(page, model):
    r, text = page
    _, arrays = model
    total = sum(a.size for a in arrays.values())
    assert f"{total:,}" in text
    assert "parameters per layer (4 layers)" in text
    f16 = sum(a.size for a in arrays.values() if a.dtype == np.float16)
    assert f"<td class=\"n\">{f16:,}</td>" in text
    for q in ("int8_tensor", "q4_0", "nf4"):
        assert f"<td>{q}</td>" in text


def test_outlier_table_leads_with_the_planted_outlier(page):
    _, text = page
    part = text.split('<section id="outliers">', 1)[1].split("</section>", 1)[0]
    first = part.split("<tbody>", 1)[1].split("</tr>", 1)[0]
    assert OUTLIER in first and "40" in first


def test_strings_from_the_file_are_escaped(page):
    _, text = page
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text      # the name is shown, as text
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;evil" in text   # the metadata value too
    assert "script" not in [t for t, _ in Doc(text).tags]


def binned_histogram(x: np.ndarray, exact: bool) -> tuple[float, float, list[int]]:
    """(lo, hi, counts) of the compact histogram, from the definition: the binned values (the values, or their
    bfloat16 truncation: the float32 bits with the low 16 cleared), 64 bins of floor((v - lo) / (hi - lo) * 64)."""
    v = x.astype(np.float64).ravel()
    if not exact:
        v = (x.astype(np.float32).ravel().view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32).astype(np.float64)
    v = v[np.isfinite(v)]
    lo, hi = float(v.min()), float(v.max())
    k = np.zeros(v.size, dtype=np.int64) if lo == hi else np.clip(np.floor((v - lo) / (hi - lo) * 64), 0, 63)
    return lo, hi, np.bincount(k.astype(np.int64), minlength=64).tolist()


@pytest.mark.parametrize("backend", available_backends())
def test_histograms_are_the_engines_and_the_definitions(model, backend):
    path, arrays = model
    r = paramkit.scan(path, backend=backend)
    for name, x in arrays.items():
        h = r.tensor(name).histogram
        exact = x.dtype == np.float16
        lo, hi, counts = binned_histogram(x, exact)
        assert (h["lo"], h["hi"], h["exact"], h["nonfinite"]) == (lo, hi, exact, 0), name
        assert h["counts"].tolist() == counts, name
        assert sum(counts) == x.size


def test_report_draws_the_scans_histograms_without_reading_the_file(model, tmp_path):
    from safetensors.numpy import save_file
    _, arrays = model
    arrays = dict(arrays, **{"model.layers.9.mlp.up_proj.weight": np.random.default_rng(5).normal(
        0, 0.1, (32, 16)).astype(np.float16)})
    copy = str(tmp_path / "gone.safetensors")
    save_file(arrays, copy)
    r = paramkit.scan(copy, backend="numpy", quant=None)
    os.remove(copy)                                      # the report must not read it again
    text = r.to_html(histograms=12)
    part = text.split('<section id="histograms">', 1)[1].split("</section>", 1)[0]
    assert part.count("<svg") == 11                      # every tensor with std > 0
    assert "exact for 8- and 16-bit dtypes" in part and "bfloat16 truncation" in part
    assert "F32 64×128, absmax/std" in part and "bf16-resolution bins" in part
    assert "F16 32×16, absmax/std" in part and "exact bins" in part


def test_report_without_quantiles_says_why_there_are_no_histograms(model):
    path, _ = model
    text = paramkit.scan(path, backend="numpy", quantiles=False).to_html()
    part = text.split('<section id="histograms">', 1)[1].split("</section>", 1)[0]
    assert "<svg" not in part and "quantiles=False" in part


def test_histogram_bars():
    from paramkit.html_report import histogram_bars
    counts = np.arange(64)
    edges, got = histogram_bars({"lo": -1.0, "hi": 3.0, "counts": counts})
    assert len(edges) == 65 and edges[0] == -1.0 and edges[-1] == 3.0 and edges[16] == 0.0 and got == list(range(64))
    assert histogram_bars({"lo": 2.0, "hi": 2.0, "counts": [5] + [0] * 63}) == ([1.5, 2.5], [5])
    assert histogram_bars({"lo": 1e30, "hi": 1e30, "counts": [5] + [0] * 63}) == ([1e30 - 1e30 / 128, 1e30 + 1e30 / 128],
                                                                                 [5])


def test_cli_report_writes_the_file(model, tmp_path, capsys):
    path, arrays = model
    out = tmp_path / "report.html"
    assert main(["report", path, "-o", str(out), "--no-quant", "--histograms", "2", "--backend", "numpy"]) == 0
    text = out.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert "no quantization simulated" in text
    assert f"{sum(a.size for a in arrays.values()):,}" in capsys.readouterr().out


def _changed_copy(arrays, path):
    from safetensors.numpy import save_file
    b = dict(arrays)
    b["model.layers.2.self_attn.q_proj.weight"] = arrays["model.layers.2.self_attn.q_proj.weight"] * np.float32(1.5)
    b["model.layers.3.mlp.down_proj.weight"] = arrays["model.layers.3.mlp.down_proj.weight"] + np.float32(1e-3)
    b[CRAFTED] = arrays[CRAFTED] * np.float32(1.01)
    del b["model.layers.0.input_layernorm.weight"]
    save_file(b, path)


def test_diff_html(model, tmp_path, capsys):
    a, arrays = model
    b = str(tmp_path / "b.safetensors")
    _changed_copy(arrays, b)
    out = tmp_path / "diff.html"
    assert main(["diff", a, b, "-o", str(out)]) == 1       # they differ
    capsys.readouterr()
    text = out.read_text(encoding="utf-8")
    doc = assert_self_contained(text)
    assert doc.h2 == DIFF_HEADINGS
    assert text.count("<svg") >= 3
    most = text.split('<section id="most-changed">', 1)[1].split("</section>", 1)[0]
    rows = most.split("<tbody>", 1)[1].split("</tr>")
    assert "model.layers.2.self_attn.q_proj.weight" in rows[0]     # rel_l2 0.5: the most changed
    assert "model.layers.3.mlp.down_proj.weight" in rows[1]
    assert "0.5</td>" in rows[0]
    structure = text.split('<section id="structure">', 1)[1]
    assert "model.layers.0.input_layernorm.weight" in structure and "removed" in structure
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in most


def test_diff_to_html_of_identical_models(model, tmp_path):
    a, _ = model
    d = paramkit.diff(a, a)
    text = d.to_html(tmp_path / "same.html")
    assert (tmp_path / "same.html").read_text(encoding="utf-8") == text
    assert_self_contained(text)
    assert "identical" in text and "no tensor&#x27;s values differ" in text


def test_missing_matplotlib_names_the_extra(page, monkeypatch, model, capsys):
    r, _ = page
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'paramkit\[report\]'"):
        r.to_html()
    path, _ = model
    assert main(["report", path, "-o", os.devnull]) == 1
    assert "paramkit[report]" in capsys.readouterr().err


def test_import_paramkit_without_matplotlib(model):
    path, _ = model
    code = ("import sys; sys.modules['matplotlib'] = None; import paramkit, paramkit.cli; "
            f"r = paramkit.scan({path!r}, stats=False); print(r.total_params)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == sum(a.size for a in model_arrays().values())
