"""Terminal output of every paramkit command, in one place: the width to render at (COLUMNS, the
terminal, 80 when piped), tables fitted to it by dropping columns in a stated priority instead of
cutting cells, tensor names shortened in the middle, and number formats that are never truncated."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Sequence

from rich import box
from rich.cells import cell_len
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .planning import fmt_bytes

#: width when stdout is not a terminal and COLUMNS is unset
PIPE_WIDTH = 80
#: blank columns between two table columns
GAP = 2
#: console width under --wide: nothing is fitted, the terminal wraps what it must
WIDE_WIDTH = 100_000
ELLIPSIS = "…"
#: the narrowest a name or prose column gets when the columns that always stay do not fit otherwise
NARROWEST = 8


def terminal_width(stream=None) -> int:
    """COLUMNS when set to a positive integer, else the terminal's width when `stream` (stdout) is a
    terminal, else 80."""
    env = os.environ.get("COLUMNS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    stream = sys.stdout if stream is None else stream
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns or PIPE_WIDTH
    except (AttributeError, OSError, ValueError):
        pass
    return PIPE_WIDTH


def make_console(*, wide: bool = False) -> Console:
    """The console every command prints to: stdout at terminal_width() (WIDE_WIDTH with --wide)."""
    return Console(width=WIDE_WIDTH if wide else terminal_width())


# ---- numbers: formatted whole, never cut --------------------------------------------------------
def human(n: float) -> str:
    """22.71M-style count."""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def fmt_value(v) -> str:
    """A statistic: integers exactly (thousands separated from 10,000), floats to 4 significant digits."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return f"{v:.4g}"


def fmt_count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def percent(part: float, whole: float) -> str:
    """part/whole as a percentage with enough digits that a non-zero share never reads 0.0%."""
    if not whole:
        return "-"
    p = 100 * part / whole
    if p == 0 or p >= 0.1:
        return f"{p:.1f}%"
    return f"{p:.2g}%"


# ---- names --------------------------------------------------------------------------------------
def shorten_middle(name: str, width: int, min_head: int = 3) -> str:
    """`name` in at most `width` cells: whole if it fits, else a short head, '…' and the longest tail
    that starts at a '.' component boundary (enc…layer.0.attention.self.query.weight); when that
    tail would leave more than a third of the room unused, the tail is cut by characters instead."""
    if cell_len(name) <= width:
        return name
    if width <= 1:
        return ELLIPSIS[:width]
    room = width - 1 - min(min_head, max(width - 2, 0))   # cells for the tail
    parts = name.split(".")
    tail = next((t for t in (".".join(parts[i:]) for i in range(1, len(parts))) if cell_len(t) <= room), "")
    if 3 * cell_len(tail) < 2 * room:
        tail = name
        while tail and cell_len(tail) > room:
            tail = tail[1:]
    head = name
    while head and cell_len(head) + 1 + cell_len(tail) > width:
        head = head[:-1]
    return head + ELLIPSIS + tail


# ---- tables -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Col:
    """A table column. fit: 'whole' (never cut), 'name' (shortened in the middle to fit) or 'wrap'
    (prose, wrapped over lines). drop: columns with a rank are left out when the width is short,
    the highest rank first; None: always shown. min_width: the narrowest a 'name'/'wrap' column gets."""
    header: str
    justify: str = "left"
    fit: str = "whole"
    drop: int | None = None
    min_width: int = 24
    style: str | None = None


def drop_order(cols: Sequence[Col]) -> str:
    """The headers of the droppable columns, the first to go first ("role, inf, nan, ...")."""
    return ", ".join(c.header for c in sorted((c for c in cols if c.drop is not None), key=lambda c: -c.drop))


def _cell_width(cell) -> int:
    text = cell.plain if isinstance(cell, Text) else str(cell)
    return max((cell_len(ln) for ln in text.split("\n")), default=0)


def _plan_widths(cols: Sequence[Col], rows: Sequence[Sequence], width: int, wide: bool):
    """(indexes of the columns kept, their widths, headers dropped)."""
    natural = [max([_cell_width(c.header)] + [_cell_width(r[i]) for r in rows]) for i, c in enumerate(cols)]
    if wide:
        return list(range(len(cols))), natural, []

    def floor(i: int) -> int:
        return natural[i] if cols[i].fit == "whole" else min(natural[i], cols[i].min_width)

    keep = list(range(len(cols)))
    order = sorted((i for i, c in enumerate(cols) if c.drop is not None), key=lambda i: -cols[i].drop)
    dropped = []
    while sum(floor(i) for i in keep) + GAP * (len(keep) - 1) > width and order:
        i = order.pop(0)
        keep.remove(i)
        dropped.append(cols[i].header.replace("\n", " "))
    widths = {i: floor(i) for i in keep}
    spare = width - sum(widths.values()) - GAP * (len(keep) - 1)
    for i in (i for i in keep if cols[i].fit != "whole"):   # still too wide: names and prose give way
        give = min(-spare, widths[i] - min(natural[i], NARROWEST)) if spare < 0 else 0
        widths[i] -= give
        spare += give
    elastic = [i for i in keep if cols[i].fit != "whole"]
    while spare > 0:                                  # share what is left among the elastic columns
        short = [i for i in elastic if widths[i] < natural[i]]
        if not short:
            break
        for i in short:
            if spare == 0:
                break
            widths[i] += 1
            spare -= 1
    return keep, [widths[i] for i in keep], dropped


def fit_table(cols: Sequence[Col], rows: Sequence[Sequence], width: int, *, title: str | None = None,
              wide: bool = False, hint: str = "--wide shows them") -> Group:
    """A rich table (with its title and, when columns were left out, a note naming them) that is
    at most `width` cells wide: whole columns at their widest cell, name columns shortened in the
    middle, wrap columns wrapped, and droppable columns left out, highest rank first, until the
    rest fits. wide=True keeps every column at its natural width. Cells: str (plain text, no markup)
    or rich Text."""
    keep, widths, dropped = _plan_widths(cols, rows, width, wide)
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0),
              header_style="bold")
    for i, w in zip(keep, widths):
        c = cols[i]
        t.add_column(c.header, justify=c.justify, width=w, no_wrap=c.fit != "wrap",
                     overflow="fold" if c.fit == "wrap" else "ellipsis", style=c.style)
    for r in rows:
        cells = []
        for i, w in zip(keep, widths):
            cell = r[i]
            if cols[i].fit == "name" and not isinstance(cell, Text):
                cell = shorten_middle(str(cell), w)
            cells.append(cell if isinstance(cell, Text) else Text(str(cell)))
        t.add_row(*cells)
    parts: list = []
    if title:
        parts.append(Text(title, style="bold"))
    parts.append(t)
    if dropped:
        parts.append(column_note(dropped, width, hint))
    return Group(*parts)


def column_note(dropped: Sequence[str], width: int, hint: str) -> Text:
    return Text(f"columns left out to fit {width} columns: {', '.join(dropped)} ({hint})", style="dim")


def key_values(rows: Sequence[tuple[str, object]]) -> Table:
    """A two-column 'label  value' block (the summary above a table); values wrap at the console width."""
    g = Table.grid(padding=(0, GAP, 0, 0))
    g.add_column(style="bold", no_wrap=True)
    g.add_column(overflow="fold")
    for k, v in rows:
        g.add_row(Text(k), v if isinstance(v, Text) else Text(str(v)))
    return g


__all__ = ["terminal_width", "make_console", "human", "fmt_value", "fmt_count", "percent", "fmt_bytes",
           "shorten_middle", "Col", "drop_order", "fit_table", "key_values", "column_note"]
