"""hf://org/model[@revision][/subfolder or /file]: a Hugging Face hub repository resolved through the Hub HTTP API
(the file list of a revision), its files read at {endpoint}/{repo}/resolve/{commit}/{path} by HttpFile. The
endpoint is HF_ENDPOINT (default https://huggingface.co); the token HF_TOKEN or huggingface_hub's stored login,
read without needing huggingface_hub, and sent to the endpoint's host only (resolve URLs redirect to a CDN)."""
from __future__ import annotations

import errno
import json
import os
import posixpath
import re
from urllib.parse import quote, unquote

from . import HUB_SCHEME, Session
from .http import RemoteAccessDenied, RemoteError, RemoteNotFound

DEFAULT_ENDPOINT = "https://huggingface.co"
_MAX_INFO_BYTES = 64 << 20
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
# org/model, then @revision (a branch, tag or commit; refs/pr/N and refs/convert/X keep their slashes; other
# slashes as %2F), then the path inside the repository
_ADDRESS = re.compile(rf"^({_NAME}/{_NAME})(?:@(refs/(?:pr|convert)/[^/]+|[^/]+))?(?:/(.*))?$")


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def token() -> str | None:
    """HF_TOKEN (or the older HUGGING_FACE_HUB_TOKEN), else the token `huggingface-cli login` stored
    (HF_TOKEN_PATH, else $HF_HOME/token, HF_HOME defaulting to $XDG_CACHE_HOME/huggingface or
    ~/.cache/huggingface); None when there is none."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        v = (os.environ.get(var) or "").strip()
        if v:
            return v
    path = os.environ.get("HF_TOKEN_PATH")
    if not path:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
        path = os.path.join(home, "token")
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            v = f.read().strip()
    except OSError:
        return None
    return v or None


def parse(address: str) -> tuple[str, str, str]:
    """(repo, revision, path inside the repo) of an hf:// address; ValueError when it is not one."""
    rest = address[len(HUB_SCHEME):] if address.lower().startswith(HUB_SCHEME) else address
    m = _ADDRESS.match(rest)
    if m is None:
        raise ValueError(f"{address}: expected hf://org/model[@revision][/path] (a model repository)")
    path = (m.group(3) or "").strip("/")
    if any(part in ("..", ".") for part in path.split("/")):
        raise ValueError(f"{address}: the path inside the repository has a '.' or '..' part")
    return m.group(1), unquote(m.group(2) or "main"), path


def _api_error(address: str, e: RemoteError) -> RemoteError:
    where = f"{address} (HTTP {e.status} from {e.url})"
    if e.status == 401:
        return RemoteAccessDenied(address, f"HTTP 401: the hub wants a token: the repository is private or gated "
                                  "(or does not exist); set HF_TOKEN or log in with `huggingface-cli login`"
                                  f" [{e.url}]", 401, e.errno)
    if e.status == 403:
        return RemoteAccessDenied(address, "HTTP 403: the token has no access to this repository (gated: ask "
                                  f"for access on its page; private: the token's account is not a member) [{e.url}]",
                                  403, e.errno)
    if e.status in (404, 410):
        return RemoteNotFound(address, f"HTTP {e.status}: repository or revision not found [{e.url}]", e.status,
                              e.errno)
    return RemoteError(address, f"the hub API failed: {where}: {e.strerror}", e.status)


def resolve(address: str, session: Session) -> tuple[str, bool]:
    """(URL, is a directory) of an hf:// address: the repository's files at one commit, their lists put in the
    session (so the resolver lists and checks them as it does a local directory) and the token set for the
    endpoint's host."""
    repo, revision, path = parse(address)
    base = endpoint()
    session.client.set_token(base, token())
    api = f"{base}/api/models/{repo}/revision/{quote(revision, safe='')}"
    try:
        r = session.client.get(api, max_body=_MAX_INFO_BYTES, transfer=session.transfer)
    except RemoteError as e:
        if e.status is None:
            raise
        raise _api_error(address, e) from None
    try:
        info = json.loads(r.data)
        files = [s["rfilename"] for s in info["siblings"]]
        commit = info.get("sha") or revision
        if not all(type(f) is str for f in files) or type(commit) is not str:
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise RemoteError(address, f"the hub API answer is not a model's file list ({api})", r.status) from None
    session.revision = {"repo": repo, "revision": revision, "commit": commit}
    root = f"{base}/{repo}/resolve/{quote(commit, safe='')}"
    for f in files:
        d = posixpath.dirname(f)
        key = root if not d else f"{root}/{quote(d, safe='/')}"
        session.listings.setdefault(key, []).append(posixpath.basename(f))
    if not path:
        return root, True
    url = f"{root}/{quote(path, safe='/')}"
    if path in files:
        return url, False
    if any(f.startswith(path + "/") for f in files):
        return url, True
    raise RemoteNotFound(address, f"no file or folder {path!r} in {repo} at revision {revision}", 404,
                         errno.ENOENT)
