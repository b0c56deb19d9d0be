"""The charts of the HTML reports (paramkit.html_report): matplotlib figures rendered to SVG text that is
inlined in the page (text kept as <text> in the page's own sans-serif font, no font file, no URL, element ids
made unique per chart). matplotlib is the optional `report` extra: ImportError naming it when missing."""
from __future__ import annotations

import io
import itertools
import math
import re
from typing import Sequence

INSTALL_HINT = "the HTML report needs matplotlib: pip install 'paramkit[report]'"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")
_ids = itertools.count()


def _plt():
    """pyplot on the Agg backend with the report's settings; ImportError with the install hint."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "paramkit", "text.parse_math": False,
                         "font.family": "sans-serif", "font.size": 9, "axes.titlesize": 9.5,
                         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
                         "grid.alpha": 0.3, "legend.fontsize": 8, "legend.frameon": False})
    return plt


def require() -> None:
    """ImportError (naming `pip install 'paramkit[report]'`) when matplotlib is not installed."""
    _plt()


def to_svg(fig) -> str:
    """`fig` as an <svg> element for inlining in HTML: no XML prolog, DOCTYPE, metadata or namespace URLs
    (the HTML parser puts inline <svg> in the SVG namespace), href instead of xlink:href, ids prefixed with a
    per-chart key so that charts on one page never resolve each other's #references."""
    plt = _plt()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None, "Format": None,
                                                                   "Type": None})
    plt.close(fig)
    s = buf.getvalue()
    s = s[s.index("<svg"):]
    s = re.sub(r"\s*<metadata>.*?</metadata>", "", s, flags=re.S)
    s = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", s)
    s = s.replace("xlink:href=", "href=")
    key = f"c{next(_ids)}-"
    s = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{key}{m.group(1)}"', s)
    s = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{key}{m.group(1)}"', s)
    s = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{key}{m.group(1)})", s)
    return s


def _plain_ticks(ax, axis: str = "y", log: bool = False, counts: bool = False) -> None:
    """Tick labels as plain text, never mathtext or an offset like "1e7" (the page shows text as is): counts
    and log axes as 1.2M / 0.001, other values with the digits their spacing needs."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    a = ax.yaxis if axis == "y" else ax.xaxis
    if counts or log:
        a.set_major_formatter(FuncFormatter(lambda v, _: _tick(v)))
    else:   # digits as the tick spacing needs them (0.9961, 0.9962), no offset, no mathtext
        from matplotlib.ticker import ScalarFormatter
        f = ScalarFormatter(useOffset=False, useMathText=False)
        f.set_powerlimits((-4, 6))
        a.set_major_formatter(f)
    if log:   # labels at 1, 2, 5 x 10^k: a range of one or two decades still gets several
        from matplotlib.ticker import LogLocator
        a.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if _decades(a) < 3 else (1.0,)))
        a.set_minor_formatter(NullFormatter())


def _decades(axis) -> float:
    lo, hi = axis.get_view_interval()
    return math.log10(hi / lo) if lo > 0 and hi > lo else 0.0


def _tick(v: float) -> str:
    """A tick label: 2M, 250K, 0.001, 1e-05."""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.4g}{unit}"
    return f"{v:.3g}"


def _short(name: str, n: int = 48) -> str:
    """A tensor name in at most n characters, shortened in the middle at a '.' boundary (as the tables do)."""
    from .cli_render import shorten_middle
    return shorten_middle(name, n)


def hbars(labels: Sequence[str], values: Sequence[float], *, title: str, xlabel: str, color: str = PALETTE[0]) -> str:
    """Horizontal bars, first label on top (parameters by module)."""
    plt = _plt()
    h = max(1.4, 0.28 * len(labels) + 0.8)
    fig, ax = plt.subplots(figsize=(7.2, h))
    y = range(len(labels))
    ax.barh(list(y), values, color=color)
    ax.set_yticks(list(y), [_short(str(x)) for x in labels])
    ax.invert_yaxis()
    ax.set_title(title, loc="left")
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", visible=False)
    top = max(values, default=0)
    for i, v in enumerate(values):
        ax.text(v + top * 0.01, i, f"{_human(v)}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.15 if top else 1)
    _plain_ticks(ax, "x", counts=True)
    return to_svg(fig)


def _human(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


def bars(labels: Sequence[str], values: Sequence[float], *, title: str, ylabel: str) -> str:
    """Vertical bars over layers (parameters by layer); tick labels thinned to stay readable."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.2, 2.6))
    x = list(range(len(labels)))
    ax.bar(x, values, color=PALETTE[0])
    _layer_ticks(ax, labels)
    ax.set_title(title, loc="left")
    ax.set_ylabel(ylabel)
    ax.grid(axis="x", visible=False)
    _plain_ticks(ax, counts=True)
    return to_svg(fig)


def _layer_ticks(ax, labels: Sequence[str]) -> None:
    """x ticks at layer positions, labelled by the layer's number when names share a prefix ("blk.7" -> 7)."""
    nums = [re.search(r"(\d+)$", str(s)) for s in labels]
    text = [m.group(1) if m else str(s) for m, s in zip(nums, labels)]
    step = max(1, math.ceil(len(labels) / 24))
    ticks = list(range(0, len(labels), step))
    ax.set_xticks(ticks, [text[i] for i in ticks])
    ax.set_xlabel("layer")


def layer_lines(labels: Sequence[str], series: dict[str, Sequence[float | None]], *, title: str, ylabel: str,
                log: bool = False, floor0: bool = False) -> str:
    """One line per series over the layers (None: no point); a legend when there is more than one series;
    floor0: the y axis starts at 0 (shares, counts)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6 if len(series) == 1 else 7.2, 2.6))
    x = list(range(len(labels)))
    vals = [y for ys in series.values() for y in ys if y is not None and math.isfinite(y) and y > 0]
    log = log and bool(vals) and max(vals) > 10 * min(vals)   # within one decade a linear axis reads better
    for (name, ys), color in zip(series.items(), itertools.cycle(PALETTE)):
        pts = [(i, y) for i, y in zip(x, ys) if y is not None and math.isfinite(y) and (not log or y > 0)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, linewidth=1.4,
                    label=_short(name, 28), color=color)
    if log:
        ax.set_yscale("log")
    elif floor0:
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1.08 * max(vals, default=0), 1e-9))
    _plain_ticks(ax, log=log)
    _layer_ticks(ax, labels)
    ax.set_title(title, loc="left")
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return to_svg(fig)


def histogram(edges: Sequence[float], counts: Sequence[int], *, title: str, subtitle: str) -> str:
    """A value histogram (bin edges, counts), counts on a log axis so that the tails show."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.5, 2.3))
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    ax.bar(edges[:-1], [c if c > 0 else 0 for c in counts], width=widths, align="edge", color=PALETTE[0],
           edgecolor="none")
    if any(c > 0 for c in counts):
        ax.set_yscale("log")
        _plain_ticks(ax, log=True)
    ax.set_title(_short(title, 50), loc="left", fontsize=8.5)
    ax.set_xlabel(subtitle, fontsize=7.5)
    ax.tick_params(labelsize=7)
    ax.grid(axis="x", visible=False)
    return to_svg(fig)
