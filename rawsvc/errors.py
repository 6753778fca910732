"""Errors that people read: each carries a message meant for an operator."""

from __future__ import annotations


class RawsvcError(Exception):
    """Base class of rawsvc's own errors."""


class ActionError(RawsvcError):
    """
    An action failed; C{str(error)} is what goes into C{${error}}.
    """


class Interrupted(ActionError):
    """
    An action stopped because the service is stopping, not because the job
    is bad: the flow ends without running C{on_error}, the job's state is
    C{interrupted}, and a durable spool resumes it at the next start.
    """


class TemplateError(ActionError):
    """A template could not be rendered (unknown variable, bad encoding)."""


class ConfigIssue(RawsvcError):
    """
    One thing wrong with a config value: raised by option checks, collected
    by the loader, which adds the file and table.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


class ConfigError(RawsvcError):
    """
    A config file has one or more errors; C{errors} holds a line for each,
    naming the file, the table and the key.
    """

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class ListenError(RawsvcError):
    """A listener could not be opened (address in use, no permission)."""


def quoted(text: str, limit: int | None = None) -> str:
    """
    C{text} in double quotes as a person reads it in a message: backslashes
    stay single (a regex's C{\\d} shows as C{\\d}), control characters show
    as C{\\r}, C{\\n}, C{\\t} or C{\\xNN}, a double quote as C{\\"}; past
    C{limit} characters it is cut and ends with C{...}.
    """
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    out = []
    for ch in text:
        if ch in _SHOWN:
            out.append(_SHOWN[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_SHOWN = {"\r": "\\r", "\n": "\\n", "\t": "\\t", '"': '\\"'}
