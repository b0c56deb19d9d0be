"""The ingest output directory: Parquet part files written atomically (a temporary name, then rename), the
tensors part of a batch before its models part (a model row is the mark that its source is done), what --resume
skips, and compaction (each model keeps the rows of its newest part; tensor parts without their models part go)."""
from __future__ import annotations

import json
import os
import time

from .schema import MODEL_COLUMNS, SCHEMA_VERSION, TENSOR_COLUMNS, arrow_schema

MARKER = "_paramkit_ingest.json"


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("paramkit ingest writes Parquet with pyarrow: pip install 'paramkit[ingest]'") from e
    return pa, pq


class Dataset:
    """DIR/models/part-*.parquet and DIR/tensors/part-*.parquet (same part names), DIR/_paramkit_ingest.json."""

    def __init__(self, out: str, *, resume: bool, overwrite: bool = False):
        self.pa, self.pq = _pa()
        self.out = os.path.abspath(os.fspath(out))
        self.models_dir = os.path.join(self.out, "models")
        self.tensors_dir = os.path.join(self.out, "tensors")
        existing = os.path.isdir(self.out) and any(not n.startswith(".") for n in os.listdir(self.out))
        if existing and not resume and not overwrite:
            raise FileExistsError(f"{self.out} is not empty: pass --resume to continue that dataset or "
                                  "--overwrite to replace it")
        if existing and os.path.exists(os.path.join(self.out, MARKER)):
            with open(os.path.join(self.out, MARKER)) as f:
                version = json.load(f).get("schema_version")
            if version != SCHEMA_VERSION and not overwrite:
                raise ValueError(f"{self.out} holds an ingest dataset of schema version {version}; this paramkit "
                                 f"writes version {SCHEMA_VERSION}: use another directory or --overwrite")
        elif existing and not overwrite:
            raise FileExistsError(f"{self.out} holds files but no {MARKER}: not an ingest dataset")
        if overwrite and existing:
            for d in (self.models_dir, self.tensors_dir):
                if os.path.isdir(d):
                    for n in os.listdir(d):
                        os.remove(os.path.join(d, n))
        os.makedirs(self.models_dir, exist_ok=True)
        os.makedirs(self.tensors_dir, exist_ok=True)
        from .. import __version__
        from .._atomic import write_text_atomic
        write_text_atomic(os.path.join(self.out, MARKER),
                          json.dumps({"schema_version": SCHEMA_VERSION, "paramkit_version": __version__}, indent=1))
        # part names sort in the order they were written, across runs (compaction keeps the newest rows)
        self.run_id = f"{time.time_ns():020d}-{os.getpid()}"
        self._seq = 0
        self.model_schema = arrow_schema(MODEL_COLUMNS)
        self.tensor_schema = arrow_schema(TENSOR_COLUMNS)

    # --- writing
    def write(self, models: list[dict], tensors: list[dict]) -> str:
        """One part: its tensors file, then its models file (each written under a temporary name and renamed)."""
        name = f"part-{self.run_id}-{self._seq:06d}.parquet"
        self._seq += 1
        self._write_table(os.path.join(self.tensors_dir, name), tensors, TENSOR_COLUMNS, self.tensor_schema)
        self._write_table(os.path.join(self.models_dir, name), models, MODEL_COLUMNS, self.model_schema)
        return name

    def _write_table(self, path: str, rows: list[dict], columns, schema) -> None:
        data = {c: [r.get(c) for r in rows] for c, _, _ in columns}
        self._write_parquet(self.pa.Table.from_pydict(data, schema=schema), path)

    def _write_parquet(self, table, path: str) -> None:
        """`table` to `path` under a temporary name (".NAME.tmp", which compact() removes), then renamed."""
        tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
        self.pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)

    # --- reading
    def parts(self) -> list[str]:
        return sorted(n for n in os.listdir(self.models_dir) if n.startswith("part-") and n.endswith(".parquet"))

    def done(self) -> dict[str, tuple[str, str | None]]:
        """source -> (status, identity JSON) of its newest models row."""
        out: dict[str, tuple[str, str | None]] = {}
        for n in self.parts():
            t = self.pq.read_table(os.path.join(self.models_dir, n), columns=["source", "status", "identity"])
            for s, st, ident in zip(*(t.column(c).to_pylist() for c in ("source", "status", "identity"))):
                out[s] = (st, ident)
        return out

    def compact(self) -> int:
        """Drop superseded rows (a model_id's rows in any part but its newest) and tensor parts whose models part
        is missing (a run stopped between the two files). Returns the rows dropped."""
        dropped = 0
        models = set(self.parts())
        for n in os.listdir(self.tensors_dir):
            if n.startswith("part-") and n.endswith(".parquet") and n not in models:
                os.remove(os.path.join(self.tensors_dir, n))
            elif n.startswith(".") and n.endswith(".tmp"):
                os.remove(os.path.join(self.tensors_dir, n))
        for n in os.listdir(self.models_dir):
            if n.startswith(".") and n.endswith(".tmp"):
                os.remove(os.path.join(self.models_dir, n))
        newest: dict[str, str] = {}
        ids_of: dict[str, list[str]] = {}
        for n in sorted(models):
            ids = self.pq.read_table(os.path.join(self.models_dir, n), columns=["model_id"]).column(0).to_pylist()
            ids_of[n] = ids
            for i in ids:
                newest[i] = n
        for n, ids in ids_of.items():
            stale = {i for i in ids if newest[i] != n}
            if not stale:
                continue
            for d, columns, schema in ((self.tensors_dir, TENSOR_COLUMNS, self.tensor_schema),
                                       (self.models_dir, MODEL_COLUMNS, self.model_schema)):
                path = os.path.join(d, n)
                if not os.path.exists(path):
                    continue
                t = self.pq.read_table(path)
                keep = [i not in stale for i in t.column("model_id").to_pylist()]
                dropped += len(keep) - sum(keep) if d == self.models_dir else 0
                t = t.filter(self.pa.array(keep, type=self.pa.bool_()))
                if t.num_rows == 0 and d == self.models_dir:
                    os.remove(path)
                    tp = os.path.join(self.tensors_dir, n)
                    if os.path.exists(tp):
                        os.remove(tp)
                    break
                self._write_parquet(t.cast(schema), path)
        return dropped
