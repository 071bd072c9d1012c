"""The project's error hierarchy.

Every message says what went wrong, where (file and offset when there is one) and, when it can, what to do.
The CLI prints `str(error)` and exits nonzero, so the message is the user interface.
"""

from __future__ import annotations


class GLMCorpusError(Exception):
    """Base class of every error glm-corpus raises on purpose."""


class ConfigError(GLMCorpusError):
    """A configuration file or command-line value is invalid."""


class TokenizerError(GLMCorpusError):
    """The tokenizer model is missing or unusable, or the input cannot be tokenized."""


class ShardFormatError(GLMCorpusError):
    """An on-disk shard is corrupt or inconsistent (bad magic, counts, checksum, truncation)."""

    def __init__(self, path: str, problem: str, hint: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.hint = hint
        message = f"{self.path}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    def __reduce__(self):  # picklable across Ray workers despite the custom __init__
        return (type(self), (self.path, self.problem, self.hint))


class BadRecordError(GLMCorpusError):
    """One malformed input record; raised only under --strict, otherwise counted under `reason`."""

    def __init__(self, reason: str, path: str, offset: int | None, detail: str = "") -> None:
        self.reason = reason
        self.path = str(path)
        self.offset = offset
        self.detail = detail
        where = self.path if offset is None else f"{self.path} at offset {offset}"
        message = f"{where}: {reason}"
        if detail:
            message += f": {detail}"
        super().__init__(message)

    def __reduce__(self):  # picklable across Ray workers despite the custom __init__
        return (type(self), (self.reason, self.path, self.offset, self.detail))
