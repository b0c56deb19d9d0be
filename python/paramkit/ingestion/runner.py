"""Running the scans of an ingest: the task (one source -> its rows, never raising: retries of transient errors,
a deadline), and the executors that run tasks with bounded tasks in flight -- a local process pool (a worker
that dies has its task rescheduled) and a Dask client (a LocalCluster, or an existing cluster)."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Callable, Iterator

from .schema import error_row, model_row, tensor_rows
from .sources import identity


class ScanTimeout(Exception):
    """The scan of one source ran past --timeout."""


# errors worth another try: the network and the file system's transient failures, not a missing file or a
# malformed one
_PERMANENT_OS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def _transient(e: BaseException) -> bool:
    from ..errors import FormatError
    if isinstance(e, (FormatError, ScanTimeout)) or isinstance(e, _PERMANENT_OS):
        return False
    return isinstance(e, (OSError, ConnectionError, TimeoutError))


@contextmanager
def _deadline(seconds: float | None):
    """ScanTimeout in this thread after `seconds` (SIGALRM: only in a process's main thread; elsewhere -- Dask
    worker threads -- the caller enforces the deadline on the future instead)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise ScanTimeout(_timeout_message(seconds))
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def scan_source(source: str, options: dict) -> dict:
    """One model's rows: {"source", "model": models row, "tensors": tensors rows}. Never raises for the model's own
    errors (they become its error row); transient ones are retried options["retries"] times with backoff."""
    from .. import scan
    from ..api import error_dict
    retries = int(options.get("retries", 0))
    attempts = options.get("attempts_before", 0)
    while True:
        attempts += 1
        t0 = time.perf_counter()
        try:
            ident = identity(source)
            with _deadline(options.get("timeout")):
                report = scan(source, stats=options.get("stats", True), quant=options.get("quant"), progress=False)
                d = report.to_dict()
                try:
                    plan = report.plan().to_dict()
                except Exception:     # a plan that cannot be made is no reason to lose the model's row
                    plan = None
            tensors = d.pop("tensors", [])
            if ident is None and d.get("transfer"):     # remote: the objects' sizes and ETags, the hub commit
                ident = {k: d["transfer"][k] for k in ("objects", "hub") if k in d["transfer"]}
            return {"source": source,
                    "model": model_row(source, d, identity=ident, attempts=attempts, scan_s=time.perf_counter() - t0,
                                       worker=worker_name(), plan=plan),
                    "tensors": tensor_rows(source, tensors)}
        except ScanTimeout as e:
            err = {"code": "timeout", "type": "ScanTimeout", "message": str(e)}
        except Exception as e:
            if _transient(e) and attempts <= retries:
                time.sleep(min(0.1 * 2 ** (attempts - 1), 5.0))
                continue
            err = error_dict(e, source)
        return error_result(source, err["code"], err["type"], err["message"], attempts, worker_name())


def _task(source: str, options: dict) -> dict:
    """What the pool runs: scan_source looked up when the task runs (a picklable reference)."""
    return scan_source(source, options)


def _task_chunk(sources: list[str], options: dict) -> list[dict]:
    """A chunk of sources in one task (header-only scans take a millisecond: one task each would cost more in
    scheduling than in scanning)."""
    return [scan_source(s, options) for s in sources]


def chunks(sources: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for s in sources:
        chunk.append(s)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def error_result(source: str, code: str, type_name: str, message: str, attempts: int, worker: str = "") -> dict:
    """The task result of a source that failed: its error row and no tensor rows."""
    from .. import __version__
    return {"source": source, "model": error_row(source, {"code": code, "type": type_name, "message": message},
                                                 attempts=attempts, worker=worker, version=__version__),
            "tensors": []}


def _timeout_message(seconds: float) -> str:
    return f"the scan ran past --timeout {seconds:g} s"


def run_pool(sources: Iterator[str], options: dict, workers: int, on_result: Callable[[dict], None],
             chunk: int = 1) -> None:
    """Tasks on a local process pool, at most 2 x workers in flight. A worker process that dies (killed, out of
    memory) breaks the pool, and the pool cannot say which task it was running: the tasks in flight then run
    again one at a time, each alone in a pool of its own, so that only the task that kills its worker is
    charged: when its worker dies in retries + 1 runs alone, its row says worker_died (attempts counts the run
    in the pool that broke too). Nothing is lost, and a source gets one row."""
    limit = 2 * workers
    retries = int(options.get("retries", 0))
    pending = chunks(iter(sources), chunk)
    tries: dict[str, int] = {}
    while True:
        pool = ProcessPoolExecutor(max_workers=workers)
        inflight: dict = {}
        suspects: list[str] = []
        try:
            while not suspects:
                while len(inflight) < limit:
                    part = next(pending, None)
                    if part is None:
                        break
                    try:
                        inflight[pool.submit(_task_chunk, part, dict(options, attempts_before=0))] = part
                    except BrokenProcessPool:
                        suspects += part
                        break
                if not inflight and not suspects:
                    return
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED) if inflight else (set(), set())
                for fut in done:
                    part = inflight.pop(fut)
                    try:
                        results = fut.result()
                    except BrokenProcessPool:
                        suspects += part
                        continue
                    for r in results:
                        on_result(r)
                if suspects:
                    for part in inflight.values():
                        suspects += part
                    inflight.clear()
        finally:
            pool.shutdown(wait=not suspects, cancel_futures=True)
        for src in suspects:
            _run_alone(src, options, retries, tries, on_result)


def _run_alone(src: str, options: dict, retries: int, tries: dict, on_result) -> None:
    """One task in a pool of one process, again while its worker dies and tries are left."""
    while True:
        pool = ProcessPoolExecutor(max_workers=1)
        try:
            result = pool.submit(_task, src, dict(options, attempts_before=tries.get(src, 0) + 1)).result()
        except BrokenProcessPool:
            tries[src] = tries.get(src, 0) + 1
            if tries[src] > retries:
                on_result(error_result(src, "worker_died", "WorkerDied", "the worker process died while "
                                       f"scanning it ({tries[src] + 1} time(s))", tries[src] + 1))
                return
            continue
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        on_result(result)
        return


def run_serial(sources: Iterator[str], options: dict, on_result: Callable[[dict], None]) -> None:
    for src in sources:
        on_result(scan_source(src, options))


def run_dask(sources: Iterator[str], options: dict, client, on_result: Callable[[dict], None],
             chunk: int = 1) -> None:
    """Tasks on a Dask cluster, at most 2 x its worker threads in flight (at least 4). Dask reruns the tasks
    of a worker that dies; a task past --timeout gets a timeout row here and is cancelled (Dask cannot stop a
    running thread: that worker thread finishes its scan and the result is dropped)."""
    from distributed import wait as dwait
    nthreads = sum(client.nthreads().values()) or 1
    limit = max(4, 2 * nthreads)
    timeout = options.get("timeout")
    pending = chunks(iter(sources), chunk)
    inflight: dict = {}
    started: dict = {}
    submitted = 0
    while True:
        while len(inflight) < limit:
            part = next(pending, None)
            if part is None:
                break
            submitted += 1
            fut = client.submit(_task_chunk, part, options, key=f"paramkit-scan-{submitted}-{os.getpid()}",
                                pure=False, retries=0)
            inflight[fut] = part
            started[fut] = time.monotonic()
        if not inflight:
            return
        done, _ = dwait(list(inflight), timeout=1.0 if timeout else None, return_when="FIRST_COMPLETED")
        for fut in done:
            part = inflight.pop(fut)
            started.pop(fut, None)
            try:
                results = fut.result()
            except Exception as e:   # the task itself never raises: a cluster-side failure (KilledWorker, ...)
                results = [error_result(src, "worker_died", type(e).__name__, str(e), 1) for src in part]
            for r in results:
                on_result(r)
        if timeout:
            now = time.monotonic()
            for fut in [f for f, t in started.items() if now - t > timeout * len(inflight[f]) + 5]:
                part = inflight.pop(fut)
                started.pop(fut)
                fut.cancel()
                for src in part:
                    on_result(error_result(src, "timeout", "ScanTimeout", _timeout_message(timeout), 1))
