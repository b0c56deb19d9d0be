"""Progress reporting for data passes: a rich bar on stderr (bytes done / total, GB/s) that appears
only once a pass has run for a second, so quick scans stay quiet."""
from __future__ import annotations

import sys
import time
from typing import Callable


class ByteProgress:
    """Callable(bytes_done) for the engines; draws a bar after `delay` seconds."""

    def __init__(self, total: int, description: str = "scanning", delay: float = 1.0, file=None):
        self.total = max(int(total), 1)
        self.description = description
        self.delay = delay
        self.file = file or sys.stderr
        self.t0 = time.perf_counter()
        self._bar = None
        self._task = None

    def __call__(self, done: int) -> None:
        if self._bar is None:
            if time.perf_counter() - self.t0 < self.delay or done >= self.total:
                return
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=False),
                                 TransferSpeedColumn(), TimeRemainingColumn(),
                                 console=Console(file=self.file), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        self._bar.update(self._task, completed=min(done, self.total))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.total)
            self._bar.stop()
            self._bar = None


def make_progress(progress, total: int, description: str = "scanning") -> tuple[Callable[[int], None] | None, Callable[[], None]]:
    """Normalise scan(progress=...): None/False -> nothing, True -> a ByteProgress bar on stderr,
    a callable f(done, total) -> wrapped. Returns (callback for the engine, close function)."""
    if progress is None or progress is False:
        return None, lambda: None
    if progress is True:
        bar = ByteProgress(total, description)
        return bar, bar.close
    if callable(progress):
        return (lambda done: progress(done, total)), (lambda: None)
    raise TypeError("progress must be None, a bool or a callable(done_bytes, total_bytes)")
