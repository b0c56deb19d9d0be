"""Tied embeddings without reading tensor bytes in counting: a present lm_head that config.json ties to the
embedding is confirmed by storage identity (formats that have one), by the statistics of scan()'s data pass on
every backend, or trusted (stats=False); count_table never opens a file."""
from __future__ import annotations

import builtins
import os

import numpy as np
import pytest

import paramkit
import synthetic_models as sm
from conftest import available_backends
from paramkit.counting import count_table
from paramkit.counting.ties import statistics_equal
from paramkit.table import TensorInfo, TensorTable

VOCAB, HIDDEN = 512, 256                 # F32 embedding: 512 KiB, more than three 64 KiB windows
SPEC = [("model.embed_tokens.weight", "F32", (VOCAB, HIDDEN)), ("model.norm.weight", "F32", (HIDDEN,)),
        ("lm_head.weight", "F32", (VOCAB, HIDDEN))]
CONFIG = {"architectures": ["LlamaForCausalLM"], "tie_word_embeddings": True}
MATRIX = VOCAB * HIDDEN
ONCE, TWICE = MATRIX + HIDDEN, 2 * MATRIX + HIDDEN   # parameters counting lm_head once / twice


def _embedding() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((VOCAB, HIDDEN)).astype(np.float32)


def _heads() -> dict[str, np.ndarray]:
    emb = _embedding()
    one_value = emb.copy()
    # element 32768 starts at byte 128 KiB: outside the three 64 KiB windows (start, middle, end) that
    # counting used to compare, so only the statistics (max) tell this lm_head from the embedding
    one_value.flat[32768] = 1000.0
    return {"identical": emb.copy(), "one_value": one_value,
            "other": np.random.default_rng(8).standard_normal((VOCAB, HIDDEN)).astype(np.float32)}


def _write(tmp_path, head: str, spec=SPEC, data=None) -> str:
    data = data or {"model.embed_tokens.weight": _embedding().tobytes(), "lm_head.weight": _heads()[head].tobytes()}
    return sm.write_model(str(tmp_path / head), sm.Model("tied", spec, CONFIG), data=data)


def _head(counting):
    return next(r for r in counting.roles if r.name == "lm_head.weight")


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("head", ["one_value", "other"])
@pytest.mark.parametrize("quantiles", [True, False])
def test_differing_lm_head_found_by_statistics(tmp_path, backend, head, quantiles):
    """tie_word_embeddings true but the lm_head's values differ: the data pass's statistics show it, and the
    lm_head is counted twice, with every total recounted from the roles."""
    r = paramkit.scan(_write(tmp_path, head), backend=backend, quantiles=quantiles)
    c = r.counting
    assert c.ties["compared"] == "statistics"
    assert c.ties["status"] == "tie_word_embeddings is true but lm_head values differ: counted twice"
    assert r.total_params == c.total_params == TWICE and c.active_params == TWICE
    assert c.params_by_dtype == {"F32": TWICE} and c.parameter_elements == TWICE
    assert c.groups["modules"]["lm_head"]["params"] == MATRIX
    assert _head(c).counted is True and "tie_mismatch" in _head(c).flags
    assert c.tie_pending is None and c.ties["status"] in c.notes
    assert r.to_dict()["total_params"] == TWICE


@pytest.mark.parametrize("backend", available_backends())
def test_identical_lm_head_counted_once(tmp_path, backend):
    r = paramkit.scan(_write(tmp_path, "identical"), backend=backend)
    c = r.counting
    assert c.ties["compared"] == "statistics"
    assert c.ties["status"] == "lm_head present, statistics identical to the embedding's: counted once"
    assert c.total_params == ONCE and c.groups["modules"]["lm_head"]["params"] == 0
    assert _head(c).counted is False and "tied_duplicate" in _head(c).flags
    assert r.tensor("lm_head.weight").stats == r.tensor("model.embed_tokens.weight").stats
    assert c.notes == []


def test_without_statistics_config_json_is_trusted(tmp_path):
    """stats=False reads no tensor byte: a tied lm_head is counted once even when its values differ."""
    r = paramkit.scan(_write(tmp_path, "other"), stats=False)
    c = r.counting
    assert c.ties["compared"] is None
    assert c.ties["status"] == "lm_head present, tied per config.json (values not compared): counted once"
    assert c.total_params == ONCE and "tied_duplicate" in _head(c).flags
    assert c.tie_pending == (0, 2)       # the embedding and lm_head whose values would decide


@pytest.mark.parametrize("backend", available_backends())
def test_dtype_without_statistics_stays_trusted(tmp_path, backend):
    """F8_E4M3FNUZ has no statistics: nothing to compare, config.json is trusted even with stats=True."""
    spec = [("model.embed_tokens.weight", "F8_E4M3FNUZ", (64, 8)), ("lm_head.weight", "F8_E4M3FNUZ", (64, 8))]
    d = _write(tmp_path, "fnuz", spec, {"model.embed_tokens.weight": bytes(range(256)) * 2,
                                        "lm_head.weight": bytes(512)})
    c = paramkit.scan(d, backend=backend).counting
    assert c.ties["compared"] is None and c.total_params == 64 * 8


def test_count_table_opens_no_file(tmp_path, monkeypatch):
    """Counting reads names, shapes, dtypes and config.json only: with every way to open a file failing
    (not with OSError, which the old byte comparison swallowed), count_table still decides the tie."""
    table = sm.open_table(_write(tmp_path, "other"))

    def refuse(*args, **kwargs):
        raise AssertionError(f"count_table opened {args[0]!r}")
    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(os, "open", refuse)
    c = count_table(table)
    monkeypatch.undo()
    assert c.total_params == ONCE and c.ties["compared"] is None


def _info(name: str, storage: str | None, offset: int) -> TensorInfo:
    return TensorInfo(name, "BF16", (VOCAB, HIDDEN), "/absent/model.bin", offset, 2 * MATRIX, MATRIX, storage)


@pytest.mark.parametrize("head_storage,head_offset,compared,pending", [
    ("archive/data/0", 64, "storage", None),     # one storage, one offset: one tensor, nothing to read
    ("archive/data/1", 64, None, (0, 1)),        # another storage: the values would have to tell
    ("archive/data/0", 64 + 2 * MATRIX, None, (0, 1)),   # another part of the same storage
])
def test_same_storage_confirms_the_tie(head_storage, head_offset, compared, pending):
    """TensorInfo.storage (torch checkpoints): the same storage, offset, length and shape is the same tensor;
    the files do not exist, so nothing could have been read."""
    infos = [_info("model.embed_tokens.weight", "archive/data/0", 64), _info("lm_head.weight", head_storage, head_offset)]
    c = count_table(TensorTable(path="/absent", format="pytorch", files=["/absent/model.bin"], tensors=infos,
                                config=CONFIG))
    assert c.ties["compared"] == compared and c.tie_pending == pending
    assert c.total_params == MATRIX and _head(c).counted is False
    if compared == "storage":
        assert c.ties["status"] == "lm_head present, the same storage as the embedding: counted once"


def test_statistics_equal_compares_dtype_shape_and_every_field():
    a = TensorInfo("a", "F32", (2, 3), "/f", 0, 24, 6)
    stats = {"min": -1.0, "max": 2.0, "mean": 0.5, "quantiles": {"0.5": 0.25}}
    assert statistics_equal(a, stats, a, dict(stats))
    assert not statistics_equal(a, stats, a, {**stats, "quantiles": {"0.5": 0.5}})
    assert not statistics_equal(a, stats, TensorInfo("b", "F32", (3, 2), "/f", 24, 24, 6), stats)
    assert not statistics_equal(a, stats, TensorInfo("b", "F16", (2, 3), "/f", 24, 12, 6), stats)
    nan = {**stats, "std": float("nan")}
    assert statistics_equal(a, nan, a, {**stats, "std": float("nan")})     # not == (NaN != NaN)
    assert not statistics_equal(a, nan, a, stats) and not statistics_equal(a, stats, a, nan)


@pytest.mark.parametrize("backend", available_backends())
def test_aggregates_count_a_tied_duplicate_once(tmp_path, backend):
    """The lm_head counted once as the embedding's tie (identical statistics) is one tensor: the model-level
    aggregates hold the embedding and the norm, not the embedding's values twice."""
    r = paramkit.scan(_write(tmp_path, "identical"), backend=backend)
    assert not _head(r.counting).counted
    agg = r.aggregates
    emb, norm = r.tensor("model.embed_tokens.weight").stats, r.tensor("model.norm.weight").stats
    assert agg["tensors"] == 2 and agg["numel"] == MATRIX + HIDDEN
    assert agg["zeros"] == emb["zeros"] + norm["zeros"]
    assert agg["l2"] == pytest.approx(float(np.hypot(emb["l2"], norm["l2"])), rel=1e-12)
    assert agg["max"] == max(emb["max"], norm["max"]) and agg["min"] == min(emb["min"], norm["min"])
