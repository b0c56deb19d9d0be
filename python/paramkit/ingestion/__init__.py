"""paramkit.ingestion: scan many models into a Parquet dataset (DIR/models, DIR/tensors; schema in ingestion.schema),
resumable, one error row per bad model, on a local process pool or a Dask cluster. Needs the `ingest` extra
(pyarrow; dask[distributed] for --workers / --scheduler)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Iterable

from .schema import MODEL_COLUMNS, SCHEMA_VERSION, TENSOR_COLUMNS

__all__ = ["IngestSummary", "ingest", "MODEL_COLUMNS", "TENSOR_COLUMNS", "SCHEMA_VERSION"]


@dataclass
class IngestSummary:
    out: str
    total: int = 0                      # sources seen
    ok: int = 0
    errors: int = 0
    skipped: int = 0                    # already in the dataset (--resume)
    errors_by_code: dict[str, int] = field(default_factory=dict)
    bytes_scanned: int = 0
    seconds: float = 0.0
    parts: int = 0
    compacted_rows: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def line(self) -> str:
        rate = (self.ok + self.errors) / self.seconds if self.seconds else 0.0
        codes = ", ".join(f"{c} {n}" for c, n in sorted(self.errors_by_code.items(), key=lambda kv: -kv[1]))
        return (f"{self.ok:,} ok, {self.errors:,} error{'' if self.errors == 1 else 's'}" +
                (f" ({codes})" if codes else "") +
                f", {self.skipped:,} skipped (already done) in {self.seconds:.1f} s "
                f"({rate:.1f} models/s, {self.bytes_scanned / 1e9:.2f} GB)")


def _dask_client(workers: int | None, scheduler: str | None):
    try:
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise ImportError("--workers / --scheduler run on Dask: pip install 'paramkit[ingest]' "
                          "(dask[distributed])") from e
    if scheduler:
        return Client(scheduler), None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster


class _Bar:
    """models done / total (the total grows while the sources are expanded), models/s, GB/s, errors."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._p = None

    def start(self):
        if not self.enabled:
            return
        import sys

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self._p = Progress(TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                           TimeElapsedColumn(), transient=False, console=Console(file=sys.stderr))
        self._p.start()
        self._t = self._p.add_task("ingest", total=None, rate="")

    def update(self, s: IngestSummary, t0: float):
        if self._p is None:
            return
        dt = max(time.perf_counter() - t0, 1e-9)
        self._p.update(self._t, completed=s.ok + s.errors + s.skipped, total=s.total,
                       rate=f"{(s.ok + s.errors) / dt:.1f} models/s {s.bytes_scanned / 1e9 / dt:.2f} GB/s "
                            f"errors {s.errors}")

    def stop(self):
        if self._p is not None:
            self._p.stop()


def ingest(sources: Iterable[str] | str, out: str, *, client=None, workers: int | None = None,
           scheduler: str | None = None, jobs: int | None = None, stats: bool = True, quant=None,
           resume: bool = True, overwrite: bool = False, retries: int = 2, timeout: float | None = None,
           batch: int = 64, progress: bool = False) -> IngestSummary:
    """Scan every model of `sources` into the Parquet dataset `out` and return the summary.

    sources: paths (a weight file, an index, a directory searched recursively: a directory with an index,
    a config.json or shard-named files is one model, else each weight file in it is one), URLs, hf://
    addresses and manifests (.txt/.list: one source per line; .csv/.parquet: a `source` column).
    Where: `client` (a distributed.Client), `scheduler` (its address), `workers` (a Dask LocalCluster of that
    many single-thread worker processes), else a local process pool of `jobs` processes (default: the CPU
    count; jobs=1 scans in this process). resume: skip sources whose newest row is ok with the same identity
    (and redo the rest); resume=False into a non-empty `out` raises FileExistsError unless overwrite=True.
    retries: further tries of transient errors (network, I/O) and of a source whose worker died; timeout:
    seconds per model before it becomes a timeout error row. batch: models per Parquet part file."""
    from . import runner
    from .dataset import Dataset
    from .sources import expand
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if quant is not None and not isinstance(quant, (str, list, tuple)):
        raise TypeError("quant must be a scheme string or a list of scheme ids")
    ds = Dataset(out, resume=resume, overwrite=overwrite)
    summary = IngestSummary(out=ds.out)
    summary.compacted_rows = ds.compact()
    done = ds.done() if resume else {}
    options = {"stats": stats, "quant": quant, "retries": retries, "timeout": timeout}
    t0 = time.perf_counter()
    models: list[dict] = []
    tensors: list[dict] = []
    bar = _Bar(progress)

    def flush():
        if models:
            ds.write(models, tensors)
            summary.parts += 1
            models.clear()
            tensors.clear()

    def todo():
        from .schema import to_json
        from .sources import identity, is_remote
        for src in expand(sources):
            summary.total += 1
            prev = done.get(src)
            # a remote source with an ok row is not fetched again (comparing its ETags would cost requests)
            if prev is not None and prev[0] == "ok" and (is_remote(src) or prev[1] == to_json(identity(src))):
                summary.skipped += 1
                bar.update(summary, t0)
                continue
            yield src

    def on_result(r: dict):
        m = r["model"]
        if m["status"] == "ok":
            summary.ok += 1
            summary.bytes_scanned += int(m["size_bytes"] or 0) if stats else 0
        else:
            summary.errors += 1
            summary.errors_by_code[m["error_code"]] = summary.errors_by_code.get(m["error_code"], 0) + 1
        models.append(m)
        tensors.extend(r["tensors"])
        if len(models) >= batch:
            flush()
        bar.update(summary, t0)

    own_client = own_cluster = None       # what this call started, and closes
    bar.start()
    try:
        if client is None and (workers or scheduler):
            own_client, own_cluster = _dask_client(workers, scheduler)
            client = own_client
        chunk = 1 if stats or quant else 16     # header-only scans: 16 sources a task
        if client is not None:
            runner.run_dask(todo(), options, client, on_result, chunk)
        else:
            n = jobs or os.cpu_count() or 1
            if n <= 1:
                runner.run_serial(todo(), options, on_result)
            else:
                runner.run_pool(todo(), options, n, on_result, chunk)
    finally:
        flush()             # the last part, also when the run stops early: what was scanned is kept
        bar.stop()
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()
    summary.compacted_rows += ds.compact()
    summary.seconds = time.perf_counter() - t0
    return summary
