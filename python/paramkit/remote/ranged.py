"""The read-ahead cache shared by the remote Sources (HTTP range GETs: http.HttpFile; fsspec object stores:
objstore.FsspecFile): a subclass fetches byte ranges (_fetch), this keeps them, so that a format reader's many
small header reads cost one or two requests, and fetches a zip's scattered local headers in one parallel round."""
from __future__ import annotations

import errno
import threading

FIRST_WINDOW = 100_000        # the first request of every file: bytes 0..99,999 (a safetensors header fits)
MAX_WINDOW = 16 << 20         # read-ahead doubles per miss up to this
SCATTER_WINDOW = 64 << 10     # a small read that does not continue the last fetch reads this much
MERGE_GAP = 16 << 10          # prefetch: ranges closer than this are fetched as one (the gap with them)
PREFETCH_WORKERS = 8
CACHE_LIMIT = 64 << 20        # bytes of fetched ranges a source keeps


class RangedSource:
    """A remote object as a Source (path None: the native engines cannot pread it; read_at through the cache).
    Subclasses set name, size, transfer and _validator and implement _fetch(start, end) -> the bytes
    start..end-1 (fewer only for the first request of an object shorter than the window)."""

    path = None
    file_offset = 0
    read_size = 64 << 10    # the read size sequential header readers should use: this source reads ahead
    name: str
    size: int
    _validator: str | None

    def _init_cache(self, window: int) -> None:
        self._lock = threading.RLock()
        self._blocks: list[tuple[int, bytes]] = []    # disjoint fetched ranges, sorted by start
        self._cached = 0
        self._window = window
        self._next = 0            # where the last fetch ended: a miss there is a sequential read
        self._dirty = False       # ranges fetched since the source was opened (the header cache keeps them)

    def _fetch(self, start: int, end: int) -> bytes:
        raise NotImplementedError

    @property
    def identity(self) -> tuple:
        """(URL, size, ETag or Last-Modified): changes when the object is replaced."""
        return (self.name, self.size, self._validator)

    @property
    def validator(self) -> str | None:
        """The ETag (else Last-Modified) of the first answer: what later reads are checked against."""
        return self._validator

    @property
    def requests(self) -> int:
        return self.transfer.requests

    @property
    def bytes_received(self) -> int:
        return self.transfer.bytes

    def fetch_range(self, start: int, end: int) -> bytes:
        """Bytes start..end-1 (inside the object) in one range GET, not kept in the read-ahead cache (the data
        pass of a remote scan: paramkit.remote.stream); RemoteError for a short answer, RemoteChanged when the
        object is no longer the one first read."""
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"{self.name}: bytes {start:,}..{end:,} are not inside the {self.size:,}-byte object")
        return self._fetch(start, end) if end > start else b""

    # ---- the cache -----------------------------------------------------------------------------------------
    def _keep(self, start: int, data: bytes) -> None:
        if len(data) > CACHE_LIMIT // 4:
            return
        while self._blocks and self._cached + len(data) > CACHE_LIMIT:
            _, old = self._blocks.pop(0)
            self._cached -= len(old)
        self._blocks.append((start, data))
        self._dirty = True
        self._blocks.sort(key=lambda b: b[0])
        self._cached += len(data)

    def _span(self, a: int, b: int) -> tuple[int, int]:
        """The range to fetch for the uncached run a..b-1: for a small read a window (one that doubles per
        miss when the read continues the last fetch, a sequential header; SCATTER_WINDOW for one elsewhere),
        read forward up to the next cached block, or, near the end of the object, back from its end down to
        the previous cached block; a larger read is fetched as asked."""
        prev_end = max((s + len(d) for s, d in self._blocks if s + len(d) <= a), default=0)
        next_start = min((s for s, _ in self._blocks if s >= b), default=self.size)
        if b - a > self.read_size:        # a read of a known length (a whole header): as asked
            want = b - a
        elif a == self._next:             # a sequential reader ran past the last fetch: double the window
            self._window = min(self._window * 2, MAX_WINDOW)
            want = self._window
        else:
            want = SCATTER_WINDOW
        if self.size - a <= want and next_start == self.size:
            return max(prev_end, self.size - want, 0), self.size
        return a, min(max(b, a + want), next_start)

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"read_at({offset}, {length}): negative offset or length")
        end = offset + length
        if end > self.size:
            raise OSError(errno.EIO, f"{self.name}: bytes {offset:,}..{end:,} lie beyond the end of the "
                          f"{self.size:,}-byte object")
        if length == 0:
            return b""
        with self._lock:
            out = bytearray()
            pos = offset
            while pos < end:
                block = next(((s, d) for s, d in self._blocks if s <= pos < s + len(d)), None)
                if block is not None:
                    s, d = block
                    out += d[pos - s:min(end, s + len(d)) - s]
                    pos = min(end, s + len(d))
                    continue
                run_end = min([end] + [s for s, _ in self._blocks if pos < s < end])
                a, b = self._span(pos, run_end)
                data = self._fetch(a, b)
                out += data[pos - a:run_end - a]
                pos = run_end
                self._keep(a, data)
            return bytes(out)

    def _covered(self, a: int, b: int) -> bool:
        return any(s <= a and b <= s + len(d) for s, d in self._blocks)

    def prefetch(self, ranges) -> None:
        """Fetch the (offset, length) ranges that are not cached ahead of their reads: coalesced (gaps under
        MERGE_GAP) and at once by a bounded thread pool, so the scattered small reads of a zip's local headers
        cost one round of parallel requests instead of one request after another."""
        spans: list[list[int]] = []
        with self._lock:
            for a, n in sorted(ranges):
                a, b = max(0, a), min(self.size, a + n)
                if b <= a or self._covered(a, b):
                    continue
                if spans and a - spans[-1][1] <= MERGE_GAP:
                    spans[-1][1] = max(spans[-1][1], b)
                else:
                    spans.append([a, b])
        if not spans:
            return
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(min(PREFETCH_WORKERS, len(spans)), thread_name_prefix="paramkit-prefetch") as pool:
            got = list(pool.map(lambda span: self._fetch(*span), spans))
        with self._lock:
            for (a, _), data in zip(spans, got):
                self._keep(a, data)

    # ---- the on-disk header cache (remote.cache; off unless PARAMKIT_HEADER_CACHE is set) --------------------
    def _restore(self) -> bool:
        """The ranges the header cache kept of this very object (same size and validator, which the caller has
        just had from the store), put back in the read-ahead cache; False when there is no such entry."""
        from . import cache
        kept = cache.load(self.name) if self._validator else None
        if kept is None or tuple(kept[:2]) != (self.size, self._validator) or not kept[2]:
            return False
        for start, data in kept[2]:
            self._keep(start, data)
        self._next = max(start + len(data) for start, data in kept[2])
        self._dirty = False
        return True

    def close(self) -> None:
        """Forget the fetched ranges, first keeping them in the header cache (when it is on, and they are new)."""
        from . import cache
        with self._lock:
            if self._dirty and self._validator and self._blocks and cache.directory():
                cache.store(self.name, self.size, self._validator, list(self._blocks))
            self._dirty = False
            self._blocks = []
            self._cached = 0

    def __enter__(self) -> "RangedSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
