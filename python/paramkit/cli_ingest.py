"""`paramkit ingest`: the command line of paramkit.ingest (many models into a Parquet dataset)."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    g = sub.add_parser(
        "ingest", help="scan many models into a Parquet dataset (resumable; local pool or Dask)",
        description="Scan every model of SOURCES into the Parquet dataset DIR (DIR/models: one row per model; "
                    "DIR/tensors: one row per tensor; README 'Ingest' has the schema). SOURCES: weight files, "
                    "indexes, directories (searched recursively: a directory with an index, a config.json or "
                    "shard-named files is one model, else each weight file in it is one), URLs, hf:// addresses "
                    "and manifests (.txt/.list: one source per line; .csv/.parquet: a 'source' column). A bad "
                    "model is an error row, never a stopped job. Needs pip install 'paramkit[ingest]'.")
    g.add_argument("sources", nargs="+", metavar="SOURCE")
    g.add_argument("--out", required=True, metavar="DIR", help="the dataset directory")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, metavar="N",
                       help="a Dask LocalCluster of N single-thread worker processes on this machine")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="an existing Dask cluster (tcp://host:8786); its workers need paramkit installed")
    where.add_argument("--jobs", type=int, default=None, metavar="N",
                       help="a plain local process pool of N processes (the default, N = the CPU count; "
                            "1 scans in this process)")
    g.add_argument("--no-stats", action="store_true", help="headers only: counts, no tensor data read")
    g.add_argument("--quant", default=None, metavar="SCHEMES",
                   help="simulate quantization schemes in the same pass (default, or comma-separated ids)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the dataset in DIR: skip the sources whose row is ok with the same identity "
                           "(path, size, mtime; remote: the source), redo the rest")
    mode.add_argument("--overwrite", action="store_true", help="replace the dataset in DIR")
    g.add_argument("--retries", type=int, default=2, metavar="K",
                   help="further tries of transient errors (network, I/O) and of a source whose worker died "
                        "(default 2)")
    g.add_argument("--timeout", type=float, default=None, metavar="S", help="seconds per model before it becomes "
                   "a timeout error row (default: none)")
    g.add_argument("--batch", type=int, default=64, metavar="N", help="models per Parquet part file (default 64)")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")
    g.add_argument("--progress", action="store_true",
                   help="show the progress bar even when stderr is not a terminal")
    g.set_defaults(func=cmd_ingest)


def cmd_ingest(args) -> int:
    from .ingestion import ingest
    if args.batch < 1 or args.retries < 0 or (args.timeout is not None and args.timeout <= 0) or \
            any(v is not None and v < 1 for v in (args.workers, args.jobs)):
        raise ValueError("--batch, --workers and --jobs must be positive; --retries >= 0; --timeout > 0")
    s = ingest(args.sources, args.out, workers=args.workers, scheduler=args.scheduler, jobs=args.jobs,
               stats=not args.no_stats, quant=args.quant, resume=args.resume, overwrite=args.overwrite,
               retries=args.retries, timeout=args.timeout, batch=args.batch,
               progress=args.progress or sys.stderr.isatty())
    if args.json:
        print(json.dumps(s.to_dict(), indent=1))
    else:
        print(f"{s.out}: {s.line()}")
    return 0 if not s.errors else 3
