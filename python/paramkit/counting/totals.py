"""count_table, the entry point of counting, and what it returns: Counting, the totals (per role, per dtype,
per module and layer group) summed from the roles in one pass, and the totals the metadata declares."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._gcpause import gc_paused
from ..table import TensorTable
from .gguf import gguf_summary
from .moe import moe_of
from .quant import parse_quant_config, quant_summary
from .roles import BUFFER, OPTIMIZER, PACKED, PARAMETER, QUANT_STATE, ROLES, Classifier, RoleColumns, TensorRole
from .ties import decide_tie, same_view_duplicates


@dataclass
class Counting:
    path: str
    format: str
    role_columns: RoleColumns       # the roles as columns; ``roles`` makes the TensorRole objects on first use
    total_params: int
    total_elements: int
    parameter_elements: int          # stored elements of plain parameters (counted ones)
    packed_stored_elements: int
    packed_logical_params: int
    buffer_elements: int
    quant_state_elements: int
    elements_by_dtype: dict[str, int]
    params_by_dtype: dict[str, int]
    bytes_total: int
    bytes_by_role: dict[str, int]
    groups: dict[str, dict[str, dict[str, int]]]
    declared: dict[str, dict]
    quantization: dict
    ties: dict
    moe: dict
    active_params: int | None
    active_params_reason: str
    optimizer_elements: int = 0      # elements of a training checkpoint's optimizer state (never parameters)
    notes: list[str] = field(default_factory=list)
    # (embedding, lm_head) indices in roles / table.tensors when config.json ties a present lm_head and nothing
    # compared their values yet: scan() compares their statistics after the data pass (ties.confirm_with_statistics)
    tie_pending: tuple[int, int] | None = field(default=None, repr=False)
    gguf: dict | None = None         # a GGUF model's file type, bits per weight per type, padding (counting.gguf)

    @property
    def roles(self) -> list[TensorRole]:
        """One TensorRole per tensor, table order (made on first use)."""
        return self.role_columns.roles()

    @property
    def stored_elements_by_dtype(self) -> dict[str, int]:
        return self.elements_by_dtype

    @property
    def n_tensors(self) -> int:
        return len(self.role_columns)

    def role_counts(self) -> dict[str, int]:
        counts = np.bincount(self.role_columns.code, minlength=len(ROLES)).tolist()
        return dict(zip(ROLES, counts))

    def to_dict(self, *, tensors: bool = True) -> dict:
        d = {
            "path": self.path,
            "format": self.format,
            "n_tensors": self.n_tensors,
            "total_params": self.total_params,
            "active_params": self.active_params,
            "active_params_reason": self.active_params_reason,
            "total_elements": self.total_elements,
            "parameter_elements": self.parameter_elements,
            "packed_stored_elements": self.packed_stored_elements,
            "packed_logical_params": self.packed_logical_params,
            "buffer_elements": self.buffer_elements,
            "quant_state_elements": self.quant_state_elements,
            "optimizer_elements": self.optimizer_elements,
            "elements_by_dtype": dict(self.elements_by_dtype),
            "stored_elements_by_dtype": dict(self.elements_by_dtype),
            "params_by_dtype": dict(self.params_by_dtype),
            "bytes_total": self.bytes_total,
            "bytes_by_role": dict(self.bytes_by_role),
            "tensors_by_role": self.role_counts(),
            "groups": {k: {n: dict(v) for n, v in g.items()} for k, g in self.groups.items()},
            "declared": {k: dict(v) for k, v in self.declared.items()},
            "quantization": dict(self.quantization),
            "ties": dict(self.ties),
            "moe": dict(self.moe),
            "notes": list(self.notes),
        }
        if self.gguf is not None:
            d["gguf"] = dict(self.gguf)
        if tensors:
            d["roles"] = [r.to_dict() for r in self.roles]
        return d


def count_table(table: TensorTable, *, tie_stats_equal: bool | None = None) -> Counting:
    """Count a model from its TensorTable (and ``table.config``); reads no tensor data.

    Rules (formats.md "What counts as a parameter", issue 5), in the order they are applied:

    1. Quantized checkpoints.  The method comes from ``config.json``'s ``quantization_config``
       (``quant_method``: gptq, awq, bitsandbytes, compressed-tensors, fp8, fbgemm_fp8, mxfp4, ...);
       without one, from name patterns (``.qweight`` + ``.scales``/``.qzeros``/``.g_idx`` = GPTQ/AWQ,
       ``.weight`` U8 + ``.weight.absmax``/``.quant_state.bitsandbytes__*`` = bitsandbytes 4-bit,
       ``.weight`` I8 + ``.SCB`` = bitsandbytes 8-bit, ``weight_packed`` = compressed-tensors,
       ``*_blocks`` U8 + ``*_scales`` = MXFP4, U8 ``weight`` + F8 ``weight_scale`` = NVFP4): one detector
       per method, counting.quant.DETECTORS.  Packed weights count ``stored bits / logical bits``
       logical parameters (GPTQ/AWQ I32 ``qweight`` = 32/bits per element, bnb 4-bit and MXFP4 U8 = 2).
       Scales, zero points, ``g_idx``, ``absmax``, ``quant_map``, ``nested_*``, ``SCB``,
       ``weight_scale*``, ``input_scale``, ``weight_shape`` and E8M0 tensors are ``quant_state``.
    2. Buffers by name: ``position_ids``, ``token_type_ids``, ``inv_freq``, ``masked_bias``,
       ``num_batches_tracked``, ``running_mean``/``running_var``, and ``attn.bias`` /
       ``attention.bias`` with 2+ dimensions (GPT-2's causal masks, saved as F32 in some
       checkpoints) — whatever their dtype.
    3. Otherwise integer / bool tensors are buffers, floating-point (and complex) ones parameters.

    Then ties (``tie_word_embeddings``: an absent lm_head is normal; a present one with the
    embedding's shape is counted once unless its values are known to differ, see ties.decide_tie),
    and MoE (routed experts by ``experts.N.`` names or as stacked tensors under an ``experts``
    module; shared experts and routers always active).

    ``tie_stats_equal``: whether the statistics of the embedding and the lm_head that config.json ties
    are equal (ties.statistics_equal); scan() passes it after its data pass through
    ties.confirm_with_statistics. None (the default): not compared, config.json is trusted.
    """
    with gc_paused():   # a few acyclic objects per tensor, 100k tensors in MoE headers
        return _count_table(table, tie_stats_equal)


def _sums(codes: np.ndarray, k: int, values: np.ndarray) -> list[int]:
    """Per code 0..k-1 the sum of `values` (int64 or Python-int object columns) over the tensors of that code."""
    out = np.zeros(k, dtype=values.dtype)
    np.add.at(out, codes, values)
    return [int(v) for v in out.tolist()]


def _groups(codes: np.ndarray, keys: list[str], params, numel, nbytes) -> dict[str, dict[str, int]]:
    """{keys[c]: {"params", "elements", "bytes", "tensors"}} summed over the tensors of each code c >= 0."""
    has = codes >= 0
    c = codes[has]
    k = len(keys)
    p, e, b = (_sums(c, k, v[has]) for v in (params, numel, nbytes))
    t = np.bincount(c, minlength=k).tolist()
    return {key: {"params": p[j], "elements": e[j], "bytes": b[j], "tensors": t[j]} for j, key in enumerate(keys)}


def _count_table(table: TensorTable, tie_stats_equal: bool | None) -> Counting:
    config = table.config if isinstance(table.config, dict) else None
    quant = parse_quant_config(config)
    clf = Classifier(table, quant)
    rc = clf.classify_columns()
    notes = list(clf.notes)
    qsum = quant_summary(quant, clf.detected, rc.distinct(), notes)
    ties, tie_pending = decide_tie(clf.info, rc, config, notes, tie_stats_equal)
    if table._tensors is not None:
        views = same_view_duplicates(table._tensors, rc)
        if views:
            ties["same_view"] = views
            notes.append(f"{len(views)} tensor(s) are the same view of a storage as another name (tied modules): "
                         "counted once")
    moe = moe_of(rc, config, notes)

    # totals: sums over columns, per role, dtype, module (first name component) and layer
    cols = table.columns
    code = rc.code
    if rc.logical.dtype == object:     # sums that may not fit an int64: Python ints
        numel, nbytes = (np.array(c.tolist(), dtype=object) for c in (cols.numel, cols.nbytes))
    else:
        numel, nbytes = cols.numel.astype(np.int64), cols.nbytes.astype(np.int64)
    is_param = code == PARAMETER
    is_packed = code == PACKED
    counted_p = rc.counted & is_param
    counted_k = rc.counted & is_packed
    params = np.where(counted_p | counted_k, rc.logical, 0)
    role_numel = _sums(code, len(ROLES), numel)
    role_bytes = _sums(code, len(ROLES), nbytes)
    total_params = int(params.sum())
    parameter_elements = int(numel[counted_p].sum())
    packed_logical = int(params[counted_k].sum())
    nd = len(cols.dtype_names)
    dnames = cols.dtype_names
    d_numel = _sums(cols.dtype, nd, numel)
    d_count = np.bincount(cols.dtype, minlength=nd)
    d_params = _sums(cols.dtype[counted_p], nd, numel[counted_p])
    d_has_p = np.bincount(cols.dtype[counted_p], minlength=nd)
    elements_by_dtype = {dnames[d]: d_numel[d] for d in range(nd) if d_count[d]}
    params_by_dtype = {dnames[d]: d_params[d] for d in range(nd) if d_has_p[d]}
    for i in np.flatnonzero(counted_k).tolist():   # packed weights: "<dtype>×<pack factor>"
        k = int(rc.kind[i])
        pf = (rc.objects[i] if k < 0 else rc.kinds[k]).pack_factor
        key = f"{dnames[cols.dtype[i]]}×{int(pf) if float(pf).is_integer() else round(float(pf), 4)}"
        params_by_dtype[key] = params_by_dtype.get(key, 0) + int(rc.logical[i])
    bytes_by_role = {"parameter": role_bytes[PARAMETER], "buffer": role_bytes[BUFFER],
                     "quant_state": role_bytes[QUANT_STATE], "packed_parameter": role_bytes[PACKED]}
    if role_numel[OPTIMIZER] or role_bytes[OPTIMIZER]:
        bytes_by_role["optimizer"] = role_bytes[OPTIMIZER]
    bytes_total = sum(role_bytes)                                   # each tensor is in one role
    total_elements = sum(elements_by_dtype.values())                # and has one dtype
    elements_by_dtype = dict(sorted(elements_by_dtype.items(), key=lambda kv: (-kv[1], kv[0])))
    params_by_dtype = dict(sorted(params_by_dtype.items(), key=lambda kv: (-kv[1], kv[0])))
    pats = rc.patterns
    top_codes, top_first = pats.prefix_codes([pat.find(".") if "." in pat else len(pat) for pat in pats.patterns])
    names = cols.names
    modules = _groups(top_codes, [names[i].partition(".")[0] for i in top_first.tolist()], params, numel, nbytes)
    layers = _groups(rc.layer, rc.layer_names, params, numel, nbytes)
    packed_stored = role_numel[PACKED]
    buffer_el, qstate_el, optim_el = role_numel[BUFFER], role_numel[QUANT_STATE], role_numel[OPTIMIZER]

    # declared totals --------------------------------------------------------------------
    declared: dict[str, dict] = {}
    sources = [("index", table.index_metadata or {}), ("metadata", table.metadata or {})]
    for key, computed in (("total_parameters", total_params), ("total_size", bytes_total)):
        for src, meta in sources:
            v = meta.get(key) if isinstance(meta, dict) else None
            if v is None:
                continue
            try:
                dv = int(v)
            except (TypeError, ValueError):
                notes.append(f"declared {key} {v!r} is not an integer")
                continue
            declared[key] = {"declared": dv, "computed": computed, "difference": computed - dv,
                             "source": src}
            if dv != computed:
                what = "parameters" if key == "total_parameters" else "data bytes"
                notes.append(f"{src} metadata declares {key}={dv:,}; computed {what}: {computed:,} "
                             f"(difference {computed - dv:+,})")
            break

    if moe.get("detected"):
        active, reason = moe.get("active_params"), moe.get("active_reason", "")
    else:
        active, reason = total_params, "dense model: every parameter is active"
    moe.pop("active_params", None)
    moe.pop("active_reason", None)
    gguf = None
    if table.format == "gguf":     # its quantization is the file's own (general.file_type), not a config's
        gguf = gguf_summary(table, rc)
        qsum.update(method="gguf", source="GGUF metadata (general.file_type)", format=gguf["file_type"])

    return Counting(
        path=table.path, format=table.format, role_columns=rc, total_params=total_params,
        total_elements=total_elements, parameter_elements=parameter_elements,
        packed_stored_elements=packed_stored, packed_logical_params=packed_logical,
        buffer_elements=buffer_el, quant_state_elements=qstate_el, optimizer_elements=optim_el,
        elements_by_dtype=elements_by_dtype, params_by_dtype=params_by_dtype,
        bytes_total=bytes_total, bytes_by_role=bytes_by_role,
        groups={"modules": modules, "layers": layers}, declared=declared, quantization=qsum,
        ties=ties, moe=moe, active_params=active, active_params_reason=reason, notes=notes,
        tie_pending=tie_pending, gguf=gguf)
