"""Writing an output file whole or not at all (the JSON of `paramkit diff -o`, the HTML reports): a temporary
file beside the target, renamed over it when complete, so that a failed run never leaves half a file."""
from __future__ import annotations

import os


def write_text_atomic(path: str, text: str, *, newline: bool = True) -> None:
    """Write `text` (and a final newline unless `newline` is False) to `path` atomically."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if newline:
                f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def written(path, text: str) -> str:
    """`text`, after writing it to `path` atomically (as is, no newline added) when `path` is not None."""
    if path is not None:
        write_text_atomic(os.fspath(path), text, newline=False)
    return text
