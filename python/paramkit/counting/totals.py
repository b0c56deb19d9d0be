"""count_table, the entry point of counting, and what it returns: Counting, the totals (per role, per dtype,
per module and layer group) summed from the roles in one pass, and the totals the metadata declares."""
from __future__ import annotations

from dataclasses import dataclass, field

from .._gcpause import gc_paused
from ..table import TensorTable
from .moe import moe_of
from .quant import parse_quant_config, quant_summary
from .roles import ROLES, Classifier, TensorRole
from .ties import decide_tie, same_view_duplicates


@dataclass
class Counting:
    path: str
    format: str
    roles: list[TensorRole]
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

    @property
    def stored_elements_by_dtype(self) -> dict[str, int]:
        return self.elements_by_dtype

    @property
    def n_tensors(self) -> int:
        return len(self.roles)

    def role_counts(self) -> dict[str, int]:
        out = {r: 0 for r in ROLES}
        for r in self.roles:
            out[r.role] += 1
        return out

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
        if tensors:
            d["roles"] = [r.to_dict() for r in self.roles]
        return d


def _grp() -> dict[str, int]:
    return {"params": 0, "elements": 0, "bytes": 0, "tensors": 0}


def _add_grp(bucket: dict[str, dict[str, int]], key: str, params: int, elements: int, nbytes: int,
             tensors: int) -> None:
    g = bucket.get(key)
    if g is None:
        g = bucket[key] = _grp()
    g["params"] += params
    g["elements"] += elements
    g["bytes"] += nbytes
    g["tensors"] += tensors


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


def _count_table(table: TensorTable, tie_stats_equal: bool | None) -> Counting:
    config = table.config if isinstance(table.config, dict) else None
    quant = parse_quant_config(config)
    clf = Classifier(table, quant)
    roles = clf.classify_all(table.tensors)
    notes = list(clf.notes)
    qsum = quant_summary(quant, clf.detected, roles, notes)
    ties, tie_pending = decide_tie(table.tensors, roles, config, notes, tie_stats_equal)
    views = same_view_duplicates(table.tensors, roles)
    if views:
        ties["same_view"] = views
        notes.append(f"{len(views)} tensor(s) are the same view of a storage as another name (tied modules): "
                     "counted once")
    moe = moe_of(roles, config, notes)

    # totals -----------------------------------------------------------------------------
    # One pass over 100k tensors in the largest headers, sums in locals: per run of consecutive
    # tensors with the same dtype (elements_by_dtype, params_by_dtype), and per segment of consecutive
    # tensors with the same first name component and layer (the module and layer groups), each run
    # added to its dict entry when it ends -- entries in order of first appearance, the same sums,
    # a few dict operations per run instead of per tensor (tensors come in file order: long runs).
    # A layer is a prefix of whole name components, so the same layer means the same module.
    total_params = 0
    parameter_elements = packed_stored = packed_logical = buffer_el = qstate_el = optim_el = 0
    b_param = b_packed = b_buffer = b_qstate = b_optim = 0
    elements_by_dtype: dict[str, int] = {}
    params_by_dtype: dict[str, int] = {}
    modules: dict[str, dict[str, int]] = {}
    layers: dict[str, dict[str, int]] = {}
    d_key = None                        # dtype run: its elements, its counted plain parameters
    d_e = d_p = d_n = 0
    d_has_p = False
    s_top = s_lay = None                # segment: module, layer (None: none) and group sums
    s_p = s_e = s_b = s_n = 0
    for t, r in zip(table.tensors, roles):
        numel = t.numel
        nbytes = t.nbytes
        dtype = t.dtype
        if dtype is not d_key and dtype != d_key:
            if d_n:
                elements_by_dtype[d_key] = elements_by_dtype.get(d_key, 0) + d_e
                if d_has_p:
                    params_by_dtype[d_key] = params_by_dtype.get(d_key, 0) + d_p
            d_key = dtype
            d_e = d_p = d_n = 0
            d_has_p = False
        d_e += numel
        d_n += 1
        role = r.role
        if role == "parameter":
            b_param += nbytes
            if r.counted:
                counted = r.logical_numel
                parameter_elements += numel
                d_p += numel
                d_has_p = True
            else:
                counted = 0
        elif role == "packed_parameter":
            b_packed += nbytes
            packed_stored += numel
            if r.counted:
                counted = r.logical_numel
                packed_logical += counted
                pf = r.pack_factor
                key = f"{dtype}×{int(pf) if float(pf).is_integer() else round(float(pf), 4)}"
                params_by_dtype[key] = params_by_dtype.get(key, 0) + counted
            else:
                counted = 0
        elif role == "buffer":
            b_buffer += nbytes
            buffer_el += numel
            counted = 0
        elif role == "optimizer":
            b_optim += nbytes
            optim_el += numel
            counted = 0
        else:
            b_qstate += nbytes
            qstate_el += numel
            counted = 0
        total_params += counted
        lay = r.layer
        if lay is None or lay is not s_lay:
            top = t.name.partition(".")[0]
            if s_n and (top != s_top or lay != s_lay):
                _add_grp(modules, s_top, s_p, s_e, s_b, s_n)
                if s_lay is not None:
                    _add_grp(layers, s_lay, s_p, s_e, s_b, s_n)
                s_p = s_e = s_b = s_n = 0
            s_top = top
            s_lay = lay
        s_p += counted
        s_e += numel
        s_b += nbytes
        s_n += 1
    if d_n:
        elements_by_dtype[d_key] = elements_by_dtype.get(d_key, 0) + d_e
        if d_has_p:
            params_by_dtype[d_key] = params_by_dtype.get(d_key, 0) + d_p
    if s_n:
        _add_grp(modules, s_top, s_p, s_e, s_b, s_n)
        if s_lay is not None:
            _add_grp(layers, s_lay, s_p, s_e, s_b, s_n)
    bytes_by_role = {"parameter": b_param, "buffer": b_buffer, "quant_state": b_qstate,
                     "packed_parameter": b_packed}
    if optim_el or b_optim:
        bytes_by_role["optimizer"] = b_optim
    bytes_total = b_param + b_buffer + b_qstate + b_packed + b_optim   # each tensor is in one role
    total_elements = sum(elements_by_dtype.values())                # and has one dtype
    elements_by_dtype = dict(sorted(elements_by_dtype.items(), key=lambda kv: (-kv[1], kv[0])))
    params_by_dtype = dict(sorted(params_by_dtype.items(), key=lambda kv: (-kv[1], kv[0])))

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

    return Counting(
        path=table.path, format=table.format, roles=roles, total_params=total_params,
        total_elements=total_elements, parameter_elements=parameter_elements,
        packed_stored_elements=packed_stored, packed_logical_params=packed_logical,
        buffer_elements=buffer_el, quant_state_elements=qstate_el, optimizer_elements=optim_el,
        elements_by_dtype=elements_by_dtype, params_by_dtype=params_by_dtype,
        bytes_total=bytes_total, bytes_by_role=bytes_by_role,
        groups={"modules": modules, "layers": layers}, declared=declared, quantization=qsum,
        ties=ties, moe=moe, active_params=active, active_params_reason=reason, notes=notes,
        tie_pending=tie_pending)


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (decimal prefixes), for tables."""
    if n is None:
        return "?"
    a = abs(n)
    for div, suf in ((1e12, "T"), (1e9, "B" if not unit else "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{n / div:.2f}{suf}{unit}"
    return f"{n:g}{unit}" if isinstance(n, float) else f"{n}{unit}"
