"""The few path operations the model resolver needs, for local paths and URLs alike: local paths go to os.path
and os.listdir exactly as before; http(s) URLs are split on their path (percent-encoded names), other URLs (fsspec
stores) on '/' as they are; URLs are listed and checked through the file lists the session holds (a hub's, or a
store directory's: paramkit.remote.Session.listings), and otherwise cannot be listed."""
from __future__ import annotations

import os
import posixpath
from urllib.parse import quote, unquote, urlsplit

from ..remote import is_http, is_url


def basename(path: str) -> str:
    if is_http(path):
        return unquote(posixpath.basename(urlsplit(path).path))
    if is_url(path):
        return path.rstrip("/").rsplit("/", 1)[-1]
    return os.path.basename(path)


def dirname(path: str) -> str:
    """The directory of a path; of an http(s) URL: scheme://host/dir (the query and fragment dropped)."""
    if is_http(path):
        u = urlsplit(path)
        return f"{u.scheme}://{u.netloc}{posixpath.dirname(u.path)}"
    if is_url(path):
        head, _, _ = path.rstrip("/").rpartition("/")
        return head if not head.endswith(":/") else head + "/"
    return os.path.dirname(path)


def join(directory: str, name: str) -> str:
    """`name` (a relative path, '/'-separated for URLs) inside `directory`; for an http(s) URL it is
    percent-encoded (a store's object names are used as they are)."""
    if is_url(directory):
        return directory.rstrip("/") + "/" + (quote(name, safe="/") if is_http(directory) else name)
    return os.path.join(directory, name)


def has_query(path: str) -> bool:
    """An http(s) URL with a query string (a signed URL): its siblings have no address of their own."""
    return is_http(path) and bool(urlsplit(path).query)


def _listing(directory: str) -> list[str] | None:
    from ..remote import current
    s = current()
    return None if s is None else s.listings.get(directory.rstrip("/"))


def is_file(path: str) -> bool:
    """Whether `path` is a regular file; a URL is a file when the hub's file list has it, and, where no list
    is known (a plain http(s) server), is taken to be one: opening it says (RemoteNotFound, an OSError)."""
    if not is_url(path):
        return os.path.isfile(path)
    names = _listing(dirname(path))
    return True if names is None else basename(path) in names


def listable(directory: str) -> bool:
    return not is_url(directory) or _listing(directory) is not None


def listdir(directory: str) -> list[str]:
    """The names in a directory, sorted; for a URL, the hub's file list of that directory (a plain http(s)
    server lists nothing: [])."""
    if not is_url(directory):
        return sorted(os.listdir(directory))
    return sorted(_listing(directory) or [])


def normpath(path: str) -> str:
    return path if is_url(path) else os.path.normpath(path)


def leaves_directory(name: str) -> bool:
    """Whether a shard name of a remote index would leave the index's directory: an absolute URL or path, a
    scheme or host of its own, a '..' or '.' part, or a backslash (a separator to some servers)."""
    u = urlsplit(name)
    return bool(u.scheme or u.netloc or name.startswith("/") or "\\" in name
                or any(part in ("..", ".") for part in name.split("/")))


def urlsplit_path(url: str) -> str:
    """The path part of a URL."""
    return urlsplit(url).path
