"""gc_paused(): the cyclic garbage collector paused while a scan builds several small objects per tensor
(100k-tensor MoE headers); none of them forms a cycle, and collections would double the time."""
from __future__ import annotations

import gc


class gc_paused:
    """Context manager: gc disabled for the block, re-enabled at the end only if it was enabled
    (nesting, and callers that keep it off, are respected). Reference counting frees everything as
    usual. ``with pause.resumed():`` inside the block runs a long stretch (a data pass) with gc as
    it was outside."""

    def __enter__(self) -> "gc_paused":
        self._was_enabled = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc) -> None:
        if self._was_enabled:
            gc.enable()

    def resumed(self) -> "_Resumed":
        return _Resumed(self._was_enabled)


class _Resumed:
    def __init__(self, was_enabled: bool):
        self._was_enabled = was_enabled

    def __enter__(self) -> None:
        if self._was_enabled:
            gc.enable()

    def __exit__(self, *exc) -> None:
        gc.disable()
