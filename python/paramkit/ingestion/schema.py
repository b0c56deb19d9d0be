"""The ingest dataset's schema (versioned): one row per model in DIR/models/, one row per tensor in DIR/tensors/,
built from a ScanReport's to_dict() or from the error a source raised. Nested figures (per-dtype counts, MoE,
quantization, plan) are JSON strings, so pandas, pyarrow, DuckDB and Dask read every column alike."""
from __future__ import annotations

import hashlib
import json

SCHEMA_VERSION = 1

# (column, arrow type name, what it holds); the README's schema table is printed from these
MODEL_COLUMNS: list[tuple[str, str, str]] = [
    ("source", "string", "the source as given (path, URL, hf:// address)"),
    ("model_id", "string", "sha1 of the source: joins models and tensors"),
    ("status", "string", "ok or error"),
    ("error_code", "string", "a FormatError code, os_error, timeout, worker_died or error (null when ok)"),
    ("error_type", "string", "the exception's class name"),
    ("error_message", "string", "the exception's message"),
    ("attempts", "int32", "scans tried (1 + retries used)"),
    ("identity", "string", "JSON: local: the path and its files' size and mtime ns (what --resume compares); remote: each object's size and ETag and the hub commit"),
    ("format", "string", "safetensors, pytorch, numpy or gguf"),
    ("files", "list<string>", "the weight files used"),
    ("n_files", "int32", "len(files)"),
    ("size_bytes", "int64", "bytes of the tensors' data"),
    ("n_tensors", "int64", "tensors"),
    ("total_params", "int64", "parameters (logical count, ties once)"),
    ("active_params", "int64", "parameters active per token (MoE; = total for dense; null when unknown)"),
    ("buffer_elements", "int64", "elements of buffers"),
    ("quant_state_elements", "int64", "elements of quantization state (scales, zeros)"),
    ("packed_logical_params", "int64", "logical parameters of packed quantized weights"),
    ("elements_by_dtype", "string", "JSON {dtype: elements}"),
    ("params_by_dtype", "string", "JSON {dtype: parameters}"),
    ("quant_method", "string", "detected or declared quantization method (null: none)"),
    ("tied", "bool", "config.json / GGUF metadata ties the embedding and the lm_head (counted once)"),
    ("moe", "bool", "routed experts detected"),
    ("moe_detail", "string", "JSON: the report's moe section"),
    ("quantization", "string", "JSON: the report's quantization section"),
    ("agg_absmax", "double", "largest absolute value over the parameters (null without statistics)"),
    ("agg_mean", "double", "mean over the parameters"),
    ("agg_std", "double", "standard deviation over the parameters"),
    ("agg_nan", "int64", "NaN values over the parameters"),
    ("agg_inf", "int64", "+-Inf values over the parameters"),
    ("agg_zeros", "int64", "zeros over the parameters"),
    ("quant_summary", "string", "JSON: per simulated scheme bits/weight, bytes, SQNR (null without --quant)"),
    ("weights_bytes_bf16", "int64", "plan: weights memory at 16 bits"),
    ("weights_bytes_int8", "int64", "plan: weights memory at 8 bits"),
    ("weights_bytes_int4", "int64", "plan: weights memory at 4 bits"),
    ("kv_bytes_per_token", "double", "plan: KV cache bytes per token (null when not applicable)"),
    ("transfer", "string", "JSON: requests and bytes of a remote source (null for local)"),
    ("scan_s", "double", "seconds of the successful scan"),
    ("worker", "string", "host:pid that scanned it"),
    ("paramkit_version", "string", "the version that wrote the row"),
]

TENSOR_COLUMNS: list[tuple[str, str, str]] = [
    ("model_id", "string", "the model's model_id"),
    ("source", "string", "the model's source"),
    ("name", "string", "tensor name"),
    ("dtype", "string", "stored dtype (GGUF: its GGML type)"),
    ("shape", "list<int64>", "shape"),
    ("numel", "int64", "elements"),
    ("nbytes", "int64", "stored bytes"),
    ("role", "string", "parameter, buffer, quant_state, packed_parameter or optimizer"),
    ("min", "double", "smallest value (this and the statistics below: null without statistics)"),
    ("max", "double", "largest value"),
    ("mean", "double", "mean (float64)"),
    ("std", "double", "standard deviation"),
    ("absmax", "double", "largest absolute value"),
    ("l2", "double", "L2 norm"),
    ("zeros", "int64", "zero values"),
    ("nan", "int64", "NaN values"),
    ("posinf", "int64", "+Inf values"),
    ("neginf", "int64", "-Inf values"),
    ("subnormal", "int64", "subnormal values"),
    ("quantiles", "string", "JSON {q: value}"),
    ("quant", "string", "JSON: per simulated scheme its error record (null without --quant)"),
]

_STAT_KEYS = ("min", "max", "mean", "std", "absmax", "l2", "zeros", "nan", "posinf", "neginf", "subnormal")


def arrow_schema(columns: list[tuple[str, str, str]]):
    import pyarrow as pa
    types = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "double": pa.float64(),
             "bool": pa.bool_(), "list<string>": pa.list_(pa.string()), "list<int64>": pa.list_(pa.int64())}
    meta = {b"paramkit_ingest_schema": str(SCHEMA_VERSION).encode()}
    return pa.schema([(name, types[t]) for name, t, _ in columns], metadata=meta)


def model_id(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8", "surrogateescape")).hexdigest()


def to_json(v) -> str | None:
    return None if v is None else json.dumps(v, sort_keys=True, default=str, allow_nan=True)


def _int(v):
    return None if v is None else int(v)


def _num(v):
    """A JSON-ish number as a float column value (null for None; NaN and Inf kept)."""
    return None if v is None else float(v)


def _weights_bytes(plan: dict | None, ident: str) -> int | None:
    for w in (plan or {}).get("weights", []):
        if w.get("id") == ident:
            return _int(w["bytes"]["value"])
    return None


def model_row(source: str, d: dict, *, identity, attempts: int, scan_s: float, worker: str,
              plan: dict | None) -> dict:
    """The models row of a successful scan (d: ScanReport.to_dict() without its tensors)."""
    agg = d.get("aggregates") or {}
    moe = d.get("moe") or {}
    q = d.get("quantization") or {}
    kv = (plan or {}).get("kv_cache") or {}
    per_token = kv.get("per_token")
    row = {name: None for name, _, _ in MODEL_COLUMNS}
    row.update(
        source=source, model_id=model_id(source), status="ok", attempts=attempts, identity=to_json(identity),
        format=d.get("format"), files=list(d.get("files") or []), n_files=len(d.get("files") or []),
        size_bytes=_int(d.get("bytes_total")), n_tensors=_int(d.get("n_tensors")),
        total_params=_int(d.get("total_params")), active_params=_int(d.get("active_params")),
        buffer_elements=_int(d.get("buffer_elements")), quant_state_elements=_int(d.get("quant_state_elements")),
        packed_logical_params=_int(d.get("packed_logical_params")),
        elements_by_dtype=to_json(d.get("elements_by_dtype")), params_by_dtype=to_json(d.get("params_by_dtype")),
        quant_method=q.get("method"), tied=bool((d.get("ties") or {}).get("tie_word_embeddings")),
        moe=bool(moe.get("detected")), moe_detail=to_json(moe), quantization=to_json(q),
        agg_absmax=_num(agg.get("absmax")), agg_mean=_num(agg.get("mean")), agg_std=_num(agg.get("std")),
        agg_nan=_int(agg.get("nan")),
        agg_inf=None if not agg else int(agg.get("posinf", 0)) + int(agg.get("neginf", 0)),
        agg_zeros=_int(agg.get("zeros")),
        quant_summary=to_json((d.get("quant") or {}).get("summary")),
        weights_bytes_bf16=_weights_bytes(plan, "bf16"), weights_bytes_int8=_weights_bytes(plan, "int8"),
        weights_bytes_int4=_weights_bytes(plan, "int4"),
        kv_bytes_per_token=_num(per_token.get("value") if isinstance(per_token, dict) else per_token),
        transfer=to_json(d.get("transfer")), scan_s=float(scan_s), worker=worker,
        paramkit_version=d.get("paramkit_version"))
    return row


def error_row(source: str, error: dict, *, attempts: int, worker: str, version: str) -> dict:
    """The models row of a source that failed: status error and its code, type and message."""
    row = {name: None for name, _, _ in MODEL_COLUMNS}
    row.update(source=source, model_id=model_id(source), status="error", error_code=error.get("code"),
               error_type=error.get("type"), error_message=error.get("message"), attempts=attempts,
               worker=worker, paramkit_version=version, files=[], n_files=0, tied=False, moe=False)
    return row


def tensor_rows(source: str, tensors: list[dict]) -> list[dict]:
    """The tensors rows of a successful scan (tensors: to_dict()["tensors"])."""
    mid = model_id(source)
    out = []
    for t in tensors:
        s = t.get("stats") or {}
        row = {"model_id": mid, "source": source, "name": t["name"], "dtype": t["dtype"],
               "shape": [int(x) for x in t["shape"]], "numel": int(t["numel"]), "nbytes": int(t["nbytes"]),
               "role": t.get("role"), "quantiles": to_json(s.get("quantiles")), "quant": to_json(t.get("quant"))}
        for k in _STAT_KEYS:
            v = s.get(k)
            row[k] = None if v is None else (int(v) if k in ("zeros", "nan", "posinf", "neginf", "subnormal")
                                             else float(v))
        out.append(row)
    return out

