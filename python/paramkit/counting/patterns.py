"""Tensor names grouped by pattern -- the name with each decimal digit masked (NUL) -- so that counting decides
what depends on a name's words once per pattern (a 100,000-tensor MoE header has ~100 patterns) and reads what
depends on its digits (layers, expert indices, siblings) with NumPy from the names' bytes.

A pattern keeps a name's length and every non-digit character, so a regex whose only digit-sensitive part is
``\\d`` finds, on the pattern with ``\\d`` written ``[\\d\\x00]``, the same spans as on every name of the
pattern. Names that are not all ASCII (or hold NUL or newline characters) are their own patterns, digits
literal; so are names with more than MAX_MASKED digits, and a leaf (last component) keeps its digits."""
from __future__ import annotations

import bisect
import re

import numpy as np

MAX_MASKED = 18    # masked digits a pattern keeps: their value fits an int64
_MASK = bytes.maketrans(b"0123456789", b"\0" * 10)
_NUL = "\0"
_POW10 = 10 ** np.arange(MAX_MASKED + 1, dtype=np.int64)
_NON_DIGITS = re.compile(r"[^0-9]")
_NO_DIGIT = re.compile(r"[^0-9\0\n]*\Z")   # an ASCII suffix without digits, NUL or newline characters


def _native():
    """paramkit._core's pass (cpp/src/name_patterns.hpp), None in a pure-Python install or an older _core."""
    try:
        from .. import _core
    except ImportError:
        return None
    return getattr(_core, "name_patterns", None)


# The tests set this to None to run the Python pass on the same names.
_native_patterns = _native()


class _Codes(dict):
    """key -> dense code in order of first lookup (dict.__getitem__ at C speed, __missing__ once per key)."""

    def __missing__(self, key):
        v = self[key] = len(self)
        return v


def factorize(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, first) of non-negative int64 keys: codes[i] the rank of keys[i] among the distinct keys in order
    of first appearance, first[c] the index where code c first appears. Without a sort when the keys are
    small (a table of them), else by np.unique."""
    n = len(keys)
    if not n:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    top = int(keys.max())
    if top < 4 * n + 1024:
        first_of = np.full(top + 1, n, dtype=np.int64)
        np.minimum.at(first_of, keys, np.arange(n, dtype=np.int64))
        present = np.flatnonzero(first_of < n)
        order = np.argsort(first_of[present], kind="stable")
        rank = np.empty(top + 1, dtype=np.int64)
        rank[present[order]] = np.arange(len(present))
        return rank[keys], first_of[present[order]]
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[inverse.reshape(-1)], first[order]


def stable_argsort(codes: np.ndarray, k: int) -> np.ndarray:
    """np.argsort(codes, kind="stable") of codes 0..k-1: a radix sort (int16) when k < 2**15."""
    return np.argsort(codes.astype(np.int16) if k < (1 << 15) else codes, kind="stable")


def digit_regex(pattern: str) -> tuple[re.Pattern, re.Pattern]:
    """`pattern` compiled for names (as written) and for masked patterns (each ``\\d`` also matching NUL)."""
    return re.compile(pattern), re.compile(pattern.replace(r"\d", r"[\d\x00]"))


class NamePatterns:
    """The patterns of `names` (a list of str): ``code[i]`` the pattern of names[i], ``patterns[c]`` its
    string, ``members(c)`` its tensors (ascending)."""

    def __init__(self, names: list[str]):
        self.names = names
        self._index: dict[str, int] | None = None
        got = _native_patterns(names, MAX_MASKED) if _native_patterns is not None and names else None
        if got is not None:     # the same columns, computed by paramkit._core (cpp/src/name_patterns.hpp)
            self.code, self.patterns, cuts, self._nul, self._width, self._cum = got
            self._codes = _Codes(zip((p.encode("ascii") for p in self.patterns), range(len(self.patterns))))
            self._refined = dict(cuts)
            self.masked = True
            self._group()
        else:
            self._in_python()

    def _group(self) -> None:
        """The members of each pattern (ascending) and the live patterns, from self.code."""
        self._order = stable_argsort(self.code, len(self.patterns))
        counts = np.bincount(self.code, minlength=len(self.patterns))
        self._bounds = np.concatenate(([0], np.cumsum(counts)))
        self.live = [p for p, k in enumerate(counts.tolist()) if k]     # the patterns with tensors

    def _in_python(self) -> None:
        """The specification of the native pass (and the fallback without paramkit._core)."""
        names = self.names
        n = len(names)
        joined = "\n".join(names)
        self._codes = codes = _Codes()
        self._refined: dict[int, int] = {}      # a pattern whose names got their own patterns -> digits kept from
        newlines = None
        if n and joined.isascii() and _NUL not in joined:
            raw = joined.encode("ascii")
            buf = np.frombuffer(raw, dtype=np.uint8)
            newlines = np.flatnonzero(buf == 10)
        if newlines is not None and len(newlines) == n - 1:     # no name holds a newline
            self.masked = True
            starts = np.concatenate(([0], newlines + 1))
            keys = raw.translate(_MASK).split(b"\n")
        else:
            self.masked = False        # every pattern is a name (digits literal)
            keys = names
        self.code = np.fromiter(map(codes.__getitem__, keys), dtype=np.int64, count=n)
        self.patterns: list[str] = [k.decode("ascii") if type(k) is bytes else k for k in codes]
        if self.masked:
            self._refine()
        self._group()
        # the masked digits: _nul[p] their positions in pattern p (live patterns only)
        self._nul: list[list[int]] = [[] for _ in self.patterns]
        if self.masked:
            for p in self.live:     # a refined pattern has no tensors left (nor more than MAX_MASKED digits)
                self._nul[p] = [k for k, c in enumerate(self.patterns[p]) if c == _NUL]
        self._width = width = max((len(x) for x in self._nul), default=0)
        # _cum[i, j]: the first j masked digits d_k of names[i] as sum d_k * 10**(width-1-k) (exact in an int64)
        self._cum = np.zeros((n, width + 1), dtype=np.int64)
        if width:
            pos = np.zeros((len(self.patterns), width), dtype=np.int64)
            have = np.zeros((len(self.patterns), width), dtype=bool)
            for q, x in enumerate(self._nul):
                pos[q, :len(x)] = x
                have[q, :len(x)] = True
            code = self.code
            # clip: an empty last name starts at len(buf); its missing digits are zeroed below anyway
            d = np.take(buf, starts[:, None] + pos[code], mode="clip") - np.uint8(48)
            d[~have[code]] = 0
            np.cumsum(d * _POW10[width - 1::-1], axis=1, out=self._cum[:, 1:])

    def _refine(self) -> None:
        """Patterns with a masked digit in their leaf, or more than MAX_MASKED, get one pattern per distinct
        name prefix: the leaf's digits (all digits) literal."""
        cuts = {}
        for p, pat in enumerate(self.patterns):
            if _NUL in pat:
                cut = pat.rfind(".") + 1
                if pat.count(_NUL, 0, cut) > MAX_MASKED:
                    cuts[p] = 0
                elif _NUL in pat[cut:]:
                    cuts[p] = cut
        if not cuts:
            return
        order = stable_argsort(self.code, len(self.patterns))
        bounds = np.concatenate(([0], np.cumsum(np.bincount(self.code, minlength=len(self.patterns)))))
        names, codes = self.names, self._codes
        for p, cut in cuts.items():
            idx = order[bounds[p]:bounds[p + 1]]
            head = self.patterns[p][:cut]
            self.code[idx] = [codes[(head + names[i][cut:]).encode("ascii")] for i in idx.tolist()]
        self._refined = cuts
        self.patterns = [k.decode("ascii") for k in codes]

    def __len__(self) -> int:
        return len(self.patterns)

    def members(self, p: int) -> np.ndarray:
        b = self._bounds
        return self._order[b[p]:b[p + 1]]

    def _digits(self, rows: np.ndarray, k1: np.ndarray, k2: np.ndarray) -> np.ndarray:
        """Per row i of rows, the masked digits k1[i] <= k < k2[i] of names[i] as one base-10 int64."""
        w = self._width + 1
        flat = self._cum.reshape(-1)
        base = rows * w
        return (flat[base + k2] - flat[base + k1]) // _POW10[self._width - k2]

    def span_values(self, spans: list[tuple[int, int] | None], number: bool = False) -> np.ndarray:
        """Per tensor, from the span spans[pattern] of its name (None: 0): the masked digits as one base-10
        int64, which with the span of the pattern identifies the name's span; number=True: int(name[a:b]) of a
        span of decimal digits (masked ones or literal ones, not both)."""
        npat = len(self.patterns)
        k1 = np.zeros(npat, dtype=np.int64)
        k2 = np.zeros(npat, dtype=np.int64)
        const = np.zeros(npat, dtype=np.int64)
        for p, span in enumerate(spans):
            if span is None:
                continue
            a, b = span
            nul = self._nul[p]                  # the masked digits a <= at < b: nul[lo:hi] (positions ascend)
            lo, hi = bisect.bisect_left(nul, a), bisect.bisect_left(nul, b)
            if hi > lo:
                k1[p], k2[p] = lo, hi
            elif number:
                v = int(self.patterns[p][a:b])
                if v >= 1 << 62 and const.dtype != object:     # literal digits beyond an int64: Python ints
                    const = const.astype(object)
                const[p] = v
        out = const[self.code]
        if k2.any():
            code = self.code
            out += self._digits(np.arange(len(code)), k1[code], k2[code])
        return out

    def values(self, p: int, end: int) -> np.ndarray:
        """Per member of p, span_values of its first `end` characters."""
        m = self.members(p)
        c = bisect.bisect_left(self._nul[p], end)      # the masked digits before `end` (positions ascend)
        return self._cum[m, c] // _POW10[self._width - c] if c else np.zeros(len(m), dtype=np.int64)

    def search(self, regexes: tuple[re.Pattern, re.Pattern], p: int):
        """regexes[1] (from digit_regex) matched on pattern p where digits are masked, else regexes[0]."""
        return regexes[self.masked].search(self.patterns[p])

    def prefix_codes(self, ends: list[int | None]) -> tuple[np.ndarray, np.ndarray]:
        """(codes, first) of the name prefixes name[:ends[pattern]] (-1 where ends[pattern] is None), codes
        dense in order of first appearance, first[c] the first tensor with prefix c."""
        heads: dict[str, int] = {}
        head_of = np.full(len(self.patterns), -1, dtype=np.int64)
        literal = np.zeros(len(self.patterns), dtype=np.int64)
        masked_head: dict[str, tuple[str, int]] = {}     # a head without masked digits -> (masked head, its digits)
        for p in self.live:
            e = ends[p]
            if e is None:
                continue
            head = self.patterns[p][:e]
            if self.masked and _NUL not in head:
                # a refined pattern's literal digits, as a masked head and its digits' value
                got = masked_head.get(head)
                if got is None:
                    digits = _NON_DIGITS.sub("", head)
                    got = masked_head[head] = (head.encode("ascii").translate(_MASK).decode("ascii"), int(digits)) \
                        if 0 < len(digits) <= MAX_MASKED else (head, 0)
                head, literal[p] = got
            head_of[p] = heads.setdefault(head, len(heads))
        spans = [None if e is None or _NUL not in self.patterns[p][:e] else (0, e) for p, e in enumerate(ends)]
        if not any(spans) and not literal.any():
            # one prefix per head: codes in order of each head's first tensor, per pattern, without a pass
            first_of = np.full(len(heads), len(self.names), dtype=np.int64)
            for p in self.live:
                if head_of[p] >= 0:
                    first_of[head_of[p]] = min(first_of[head_of[p]], int(self._order[self._bounds[p]]))
            order = np.argsort(first_of, kind="stable")
            rank = np.full(len(heads) + 1, -1, dtype=np.int64)
            rank[order] = np.arange(len(heads))
            return rank[head_of][self.code], first_of[order]
        head = head_of[self.code]
        value = self.span_values(spans)
        if literal.any():
            value += literal[self.code]
        has = head >= 0
        codes = np.full(len(self.names), -1, dtype=np.int64)
        if not has.any():
            return codes, np.zeros(0, dtype=np.int64)
        whole = has.all()
        h, v = (head, value) if whole else (head[has], value[has])
        if v.any():
            if int(v.max()) >= (1 << 62) // len(heads):
                _, v = np.unique(v, return_inverse=True)     # dense: the pair fits one int64
            key = v.reshape(-1) * len(heads) + h
        else:
            key = h
        c, first = factorize(key)
        if whole:
            return c, first
        codes[has] = c
        return codes, np.flatnonzero(has)[first]

    def find(self, name: str) -> int | None:
        """The index of the tensor called `name`, None without one."""
        if not self.masked:
            if self._index is None:
                self._index = {s: i for i, s in enumerate(self.names)}
            return self._index.get(name)
        if not name.isascii() or _NUL in name or "\n" in name:
            return None
        masked = name.encode("ascii").translate(_MASK).decode("ascii")
        p = self._codes.get(masked.encode("ascii"))
        while p is not None and p in self._refined:
            cut = self._refined[p]
            p = self._codes.get((masked[:cut] + name[cut:]).encode("ascii"))
        if p is None:
            return None
        m = self.members(p)
        pat = self.patterns[p]
        if _NUL in pat:
            want = int("".join(c for c, q in zip(name, pat) if q == _NUL))
            m = m[self.values(p, len(pat)) == want]
        return int(m[0]) if len(m) else None

    def sibling_indices(self, p: int, base_len: int, suffix: str) -> np.ndarray:
        """Per member of p, the index of the tensor called name[:base_len] + suffix, -1 without one."""
        m = self.members(p)
        out = np.full(len(m), -1, dtype=np.int64)
        pat = self.patterns[p]
        target = pat[:base_len] + suffix
        if self.masked and suffix.isascii() and _NO_DIGIT.match(suffix):
            q = self._codes.get(target.encode("ascii"))
            if q is None:
                return out          # no name has the sibling's pattern
            if q not in self._refined:
                vq = self.values(q, base_len)
                vp = self.values(p, base_len)
                mq = self.members(q)
                top = max(int(vq.max()), int(vp.max()))
                if top < 4 * len(self.names) + 1024:    # a table: value -> the member of q with it
                    first = np.full(top + 1, -1, dtype=np.int64)
                    first[vq[::-1]] = mq[::-1]
                    return first[vp]
                order = np.argsort(vq, kind="stable")
                sv = vq[order]
                at = np.minimum(np.searchsorted(sv, vp), len(sv) - 1)
                hit = sv[at] == vp
                out[hit] = mq[order[at[hit]]]
                return out
        names = self.names
        for k, i in enumerate(m.tolist()):
            j = self.find(names[i][:base_len] + suffix)
            out[k] = -1 if j is None else j
        return out
