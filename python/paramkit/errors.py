"""Errors paramkit raises: FormatError (a ValueError) carries a stable machine-readable code,
the file and the tensor, so batch jobs can sort failures without parsing messages."""
from __future__ import annotations


class FormatError(ValueError):
    """A weight file (or an index / config beside it) is malformed.

    Attributes: ``code`` (stable string, see README "Error codes"), ``path`` (the file),
    ``tensor`` (tensor name or None).
    """

    def __init__(self, code: str, message: str, *, path: str | None = None, tensor: str | None = None):
        self.code = code
        self.path = None if path is None else str(path)
        self.tensor = tensor
        self.message = message
        where = f" [{self.path}" + (f" :: {tensor}" if tensor else "") + "]" if self.path else ""
        super().__init__(f"{code}: {message}{where}")

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "path": self.path, "tensor": self.tensor}


class BackendUnavailable(RuntimeError):
    """The requested compute backend cannot run here; the message says why."""
