"""The on-disk header cache of remote reads (issue 15), off unless PARAMKIT_HEADER_CACHE=DIR is set: the byte
ranges an HttpFile fetched while its header was read, kept per URL with the object's size and ETag, so a repeated
header-only ingestion of unchanged objects costs one revalidation request per file instead of its range GETs.
Entries are written atomically (a temporary file renamed over the old one); an unreadable or corrupt entry is
ignored (and replaced by the next write)."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile

ENV = "PARAMKIT_HEADER_CACHE"
_MAGIC = b"paramkit-header-cache 1\n"
MAX_ENTRY = 64 << 20          # bytes of ranges one entry keeps at most (the read-ahead cache's own limit)


def directory() -> str | None:
    """The cache directory (PARAMKIT_HEADER_CACHE), or None when the cache is off."""
    d = os.environ.get(ENV, "").strip()
    return os.path.expanduser(d) if d else None


def _entry_path(root: str, url: str) -> str:
    return os.path.join(root, hashlib.sha256(url.encode("utf-8")).hexdigest()[:40] + ".bin")


def load(url: str) -> tuple[int, str, list[tuple[int, bytes]]] | None:
    """(size, validator, [(offset, bytes)]) kept for `url`, or None (no cache, no entry, or a corrupt one)."""
    root = directory()
    if root is None:
        return None
    try:
        with open(_entry_path(root, url), "rb") as f:
            raw = f.read()
    except OSError:
        return None
    try:
        body, digest = raw[:-32], raw[-32:]
        if not body.startswith(_MAGIC) or hashlib.sha256(body).digest() != digest:
            return None
        line_end = body.index(b"\n", len(_MAGIC))
        head = json.loads(body[len(_MAGIC):line_end])
        if head["url"] != url or type(head["size"]) is not int or type(head["validator"]) is not str:
            return None
        blocks, at = [], line_end + 1
        for start, n in head["blocks"]:
            if type(start) is not int or type(n) is not int or start < 0 or n <= 0 or start + n > head["size"]:
                return None
            blocks.append((start, body[at:at + n]))
            at += n
        if at != len(body) or any(len(b) != n for (_, b), (_, n) in zip(blocks, head["blocks"])):
            return None
        return head["size"], head["validator"], blocks
    except (ValueError, KeyError, TypeError):
        return None


def store(url: str, size: int, validator: str, blocks: list[tuple[int, bytes]]) -> None:
    """Keep `blocks` for `url` (written to a temporary file in the directory, then renamed over the entry);
    errors writing the cache are ignored: it is an optimisation."""
    root = directory()
    if root is None or not blocks or sum(len(b) for _, b in blocks) > MAX_ENTRY:
        return
    head = json.dumps({"url": url, "size": size, "validator": validator,
                       "blocks": [[s, len(b)] for s, b in blocks]}).encode("utf-8")
    body = b"".join([_MAGIC, head, b"\n", *(b for _, b in blocks)])
    tmp = None
    try:
        os.makedirs(root, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=root)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.write(hashlib.sha256(body).digest())
        os.replace(tmp, _entry_path(root, url))
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
