"""Counting on columns (issue 13): count_table decides roles, MoE and the totals per name pattern and sums with
NumPy. Checked here against a straightforward per-tensor computation written in the test, on generated name
sets (layers, experts, digits in leaves, long digit runs, names of other characters), and a header-only scan
that makes no TensorInfo object and no TensorReport until asked."""
from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import paramkit
import synthetic_models as sm
from paramkit.counting import count_table
from paramkit.dtypes import DTYPES
from paramkit.formats import open_table
from paramkit.table import TensorColumns, TensorInfo, TensorTable

_BUFFER_LEAVES = {"position_ids", "inv_freq", "running_mean", "num_batches_tracked"}
_LEAVES = ["weight", "bias", "w1", "w2", "proj_0", "position_ids", "inv_freq", "running_mean", "num_batches_tracked"]
_DTYPES = ["BF16", "F32", "F16", "I64", "I32", "BOOL", "U8"]
_TOPS = ["model", "transformer", "h", "0", "x7", "enc\u00e9", "12345678901234567890"]
_BLOCKS = ["mlp", "self_attn", "norm", "mlp.experts.{e}", "block_sparse_moe.experts.{e}", "experts.{e}.ffn"]


@hs.composite
def _models(draw):
    """(names, dtypes, shapes, config): modules with or without numbered layers, each layer with blocks (some
    of them indexed experts), leaves with and without digits; expert counts and top-k in config.json or not."""
    names: list[str] = []
    for _ in range(draw(hs.integers(1, 3))):
        top = draw(hs.sampled_from(_TOPS))
        layered = draw(hs.booleans())
        layers = draw(hs.lists(hs.integers(0, 130), min_size=1, max_size=4, unique=True)) if layered else [None]
        for layer in layers:
            prefix = f"{top}.layers.{layer}" if layer is not None else top
            for block in draw(hs.lists(hs.sampled_from(_BLOCKS), min_size=1, max_size=3, unique=True)):
                experts = draw(hs.lists(hs.integers(0, 70), min_size=1, max_size=4, unique=True)) \
                    if "{e}" in block else [0]
                for e in experts:
                    for leaf in draw(hs.lists(hs.sampled_from(_LEAVES), min_size=1, max_size=3, unique=True)):
                        names.append(f"{prefix}.{block.format(e=e)}.{leaf}")
    names = list(dict.fromkeys(names))
    dtypes = [draw(hs.sampled_from(_DTYPES)) for _ in names]
    shapes = [tuple(draw(hs.lists(hs.integers(0, 5), max_size=3))) for _ in names]
    config = draw(hs.sampled_from([None, {"num_local_experts": 8, "num_experts_per_tok": 2},
                                   {"num_experts_per_tok": 1}, {"n_routed_experts": 4}]))
    return names, dtypes, shapes, config


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _layer(name: str) -> str | None:
    """The prefix up to the first component (not the last) that is all ASCII digits."""
    parts = name.split(".")
    for k, part in enumerate(parts[:-1]):
        if part and all("0" <= c <= "9" for c in part):
            return ".".join(parts[:k + 1])
    return None


def _expert(name: str) -> int | None:
    """N of the first '.experts.N.' (or a leading 'experts.N.')."""
    parts = name.split(".")
    for k, part in enumerate(parts[:-2]):
        if part == "experts" and parts[k + 1] and all("0" <= c <= "9" for c in parts[k + 1]):
            return int(parts[k + 1])
    return None


def _expected(names, dtypes, shapes, config) -> dict:
    """The totals, one tensor at a time."""
    out = {"total": 0, "by_dtype": {}, "params_by_dtype": {}, "bytes": {"parameter": 0, "buffer": 0},
           "modules": {}, "layers": {}, "roles": [], "routed": 0, "experts": {}, "routed_layers": set()}
    for name, dtype, shape in zip(names, dtypes, shapes):
        n = _numel(shape)
        nbytes = n * DTYPES[dtype].bits // 8
        leaf = name.rsplit(".", 1)[-1]
        is_param = leaf not in _BUFFER_LEAVES and DTYPES[dtype].kind in ("float", "complex")
        role = "parameter" if is_param else "buffer"
        params = n if is_param else 0
        out["roles"].append((name, role, _layer(name)))
        out["total"] += params
        out["by_dtype"][dtype] = out["by_dtype"].get(dtype, 0) + n
        if is_param:
            out["params_by_dtype"][dtype] = out["params_by_dtype"].get(dtype, 0) + n
        out["bytes"][role] += nbytes
        groups = [("modules", name.split(".")[0])]
        if _layer(name) is not None:
            groups.append(("layers", _layer(name)))
        for kind, key in groups:
            g = out[kind].setdefault(key, {"params": 0, "elements": 0, "bytes": 0, "tensors": 0})
            g["params"] += params
            g["elements"] += n
            g["bytes"] += nbytes
            g["tensors"] += 1
        e = _expert(name)
        if e is not None:
            lay = _layer(name) or ""
            out["experts"].setdefault(lay, set()).add(e)
            if is_param:
                out["routed"] += n
                out["routed_layers"].add(lay)
    return out


def _table(names, dtypes, shapes, config) -> TensorTable:
    infos = [TensorInfo(n, d, s, "/m.safetensors", 8, _numel(s) * DTYPES[d].bits // 8, _numel(s))
             for n, d, s in zip(names, dtypes, shapes)]
    return TensorTable("/m.safetensors", "safetensors", ["/m.safetensors"], config=config,
                       columns=TensorColumns.from_infos(infos, ["/m.safetensors"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_models())
def test_columnar_counting_equals_a_per_tensor_count(model):
    names, dtypes, shapes, config = model
    want = _expected(*model)
    table = _table(*model)
    c = count_table(table)
    assert table._tensors is None            # counted from the columns: no TensorInfo list was made
    assert c.total_params == want["total"]
    assert c.elements_by_dtype == want["by_dtype"] and c.params_by_dtype == want["params_by_dtype"]
    assert list(c.elements_by_dtype.values()) == sorted(want["by_dtype"].values(), reverse=True)
    assert c.bytes_by_role == {**want["bytes"], "quant_state": 0, "packed_parameter": 0}
    assert c.groups["modules"] == want["modules"] and list(c.groups["modules"]) == list(want["modules"])
    assert c.groups["layers"] == want["layers"] and list(c.groups["layers"]) == list(want["layers"])
    assert [(r.name, r.role, r.layer) for r in c.roles] == want["roles"]
    assert c.role_counts()["parameter"] == sum(r == "parameter" for _, r, _ in want["roles"])
    moe = c.moe
    if not want["routed_layers"]:
        assert moe == {"detected": False} and c.active_params == c.total_params
        return
    assert moe["detected"] and moe["routed_expert_params"] == want["routed"]
    assert moe["moe_layers"] == len(want["routed_layers"])
    assert moe["num_experts_detected"] == sorted({len(v) for v in want["experts"].values()})
    for r, (name, _, layer) in zip(c.roles, want["roles"]):
        e = _expert(name)
        assert r.expert == (None if e is None else {"kind": "routed", "index": e, "stacked": None,
                                                    "layer": layer or ""})
    n_cfg = (config or {}).get("num_local_experts", (config or {}).get("n_routed_experts"))
    k_cfg = (config or {}).get("num_experts_per_tok")
    detected = moe["num_experts_detected"]
    n = n_cfg if n_cfg is not None else (detected[0] if len(detected) == 1 else None)
    if k_cfg is not None and n is not None:
        always = want["total"] - want["routed"]
        assert c.active_params == int(round(Fraction(always) + Fraction(want["routed"] * k_cfg, n)))
    else:
        assert c.active_params is None


def _moe_with_fp8(tmp_path) -> tuple[str, int]:
    """A small MoE decoder: BF16 experts, every fourth one FP8 with an F32 weight_scale, routers, norms."""
    spec = [("model.embed_tokens.weight", "BF16", (32, 16))]
    for layer in range(12):
        p = f"model.layers.{layer}"
        spec += [(f"{p}.input_layernorm.weight", "F32", (16,)), (f"{p}.mlp.gate.weight", "BF16", (8, 16))]
        for e in range(8):
            if e % 4 == 3:
                spec += [(f"{p}.mlp.experts.{e}.up_proj.weight", "F8_E4M3", (8, 16)),
                         (f"{p}.mlp.experts.{e}.up_proj.weight_scale", "F32", ())]
            else:
                spec.append((f"{p}.mlp.experts.{e}.up_proj.weight", "BF16", (8, 16)))
    spec.append(("model.norm.weight", "F32", (16,)))
    config = {"num_local_experts": 8, "num_experts_per_tok": 2}
    return sm.write_model(str(tmp_path / "moe"), sm.Model("moe", spec, config)), len(spec)


def test_header_only_scan_makes_no_tensor_objects(tmp_path, monkeypatch):
    """scan(stats=False) reads, counts and reports from the columns: no TensorInfo list, no TensorReport
    until report.tensors is read; then the same report as before."""
    path, n_tensors = _moe_with_fp8(tmp_path)
    want = count_table(open_table(path)).to_dict()
    import paramkit.report as report_mod

    def refuse(*a, **k):
        raise AssertionError("made per-tensor objects")
    made = report_mod._make_reports
    monkeypatch.setattr(TensorColumns, "infos", refuse)
    monkeypatch.setattr(report_mod, "_make_reports", refuse)
    r = paramkit.scan(path, stats=False)
    assert r.counting.to_dict(tensors=False) == {k: v for k, v in want.items() if k != "roles"}
    fp8 = [x for x in r.counting.roles if "fp8_quantized" in x.flags]
    assert len(fp8) == 12 * 2 and r.counting.quantization["detected_in_tensors"] == {"fp8": 24}
    assert sum("router" in x.flags for x in r.counting.roles) == 12
    monkeypatch.setattr(report_mod, "_make_reports", made)
    assert [t.name for t in r.tensors] == [x.name for x in r.counting.roles] and len(r.tensors) == n_tensors
    assert r.to_dict()["tensors"][1] == {"name": r.tensors[1].name, "dtype": r.tensors[1].dtype,
                                         "shape": list(r.tensors[1].shape), "numel": r.tensors[1].numel,
                                         "nbytes": r.tensors[1].nbytes, "role": r.tensors[1].role, "stats": None,
                                         "quant": None}


def test_plain_header_only_count_makes_no_tensor_info(tmp_path, monkeypatch):
    """A checkpoint that no quantization rule concerns is counted without a single TensorInfo."""
    model = sm.llama32_1b()
    table = open_table(sm.write_model(str(tmp_path / "m"), model))
    init = TensorInfo.__init__

    def refuse(self, *a, **k):
        raise AssertionError("TensorInfo made")
    monkeypatch.setattr(TensorInfo, "__init__", refuse)
    monkeypatch.setattr(TensorColumns, "infos", refuse)     # the bulk maker, which bypasses __init__
    c = count_table(table)
    monkeypatch.setattr(TensorInfo, "__init__", init)
    assert c.total_params == sum(sm.numel(shape) for _, dtype, shape in model.tensors
                                 if DTYPES[dtype].kind == "float")


@pytest.mark.parametrize("names", [["a.1.w", "a.01.w", "a.001.w"], ["x.1", "x1.weight", "1.weight"],
                                   ["m.7.experts.12345678901234567890.w", "m.7.experts.3.w"]])
def test_digits_spelled_differently_are_different_layers(names):
    """Layers and modules are names, not numbers: '1', '01' and '001' are three layers; a name's digits kept
    literally (a leaf's, or a run too long to mask) meet the masked ones of the same spelling."""
    shapes = [(2,)] * len(names)
    want = _expected(names, ["F32"] * len(names), shapes, None)
    c = count_table(_table(names, ["F32"] * len(names), shapes, None))
    assert c.groups["layers"] == want["layers"] and c.groups["modules"] == want["modules"]
