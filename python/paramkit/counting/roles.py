"""The role of every tensor (parameter, buffer, quantization state, packed quantized weight): TensorRole, the
buffer rules, and the classifier that asks the quantization detectors (counting.quant) first."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .._gcpause import gc_paused
from ..dtypes import DTYPES
from ..table import TensorColumns, TensorInfo, TensorTable
from .patterns import NamePatterns, digit_regex, factorize, stable_argsort
from .quant import DETECTORS, INT_KINDS, Detector, QuantConfig

ROLES = ("parameter", "buffer", "quant_state", "packed_parameter", "optimizer")
ROLE_CODE = {r: i for i, r in enumerate(ROLES)}
PARAMETER, BUFFER, QUANT_STATE, PACKED, OPTIMIZER = range(len(ROLES))


@dataclass
class TensorRole:
    name: str
    role: str                       # one of ROLES
    dtype: str
    shape: tuple[int, ...]
    stored_numel: int               # elements as the file stores them
    logical_numel: int              # parameters this tensor stands for (0 for buffers / quant state)
    pack_factor: float = 1          # logical / stored elements (1 unless packed)
    logical_bits: float | None = None  # bits per logical weight of a packed tensor
    quant_method: str | None = None
    reason: str = ""                # which rule decided the role
    counted: bool = True            # contributes to total_params (False for a tied duplicate)
    expert: dict | None = None      # {"kind": "routed"|"shared", "index", "stacked", "layer"}
    flags: list[str] = field(default_factory=list)  # "tied", "tied_duplicate", "router", ...
    layer: str | None = None        # prefix up to the first all-digit component ("model.layers.7")

    def to_dict(self) -> dict:
        pf = self.pack_factor
        return {
            "name": self.name, "role": self.role, "dtype": self.dtype, "shape": list(self.shape),
            "stored_numel": self.stored_numel, "logical_numel": self.logical_numel,
            "pack_factor": int(pf) if float(pf).is_integer() else float(pf),
            "logical_bits": self.logical_bits, "quant_method": self.quant_method,
            "reason": self.reason, "counted": self.counted, "expert": self.expert,
            "flags": list(self.flags), "layer": self.layer,
        }


BUFFER_LEAVES = {"position_ids", "token_type_ids", "inv_freq", "masked_bias",
                 "num_batches_tracked", "running_mean", "running_var", "_float_tensor",
                 "cos_cached", "sin_cached", "original_inv_freq"}
# modules whose weight is a computed table, not a trained parameter: GGUF's RoPE frequency factors (llama.cpp)
BUFFER_MODULES = {"rope_freqs", "rope_factors_long", "rope_factors_short"}


def split_name(name: str) -> tuple[str, str]:
    """"a.b.weight" -> ("a.b", "weight"); a name without a dot is all leaf."""
    if "." in name:
        base, leaf = name.rsplit(".", 1)
        return base, leaf
    return "", name


_LAYER_PREFIX_RE = re.compile(r"^((?:[^.]*\.)*?\d+)\.")
_DIGIT_RUNS = re.compile("\0+")      # masked digits of a NamePatterns pattern, run by run
_LAYER_PATTERN_RE = digit_regex(_LAYER_PREFIX_RE.pattern)   # the same on NamePatterns patterns


def layer_of(name: str) -> str | None:
    """"model.layers.7.mlp.up_proj.weight" -> "model.layers.7"; None without a numbered component."""
    m = _LAYER_PREFIX_RE.match(name)
    return m.group(1) if m else None


def is_attention_mask(base: str, leaf: str, shape) -> bool:
    """attn.bias / attention.bias with 2+ dimensions: GPT-2's causal masks (saved as F32 in some checkpoints)."""
    return leaf == "bias" and len(shape) >= 2 and base.rpartition(".")[2] in ("attn", "attention")


def unquantized_role(kind: str, leaf: str, attention_mask: bool, base: str = "") -> tuple[str, str]:
    """(role, reason) of a tensor that no quantization detector claimed: rule 2, buffers by name (its leaf, or
    its module `base` for computed tables), then rule 3, the dtype (integer and bool tensors are buffers,
    floating-point and complex ones parameters)."""
    if leaf in BUFFER_LEAVES:
        return "buffer", f"buffer by name ({leaf})"
    if base in BUFFER_MODULES:
        return "buffer", f"computed table by name ({base})"
    if attention_mask:
        return "buffer", "causal attention mask (attn.bias with 2+ dims)"
    return ("buffer" if kind in INT_KINDS else "parameter"), f"{kind} dtype"


@functools.lru_cache(maxsize=4096)
def quant_rules_may_apply(dtype: str, leaf: str) -> bool:
    """Whether a quantization detector may claim or annotate a tensor of this dtype and leaf, depending on its
    siblings, shape or config.json (Detector.may_concern); False only when none can (a name holding
    '.quant_state.' aside: the caller tests that). Dtypes outside DTYPES always may."""
    d = DTYPES.get(dtype)
    return d is None or any(det.may_concern(d, dtype, leaf) for det in DETECTORS)


def _overrides(method: str) -> tuple[Detector, ...]:
    return tuple(d for d in DETECTORS if getattr(type(d), method) is not getattr(Detector, method))


_CLAIMING = _overrides("claim")
_ANNOTATING = _overrides("annotate")
EXPERT_KINDS = (None, "routed", "shared")


def exact_int_column(values: np.ndarray, scale: int = 1) -> np.ndarray:
    """values (uint64) as int64 when every sum of up to all of them times `scale` fits, else as Python ints."""
    if not len(values) or float(values.sum(dtype=np.float64)) * scale < 2.0 ** 62:
        return values.astype(np.int64)
    return np.array(values.tolist(), dtype=object)


class RoleColumns:
    """The roles of a table's tensors as columns (table order): ``code`` (codes into ROLES), ``logical``
    (logical_numel), ``counted``, ``kind`` (index into ``kinds``: a TensorRole whose role, pack_factor,
    logical_bits, quant_method, reason and flags the tensor's role has; -1: the tensor's own TensorRole in
    ``objects``), ``layer`` (codes into ``layer_names``, -1: none) and, once MoE is known, the expert columns.
    TensorRole objects are made on first use (role(i), roles()); a change made to one (flags, counted, reason)
    stays with it, and sync() copies ``counted`` back into the column."""

    def __init__(self, columns: TensorColumns, patterns: NamePatterns, layer: np.ndarray, layer_names: list[str]):
        n = len(columns)
        self.columns = columns
        self.patterns = patterns
        self.code = np.zeros(n, dtype=np.uint8)
        self.logical = np.zeros(n, dtype=np.int64)
        self.counted = np.ones(n, dtype=bool)
        self.kind = np.full(n, -1, dtype=np.int64)
        self.kinds: list[TensorRole] = []
        self.objects: dict[int, TensorRole] = {}
        self.layer = layer
        self.layer_names = layer_names
        self.expert_kind: np.ndarray | None = None      # codes into EXPERT_KINDS
        self.expert_index: np.ndarray | None = None     # -1: None
        self.expert_stacked: np.ndarray | None = None   # -1: None
        self.router: np.ndarray | None = None           # flagged "router" (after any other flag)
        self._roles: list[TensorRole] | None = None

    def __len__(self) -> int:
        return len(self.code)

    def add_kind(self, template: TensorRole) -> int:
        self.kinds.append(template)
        return len(self.kinds) - 1

    def layer_of(self, i: int) -> str | None:
        c = int(self.layer[i])
        return None if c < 0 else self.layer_names[c]

    def expert_of(self, i: int) -> dict | None:
        if self.expert_kind is None or not self.expert_kind[i]:
            return None
        idx, st = int(self.expert_index[i]), int(self.expert_stacked[i])
        return {"kind": EXPERT_KINDS[self.expert_kind[i]], "index": None if idx < 0 else idx,
                "stacked": None if st < 0 else st, "layer": self.layer_of(i) or ""}

    def role(self, i: int) -> TensorRole:
        """The TensorRole of tensor i (made once)."""
        if self._roles is not None:
            return self._roles[i]
        r = self.objects.get(i)
        if r is None:
            c = self.columns
            t = self.kinds[self.kind[i]]
            r = self.objects[i] = TensorRole(
                c.names[i], t.role, c.dtype_names[c.dtype[i]], c.shape(i), int(c.numel[i]), int(self.logical[i]),
                t.pack_factor, t.logical_bits, t.quant_method, t.reason, bool(self.counted[i]), self.expert_of(i),
                list(t.flags) if self.router is None or not self.router[i] else [*t.flags, "router"], self.layer_of(i))
        return r

    def sync(self) -> None:
        """``counted`` of the TensorRole objects made so far into the column."""
        for i, r in self.objects.items():
            self.counted[i] = r.counted

    def set_experts(self, kind: np.ndarray, index: np.ndarray, stacked: np.ndarray) -> None:
        self.expert_kind, self.expert_index, self.expert_stacked = kind, index, stacked
        for i, r in self.objects.items():
            r.expert = self.expert_of(i)

    def set_router(self, router: np.ndarray) -> None:
        self.router = router
        for i, r in self.objects.items():
            if router[i]:
                r.flags.append("router")

    def roles(self) -> list[TensorRole]:
        """Every tensor's TensorRole (made once), the columns turned into lists first."""
        if self._roles is None:
            with gc_paused():   # one acyclic object per tensor
                self._roles = self._make_all()
        return self._roles

    def _make_all(self) -> list[TensorRole]:
        c = self.columns
        n = len(self)
        names, dtypes, shapes = c.names, c.dtypes(), c.shapes()
        numel, logical, counted = c.numel.tolist(), self.logical.tolist(), self.counted.tolist()
        layer_names = [None, *self.layer_names]
        layers = [layer_names[k] for k in (self.layer + 1).tolist()]
        experts = [None] * n if self.expert_kind is None else \
            [self.expert_of(i) if k else None for i, k in enumerate(self.expert_kind.tolist())]
        router = [False] * n if self.router is None else self.router.tolist()
        kinds, objects = self.kinds, self.objects
        out = []
        for i, k in enumerate(self.kind.tolist()):
            r = objects.get(i)
            if r is None:
                t = kinds[k]
                r = TensorRole(names[i], t.role, dtypes[i], shapes[i], numel[i], logical[i], t.pack_factor,
                               t.logical_bits, t.quant_method, t.reason, counted[i], experts[i],
                               [*t.flags, "router"] if router[i] else list(t.flags), layers[i])
            out.append(r)
        return out

    def distinct(self):
        """Each kind in use and each own TensorRole: what the roles of the table hold, without duplicates."""
        used = np.zeros(len(self.kinds) + 1, dtype=bool)
        used[self.kind] = True
        return [k for k, u in zip(self.kinds, used) if u] + list(self.objects.values())


def _same_shape_groups(cols: TensorColumns, idx: np.ndarray) -> list[np.ndarray]:
    """idx split by shape (each part ascending)."""
    if len(idx) < 2:
        return [idx]
    nd = cols.ndim[idx]
    starts = cols.starts()[idx]
    width = int(nd.max())
    if int(nd.min()) == width:       # one rank: a block of dims
        if not width:
            return [idx]
        rows = cols.dims[starts[:, None] + np.arange(width)]
    else:
        rows = np.full((len(idx), width + 1), -1, dtype=np.int64)
        rows[:, 0] = nd
        for k in range(width):
            has = nd > k
            rows[has, k + 1] = cols.dims[starts[has] + k].astype(np.int64)
    if (rows == rows[0]).all():
        return [idx]
    _, inverse = np.unique(rows, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return [idx[inverse == g] for g in np.unique(inverse).tolist()]


class _Siblings:
    """Classifier.by_name: name -> TensorInfo of the table's tensors, found through its NamePatterns (no
    dictionary of every name); with `record`, each name asked for and the index found (None: absent)."""

    def __init__(self, clf: "Classifier", record: list | None = None):
        self._clf = clf
        self.record = record

    def get(self, name: str, default=None):
        i = self._clf.patterns.find(name)
        if self.record is not None:
            self.record.append((name, i))
        return default if i is None else self._clf.info(i)

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __getitem__(self, name: str) -> TensorInfo:
        t = self.get(name)
        if t is None:
            raise KeyError(name)
        return t


class Classifier:
    """Decides the role of each tensor of a table; the detectors call back has / by_name (siblings), packed /
    state (roles that record the detected method) and append to notes."""

    def __init__(self, table: TensorTable, quant: QuantConfig):
        self._table = table
        self.q = quant
        self.detected: dict[str, int] = {}      # method detected from names -> tensors
        self.notes: list[str] = []
        self._events: list | None = None         # (tensor, order, method, count) while classify_columns runs
        # _by_class: (pattern with digit runs as one NUL, dtype, shape) -> [(role, siblings record, events)]
        self._decided: dict[tuple, list] = {}
        self._at = 0

    @functools.cached_property
    def patterns(self) -> NamePatterns:
        return NamePatterns(self._table.names)

    @functools.cached_property
    def by_name(self) -> _Siblings:
        return _Siblings(self)

    def info(self, i: int) -> TensorInfo:
        t = self._table._tensors
        return t[i] if t is not None else self._table.columns.info(i)

    # --- for the detectors
    def has(self, name: str) -> bool:
        return name in self.by_name

    def detect(self, method: str) -> None:
        self.detected[method] = self.detected.get(method, 0) + 1
        if self._events is not None:
            self._events.append((self._at, len(self._events), method, 1))

    def packed(self, t: TensorInfo, bits: float, method: str, reason: str) -> TensorRole:
        """A packed quantized weight: stored bits / `bits` logical parameters."""
        stored_bits = t.numel * DTYPES[t.dtype].bits
        logical = Fraction(stored_bits) / Fraction(bits)
        if logical.denominator != 1:
            self.notes.append(f"{t.name}: {stored_bits} stored bits are not a multiple of "
                              f"{bits} bits per weight; logical count rounded down")
        logical_n = int(logical)
        factor = Fraction(DTYPES[t.dtype].bits) / Fraction(bits)
        self.detect(method)
        return TensorRole(t.name, "packed_parameter", t.dtype, tuple(t.shape), t.numel, logical_n,
                          float(factor) if factor.denominator != 1 else int(factor),
                          float(bits) if not float(bits).is_integer() else int(bits),
                          method, reason)

    def state(self, t: TensorInfo, method: str | None, reason: str) -> TensorRole:
        """Quantization state (scales, zero points, ...): no parameters."""
        if method:
            self.detect(method)
        return TensorRole(t.name, "quant_state", t.dtype, tuple(t.shape), t.numel, 0, 1, None,
                          method, reason)

    # --- all tensors
    def classify_all(self, tensors: list[TensorInfo] | None = None) -> list[TensorRole]:
        """The roles of the table's tensors (`tensors`, if given, must be table.tensors), as classify() decides
        them, each role's .layer = layer_of(name): classify_columns().roles()."""
        return self.classify_columns().roles()

    def classify_columns(self) -> RoleColumns:
        """The roles of the table's tensors as RoleColumns, decided once per class of tensors that classify()
        cannot tell apart, not once per tensor (a 100,000-tensor MoE header has a few hundred classes):

        * a tensor that no quantization detector can concern (quant_rules_may_apply, no '.quant_state.' in
          the name) gets unquantized_role, once per (name pattern, dtype, attention mask);
        * any other of a known dtype and no role hint, once per (name pattern, dtype, shape, siblings): one of
          them (the representative) is classified, recording each sibling name the detectors ask for; every
          tensor of its pattern, dtype and shape whose siblings of those names exist alike (same dtype and
          shape) gets its role, counted once per tensor for the detected methods. A class that adds notes
          (which name the tensor) is classified tensor by tensor;
        * the rest (role hints, dtypes of other formats) tensor by tensor.
        Tensor-by-tensor classification runs in table order, so the notes come in the order classify() would
        write them; ``detected`` counts in order of first detection as well."""
        cols = self._table.columns
        pats = self.patterns
        layer_ends = [None if (m := pats.search(_LAYER_PATTERN_RE, p)) is None else m.end(1) for p in range(len(pats))]
        layer, first = pats.prefix_codes(layer_ends)
        names = cols.names
        layer_names = [names[i][:layer_ends[pats.code[i]]] for i in first.tolist()]
        rc = RoleColumns(cols, pats, layer, layer_names)
        rc.logical = exact_int_column(cols.numel, 64)     # packed weights: up to 64 logical per stored
        dnames = cols.dtype_names
        dcode = cols.dtype
        tensors = self._table._tensors
        hinted = None
        if tensors is not None and any(t.role_hint is not None for t in tensors):
            hinted = np.array([t.role_hint is not None for t in tensors], dtype=bool)
        self._events = events = []
        one_by_one: list[np.ndarray] = []
        if hinted is not None:
            one_by_one.append(np.flatnonzero(hinted))
        # classes of (pattern, dtype): the plain ones decided here, the others per tensor group below
        cls, cls_first = factorize(pats.code * len(dnames) + dcode)
        kind_c = np.full(len(cls_first), -1, dtype=np.int64)
        code_c = np.zeros(len(cls_first), dtype=np.uint8)
        special = []
        plain: dict[tuple[str, str], int] = {}      # (role, reason) -> kind

        def plain_kind(role: str, reason: str) -> int:
            k = plain.get((role, reason))
            if k is None:
                k = plain[role, reason] = rc.add_kind(TensorRole("", role, "", (), 0, 0, reason=reason))
            return k
        for c, (p, d) in enumerate(zip(pats.code[cls_first].tolist(), dcode[cls_first].tolist())):
            pat = pats.patterns[p]
            base, _, leaf = pat.rpartition(".")
            dtype = dnames[d]
            dt = DTYPES.get(dtype)
            if dt is None or ".quant_state." in pat or quant_rules_may_apply(dtype, leaf) or \
                    leaf == "bias" and base.rpartition(".")[2] in ("attn", "attention"):
                special.append((c, p, base, leaf, dt))
                continue
            role, reason = unquantized_role(dt.kind, leaf, False, base)
            kind_c[c] = plain_kind(role, reason)
            code_c[c] = ROLE_CODE[role]
        rc.kind = kind_c[cls]
        rc.code = code_c[cls]
        rc.logical[rc.code != PARAMETER] = 0
        if special:
            order = stable_argsort(cls, len(cls_first))
            bounds = np.concatenate(([0], np.cumsum(np.bincount(cls, minlength=len(cls_first)))))
            for c, p, base, leaf, dt in special:
                idx = order[bounds[c]:bounds[c + 1]]
                if hinted is not None:
                    idx = idx[~hinted[idx]]
                if not len(idx):
                    continue
                if dt is None:
                    one_by_one.append(idx)
                elif ".quant_state." in pats.patterns[p] or quant_rules_may_apply(dt.name, leaf):
                    self._by_class(rc, p, base, idx, one_by_one)
                else:       # a bias of an attn / attention module: a mask with 2+ dimensions
                    mask = cols.ndim[idx] >= 2
                    for sel, is_mask in ((idx[~mask], False), (idx[mask], True)):
                        role, reason = unquantized_role(dt.kind, leaf, is_mask, base)
                        rc.kind[sel] = plain_kind(role, reason)
                        rc.code[sel] = ROLE_CODE[role]
                        rc.logical[sel] = np.where(role == "parameter", rc.logical[sel], 0)
        if one_by_one:
            for i in np.sort(np.concatenate(one_by_one)).tolist():
                self._at = i
                r = self.classify(self.info(i))
                r.layer = rc.layer_of(i)
                rc.objects[i] = r
                rc.kind[i] = -1
                rc.code[i] = ROLE_CODE[r.role]
                rc.logical[i] = r.logical_numel
        self._events = None
        events.sort()
        self.detected = {}
        for _, _, method, count in events:
            self.detected[method] = self.detected.get(method, 0) + count
        return rc

    def _by_class(self, rc: RoleColumns, p: int, base: str, idx: np.ndarray, one_by_one: list) -> None:
        """Roles of the tensors idx (of pattern p, one known dtype, no hint), one classify() per class. A class
        of a pattern that differs from an earlier one only in how many digits its numbers have (layers 1-9 and
        10-99) takes that one's decision when its siblings are alike (classify() reads words, not digits)."""
        cols = self._table.columns
        members = self.patterns.members(p)
        family = _DIGIT_RUNS.sub("\0", self.patterns.patterns[p])
        for group in _same_shape_groups(cols, idx):
            pending = group
            key = (family, int(cols.dtype[pending[0]]), cols.shape(int(pending[0])))
            decided = self._decided.setdefault(key, [])
            while len(pending):
                rep = int(pending[0])
                at = np.searchsorted(members, pending)
                for role, record, events in decided:
                    ok = self._siblings_alike(p, len(base), at, record)
                    if ok[0]:
                        break
                else:
                    record_names: list = []
                    sub = Classifier(self._table, self.q)
                    sub.patterns = self.patterns
                    sub.by_name = _Siblings(sub, record_names)
                    sub._events, sub._at = [], rep
                    role = sub.classify(self.info(rep))
                    rbase = cols.names[rep][:len(base)]
                    if sub.notes or any(not q.startswith(rbase) for q, _ in record_names):
                        one_by_one.append(pending)
                        break
                    record = [(q[len(base):], j) for q, j in record_names]
                    ok = self._siblings_alike(p, len(base), at, record)
                    if not ok[0]:   # the representative is not its own class (two tensors of one name)
                        one_by_one.append(pending)
                        break
                    events = [(order, method) for _, order, method, _ in sub._events]
                    decided.append((role, record, events))
                same = pending[ok]
                rc.kind[same] = rc.add_kind(role)
                rc.code[same] = ROLE_CODE[role.role]
                rc.logical[same] = role.logical_numel
                for order, method in events:
                    self._events.append((rep, order, method, len(same)))
                pending = pending[~ok]

    def _siblings_alike(self, p: int, base_len: int, at: np.ndarray, record: list) -> np.ndarray:
        """Per member at[k] of pattern p: whether each sibling name[:base_len] + suffix of `record` exists
        exactly where it did for the decided representative (j None: absent) with j's dtype and shape."""
        ok = np.ones(len(at), dtype=bool)
        if not record:
            return ok
        cols = self._table.columns
        starts, ndim, dims = cols.starts(), cols.ndim, cols.dims
        for suffix, j in record:
            sib = self.patterns.sibling_indices(p, base_len, suffix)[at]
            if j is None:
                ok &= sib < 0
                continue
            ok &= (sib >= 0) & (cols.dtype[sib] == cols.dtype[j]) & (ndim[sib] == ndim[j])
            for k in range(int(ndim[j])):
                ok &= np.where(ok, dims[np.where(ok, starts[sib], 0) + k], 0) == dims[starts[j] + k]
        return ok

    # --- the rules
    def classify(self, t: TensorInfo) -> TensorRole:
        """Rule 1, quantized checkpoints: the first detector of quant.DETECTORS that claims the tensor; rules 2
        and 3 otherwise (unquantized_role), annotated by the detectors (FP8 weights)."""
        if t.role_hint == "optimizer":
            return TensorRole(t.name, "optimizer", t.dtype, tuple(t.shape), t.numel, 0, 1, None, None,
                              "optimizer state of a training checkpoint (the format says so): never a parameter")
        base, leaf = split_name(t.name)
        dt = DTYPES.get(t.dtype)
        if dt is None:
            # a block-quantized type of another format (GGUF Q4_K, ...): the shape is logical
            bits = (8 * t.nbytes / t.numel) if t.numel else None
            self.detect(t.dtype)
            return TensorRole(t.name, "packed_parameter", t.dtype, tuple(t.shape), t.numel, t.numel,
                              1, None if bits is None else round(bits, 4), t.dtype,
                              f"block-quantized {t.dtype}: the shape is the logical element count")
        for det in _CLAIMING:
            r = det.claim(self, t, base, leaf, dt)
            if r is not None:
                return r
        role_name, why = unquantized_role(dt.kind, leaf, is_attention_mask(base, leaf, t.shape), base)
        role = TensorRole(t.name, role_name, t.dtype, tuple(t.shape), t.numel,
                          t.numel if role_name == "parameter" else 0, reason=why)
        for det in _ANNOTATING:
            det.annotate(self, t, role, base, leaf, dt)
        return role
