"""NamePatterns (counting/patterns.py) computed by paramkit._core's pass (cpp/src/name_patterns.hpp) equals the
Python specification on random name sets: codes, patterns, refined patterns, masked digit positions and digit
columns; and both give, on a few hand-made names, the patterns and values written out here."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from paramkit.counting import patterns as pm

NATIVE = pm._native_patterns


def _python(names):
    saved = pm._native_patterns
    pm._native_patterns = None
    try:
        return pm.NamePatterns(names)
    finally:
        pm._native_patterns = saved


def _state(p: pm.NamePatterns):
    return (p.code.tolist(), p.patterns, dict(p._refined), [list(x) for x in p._nul], p._width, p._cum.tolist(),
            dict(p._codes), p.live, p.masked, p._order.tolist(), p._bounds.tolist())


_PART = hs.one_of(hs.sampled_from(["model", "layers", "experts", "mlp", "w", "weight", "bias", "gate_proj", "",
                                   "a_b", "proj_0", "x7y"]),
                  hs.integers(0, 10**6).map(str), hs.sampled_from(["0", "00", "007", "12345678901234567890123"]),
                  hs.text(alphabet="ab0123456789_", min_size=0, max_size=6))


@hs.composite
def _names(draw):
    """Dotted names of words and digit runs (leading zeros, runs of 1..23 digits, digits in leaves), a few
    templates repeated with other numbers so that patterns have several members."""
    templates = draw(hs.lists(hs.lists(_PART, min_size=1, max_size=6), min_size=1, max_size=6))
    names = []
    for t in templates:
        for _ in range(draw(hs.integers(1, 6))):
            parts = [str(draw(hs.integers(0, 999))) if p.isdigit() and draw(hs.booleans()) else p for p in t]
            names.append(".".join(parts))
    return names


@pytest.mark.skipif(NATIVE is None, reason="paramkit._core is not built (pure-Python install)")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_names())
def test_native_pass_equals_the_python_specification(names):
    native, python = pm.NamePatterns(names), _python(names)
    assert python.masked
    assert _state(native) == _state(python)
    # and what the counting asks of them
    assert native.prefix_codes([None] * len(native))[0].tolist() == python.prefix_codes([None] * len(python))[0].tolist()
    for name in names[:5] + ["nope", names[0] + "1"]:
        assert native.find(name) == python.find(name)


@pytest.mark.skipif(NATIVE is None, reason="paramkit._core is not built (pure-Python install)")
@pytest.mark.parametrize("names", [["é.0"], ["a\n0", "b"], ["a\x000"], ["a", 3], []])
def test_native_pass_declines_what_python_keeps_literal(names):
    assert NATIVE(names, pm.MAX_MASKED) is None
    if all(type(n) is str for n in names):
        p = pm.NamePatterns(names)
        assert not p.masked and p.patterns == list(dict.fromkeys(names))


@pytest.mark.parametrize("native", [True, False])
def test_patterns_and_digit_values_written_out(native):
    if native and NATIVE is None:
        pytest.skip("paramkit._core is not built (pure-Python install)")
    names = ["m.layers.3.w", "m.layers.12.w", "m.layers.4.w", "m.h.w2", "m.h.w3", "e.1.2.x", "z.123456789012345678901.k"]
    p = pm.NamePatterns(names) if native else _python(names)
    z = "\0"
    # first pass: m.layers.N.w, m.layers.NN.w, m.h.wN (refined: its leaf has a digit), e.N.N.x, z.<21 digits>.k
    # (refined: more than 18); the refined names follow, literal where refined
    assert p.patterns == ["m.layers." + z + ".w", "m.layers." + z * 2 + ".w", "m.h.w" + z, "e." + z + "." + z + ".x",
                          "z." + z * 21 + ".k", "m.h.w2", "m.h.w3", "z.123456789012345678901.k"]
    assert p.code.tolist() == [0, 1, 0, 5, 6, 3, 7]
    assert p._refined == {2: 4, 4: 0}
    assert p.live == [0, 1, 3, 5, 6, 7]
    assert p.values(0, 100).tolist() == [3, 4] and p.values(1, 100).tolist() == [12]
    assert p.values(3, 100).tolist() == [12] and p.values(3, 3).tolist() == [1]
    assert p.find("m.layers.4.w") == 2 and p.find("m.layers.5.w") is None and p.find("m.h.w3") == 4
    assert p.find("z.123456789012345678901.k") == 6
    assert np.array_equal(p.members(0), [0, 2])
