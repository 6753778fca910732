"""
The manhole's REPL: Twisted's colored manhole, but what an operator's
command answers is shown as text, not as a Python repr.

A command that returns a Deferred (C{retry("...")}, C{cancel("...")},
C{pause("...")}) shows its result when it arrives: a message as the
sentence it is ("job 01a... cancelled"), a report as indented JSON, a
failure as "failed: <why>"; never C{<Deferred #0>}.
"""

from __future__ import annotations

from typing import Any

from twisted.conch import manhole
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def shown(value: Any) -> str:
    """What the REPL prints for C{value}: a str as itself, anything else as its repr (reports: JSON)."""
    return value if isinstance(value, str) else repr(value)


class OperatorInterpreter(manhole.ManholeInterpreter):
    """Shows command results (also those that arrive later) as text for people."""

    def displayhook(self, obj: Any) -> None:
        self.locals["_"] = obj
        if isinstance(obj, Deferred):
            later = not obj.called
            if later:
                self.write("... (waiting for the answer)")
            obj.addCallbacks(self._answered, self._failed, callbackArgs=(later,), errbackArgs=(later,))
        elif obj is not None:
            self.write(shown(obj))

    def _answered(self, result: Any, later: bool) -> Any:
        self.write(shown(result) if result is not None else "done", later)
        return result

    def _failed(self, failure: Failure, later: bool) -> None:
        reason = failure.value
        message = str(reason.args[0]) if isinstance(reason, KeyError) and reason.args else failure.getErrorMessage()
        self.write(f"failed: {message}", later)
        return None  # shown: not an unhandled error in the log


class OperatorManhole(manhole.ColoredManhole):
    """Twisted's colored manhole with L{OperatorInterpreter}."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.interpreter = OperatorInterpreter(self, self.namespace)
