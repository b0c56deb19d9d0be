"""Statistics over the network (issue 15): the data pass of a remote scan without a temporary copy of the model.
The tensors' bytes are fetched by parallel range reads into a reused window (an anonymous memfd, else a temporary
file, of the window's size), batch by batch; each batch's TensorInfo file/offset is pointed into the window and the
engine runs on it as on a local file, so the statistics are bit for bit those of a local scan of the same bytes."""
from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

from ..dtypes import DTYPES
from ..table import TensorInfo

MIB = 1 << 20


@dataclass(frozen=True)
class StreamOptions:
    """How the data pass fetches: `window` bytes of buffer (grown to the largest tensor, a torch storage or a
    deflated member, which the engines must see whole; up to `max_window`, beyond which the scan is refused),
    range requests of at most `chunk` bytes, `in_flight` of them at once; byte ranges of one file less than
    `merge_gap` apart are fetched as one. Memory: the window plus in_flight x chunk bytes of answers."""
    window: int = 256 * MIB
    max_window: int = 4096 * MIB
    chunk: int = 16 * MIB
    in_flight: int = 6
    merge_gap: int = 64 << 10

    @classmethod
    def from_env(cls) -> "StreamOptions":
        """The defaults, overridden by PARAMKIT_REMOTE_WINDOW_MB, PARAMKIT_REMOTE_MAX_WINDOW_MB,
        PARAMKIT_REMOTE_CHUNK_MB and PARAMKIT_REMOTE_IN_FLIGHT (positive integers)."""
        got = {}
        for key, var, unit in (("window", "PARAMKIT_REMOTE_WINDOW_MB", MIB),
                               ("max_window", "PARAMKIT_REMOTE_MAX_WINDOW_MB", MIB),
                               ("chunk", "PARAMKIT_REMOTE_CHUNK_MB", MIB), ("in_flight", "PARAMKIT_REMOTE_IN_FLIGHT", 1)):
            raw = os.environ.get(var)
            if raw:
                if not raw.isdigit() or int(raw) < 1:
                    raise ValueError(f"{var}={raw!r}: expected a positive integer")
                got[key] = int(raw) * unit
        return dataclasses.replace(DEFAULTS, **got)


DEFAULTS = StreamOptions()


class Window:
    """A buffer the engines read as a local file (path): an anonymous memfd on Linux (memory, never on disk),
    else a temporary file; written with pwrite by the fetch threads."""

    def __init__(self, size: int):
        self.size = size
        self._dir = None
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("paramkit-window", os.MFD_CLOEXEC)
            self.path = f"/proc/{os.getpid()}/fd/{self.fd}"
        else:
            self._dir = tempfile.mkdtemp(prefix="paramkit-window-")
            self.path = os.path.join(self._dir, "window.bin")
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(self.fd, size)

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._dir is not None:
            import shutil
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def needs_bytes(t: TensorInfo) -> bool:
    """Whether an engine reads tensor t's bytes: some backend computes values of its dtype, and it has some."""
    from ..backends.block_types import values_readable
    d = DTYPES[t.dtype]
    return t.nbytes > 0 and (d.has_stats or (d.kind == "block" and values_readable(t.dtype)))


def extent(t: TensorInfo) -> tuple[int, int]:
    """The byte range of t's file that the engines read for it: its own bytes, or its whole storage (a strided
    or big-endian view of a stored zip member; the compressed bytes of a deflated one)."""
    lay = t.layout
    if lay is None:
        return t.offset, t.offset + t.nbytes
    b = lay.blob
    return b.offset, b.offset + (b.nbytes if b.compression == "stored" else b.compressed_size)


@dataclass
class _Run:
    file: str
    start: int
    end: int
    at: int            # where its first byte goes, from the batch's start in the window


@dataclass
class Batch:
    """Tensors whose bytes fit the window together: runs of file bytes, each tensor's run (None: no bytes)."""
    runs: list[_Run] = field(default_factory=list)
    members: list[tuple[int, int | None]] = field(default_factory=list)
    size: int = 0


def plan_batches(tensors: Sequence[TensorInfo], slot: int, merge_gap: int) -> list[Batch]:
    """The tensors in batches of at most `slot` window bytes (a lone larger span makes a batch of its own), in
    file order and by offset within a file. Tensors whose byte ranges overlap (views of one storage) form one
    span and go together; spans less than `merge_gap` apart in one file share a run (one request); tensors
    without bytes to read go in the first batch."""
    by_file: dict[str, list[tuple[int, int, int]]] = {}
    none: list[int] = []
    for i, t in enumerate(tensors):
        if needs_bytes(t):
            by_file.setdefault(t.file, []).append((*extent(t), i))
        else:
            none.append(i)
    spans: list[tuple[str, int, int, list[int]]] = []
    for f, items in by_file.items():
        items.sort()
        for a, b, i in items:
            if spans and spans[-1][0] == f and a < spans[-1][2]:
                spans[-1] = (f, spans[-1][1], max(spans[-1][2], b), spans[-1][3] + [i])
            else:
                spans.append((f, a, b, [i]))
    batches: list[Batch] = []
    cur = Batch()
    for f, a, b, members in spans:
        run = cur.runs[-1] if cur.runs else None
        joins = run is not None and run.file == f and a - run.end <= merge_gap
        cost = b - run.end if joins else b - a
        if cur.runs and cur.size + cost > slot:
            batches.append(cur)
            cur, joins, cost = Batch(), False, b - a
        if joins:
            cur.runs[-1].end = b
        else:
            cur.runs.append(_Run(f, a, b, cur.size))
        cur.size += cost
        cur.members.extend((i, len(cur.runs) - 1) for i in members)
    if cur.runs or not batches:
        batches.append(cur)
    batches[0].members[:0] = [(i, None) for i in none]
    return batches


def _moved(t: TensorInfo, path: str, delta: int | None) -> TensorInfo:
    """t read from the window `path`: its offsets shifted by delta (None: it has no bytes to read, offset 0)."""
    if delta is None:
        return dataclasses.replace(t, file=path, offset=0, layout=None)
    lay = t.layout
    if lay is not None:
        lay = dataclasses.replace(lay, blob=dataclasses.replace(lay.blob, offset=lay.blob.offset + delta))
    return dataclasses.replace(t, file=path, offset=t.offset + delta, layout=lay)


def _merge_info(into: dict, last: dict) -> None:
    """The engine's last_run of one batch folded into the scan's: block types united, counts summed."""
    for k, v in last.items():
        if k == "block_types":
            into.setdefault(k, {}).update(v)
        elif k in ("units", "held_tensors", "held_bytes") and isinstance(v, int):
            into[k] = into.get(k, 0) + v
        else:
            into[k] = v


class _Fetcher:
    """The fetch threads of one data pass: in_flight range reads at once, each written into the window."""

    def __init__(self, session, window: Window, opts: StreamOptions, progress):
        self.session = session
        self.window = window
        self.opts = opts
        self.progress = progress
        self.done = 0
        self._lock = threading.Lock()
        self._sources: dict[str, object] = {}
        self.pool = ThreadPoolExecutor(opts.in_flight, thread_name_prefix="paramkit-fetch")

    def _source(self, url: str):
        with self._lock:
            src = self._sources.get(url)
            if src is None:
                src = self._sources[url] = self.session.data_source(url)
            return src

    def _one(self, url: str, a: int, b: int, at: int) -> None:
        self.window.write(at, self._source(url).fetch_range(a, b))
        if self.progress is not None:
            with self._lock:     # one call at a time, growing
                self.done += b - a
                self.progress(self.done)

    def start(self, batch: Batch, base: int) -> list:
        """Submit every request of `batch` (its bytes to go at window offset `base`); the futures."""
        futures = []
        for r in batch.runs:
            for a in range(r.start, r.end, self.opts.chunk):
                b = min(a + self.opts.chunk, r.end)
                futures.append(self.pool.submit(self._one, r.file, a, b, base + r.at + a - r.start))
        return futures

    @staticmethod
    def wait(futures: list) -> None:
        for fut in futures:
            fut.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for src in self._sources.values():
            src.close()


def remote_run(session, engine, tensors: Sequence[TensorInfo], *, stats: bool, quantiles: bool, threads,
               progress, quant, options: StreamOptions | None = None, histograms: bool = False):
    """engine.run over remote `tensors` (what scan() gives the engine for a local file): (stats per tensor, error
    sums per tensor, the engine's merged last_run with a "remote" entry). The batches are fetched one ahead of the
    engine (two halves of the window) unless one fills it; progress(done, total) counts bytes fetched."""
    from ..materialize import plain_tensors
    from ..progress import make_progress
    opts = options or StreamOptions.from_env()
    n = len(tensors)
    out: list = [None] * n
    qout: list = [None] * n
    # with stats=False only the quantized tensors are read
    todo = list(range(n)) if stats else [i for i in range(n) if quant is not None and quant.masks[i]]
    if not todo:
        return out, qout, {}
    sub = [tensors[i] for i in todo]
    largest = max((extent(t)[1] - extent(t)[0] for t in sub if needs_bytes(t)), default=0)
    if largest > opts.max_window:
        big = max((t for t in sub if needs_bytes(t)), key=lambda t: extent(t)[1] - extent(t)[0])
        raise MemoryError(f"{big.file}: tensor {big.name!r} needs {largest:,} bytes in memory at once (the engines "
                          f"read a tensor whole), more than the {opts.max_window:,}-byte limit of a remote scan's "
                          "window; raise PARAMKIT_REMOTE_MAX_WINDOW_MB or download the file and scan it locally")
    size = max(opts.window, largest, 1)
    batches = plan_batches(sub, size // 2, opts.merge_gap)
    # a batch larger than half the window takes all of it; consecutive smaller ones alternate halves
    bases = []
    for k, b in enumerate(batches):
        half = b.size <= size // 2
        prev_low = k > 0 and batches[k - 1].size <= size // 2 and bases[-1] == 0
        bases.append(size // 2 if half and prev_low else 0)
    total = sum(b.size for b in batches)
    cb, close_progress = make_progress(progress, total, "fetching")
    window = Window(size)
    fetcher = _Fetcher(session, window, opts, cb)
    info: dict = {}
    try:
        pending = fetcher.start(batches[0], bases[0])
        for k, batch in enumerate(batches):
            fetcher.wait(pending)
            pending = None
            nxt = k + 1 < len(batches)
            if nxt and bases[k + 1] != bases[k] and batch.size <= size // 2 and batches[k + 1].size <= size // 2:
                pending = fetcher.start(batches[k + 1], bases[k + 1])      # overlaps this batch's engine run
            idx = [todo[i] for i, _ in batch.members]
            moved = [_moved(tensors[todo[i]], window.path,
                            None if r is None else bases[k] + batch.runs[r].at - batch.runs[r].start)
                     for i, r in batch.members]
            with plain_tensors(moved, engine_reads_views=engine.reads_views) as plain:
                got, qgot = engine.run(plain, stats=stats, quantiles=quantiles, threads=threads, progress=None,
                                       quant=None if quant is None else quant.take(idx), histograms=histograms)
            for j, i in enumerate(idx):
                out[i], qout[i] = got[j], qgot[j]
            _merge_info(info, dict(getattr(engine, "last_run", {}) or {}))
            if nxt and pending is None:
                pending = fetcher.start(batches[k + 1], bases[k + 1])
    finally:
        fetcher.close()
        window.close()
        close_progress()
    info["remote"] = {"window_bytes": size, "batches": len(batches), "fetched_bytes": total,
                      "chunk_bytes": opts.chunk, "in_flight": opts.in_flight}
    return out, qout, info
