"""
Type checking: ``mypy rawsvc`` (config in pyproject.toml, with the mypy_zope
plugin) is clean, and it catches a component that does not match its seam.

What mypy_zope checks, found by the snippet below (each case is a line
marked ``# expect: <error code>`` or ``# limit``):

- a class declaring ``@implementer(IJobSink)`` whose ``submit`` takes other
  arguments than the interface's (``[override]``), or that lacks a declared
  method or attribute (``[misc]``);
- a call with the wrong number of arguments through an interface type
  (``sink.submit(job)``: ``[call-arg]``);
- an object whose class does not declare the interface, used where the
  interface is expected (``[assignment]``/``[arg-type]``): interfaces are
  nominal, a matching shape is not enough;
- the typed seams themselves: a ``from_config`` given something that is not
  a ``BuildContext``, a sink that is not an ``IJobSink`` (``[arg-type]``).

What it cannot check (the ``# limit`` lines, asserted to pass unflagged, so
this list is kept true): the interfaces' methods are unannotated, so the
argument *types* of an implementation or of a call are not compared (a
``submit(job: int, flow_name: bytes)`` passes), and an ``Attribute`` is
``Any`` (assigning a str to ``trigger.counters`` passes).  ``verifyObject``
in the tests and the loader's ``not_provided`` check stay the run-time net.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, require_module


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    require_module("mypy")
    require_module("mypy_zope")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_mypy_reports_no_errors_in_rawsvc():
    result = _mypy("rawsvc")
    assert result.returncode == 0, (
        f"mypy rawsvc exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )


SNIPPET = '''\
from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from rawsvc.context import BuildContext
from rawsvc.interfaces import IJobSink, IJobStore, ITrigger
from rawsvc.job import Job
from rawsvc.metrics import TriggerCounters
from rawsvc.triggers.tcp import TcpTrigger


@implementer(IJobSink)
class ShortSubmit:
    def submit(self, job: Job) -> Deferred:  # expect: override
        return succeed(job)


@implementer(IJobSink)
class NoSubmit:  # expect: misc
    pass


@implementer(ITrigger)
class TriggerWithoutAttributes(Service):  # expect: misc
    def pause(self) -> None: pass
    def resume(self) -> None: pass
    def status(self) -> dict: return {}
    def connection_list(self) -> list: return []
    def receiving(self) -> list: return []
    def abort_receiving(self) -> None: pass


class Undeclared:
    """The shape of an IJobSink, without declaring it."""

    def submit(self, job: Job, flow_name: str, counters: TriggerCounters | None = None) -> Deferred:
        return succeed(job)


@implementer(IJobSink)
class WrongTypes:
    def submit(self, job: int, flow_name: bytes, counters: object = None) -> Deferred:  # limit
        return succeed(job)


def calls(sink: IJobSink, job: Job, trigger: ITrigger) -> None:
    sink.submit(job)  # expect: call-arg
    sink.submit(job, "flow", None, "extra")  # expect: call-arg
    plain: IJobSink = Undeclared()  # expect: assignment
    store: IJobStore = ShortSubmit()  # expect: assignment
    TcpTrigger.from_config({}, "not a context")  # expect: arg-type
    BuildContext(sink=Undeclared())  # expect: arg-type
    sink.submit(42, b"flow")  # limit
    trigger.counters = "not counters"  # limit
'''


def _cases() -> list[tuple[int, str]]:
    """(line, expected error code or 'limit') for each marked line of SNIPPET."""
    found = []
    for number, line in enumerate(SNIPPET.splitlines(), start=1):
        m = re.search(r"# (?:expect: ([\w-]+)|(limit))$", line)
        if m:
            found.append((number, m.group(1) or "limit"))
    return found


CASES = _cases()


@pytest.fixture(scope="module")
def snippet_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[str]]:
    """mypy's errors on SNIPPET, by line: the error codes found there."""
    path: Path = tmp_path_factory.mktemp("typecheck") / "seams_snippet.py"
    path.write_text(SNIPPET)
    result = _mypy("--no-incremental", str(path))
    assert result.returncode in (0, 1), f"mypy did not run:\n{result.stdout}{result.stderr}"
    errors: dict[int, list[str]] = {}
    for line in result.stdout.splitlines():
        m = re.match(r".*seams_snippet\.py:(\d+): error: .*\[([\w-]+)\]$", line)
        if m:
            errors.setdefault(int(m.group(1)), []).append(m.group(2))
    errors[0] = [result.stdout]  # the whole report, for the failure messages
    return errors


def test_the_snippet_marks_every_case():
    assert len([c for c in CASES if c[1] != "limit"]) == 9 and len([c for c in CASES if c[1] == "limit"]) == 3


@pytest.mark.parametrize(("line", "code"), [c for c in CASES if c[1] != "limit"],
                         ids=[f"line{n}-{c}" for n, c in CASES if c != "limit"])
def test_mypy_catches_a_seam_mismatch(snippet_errors: dict[int, list[str]], line: int, code: str):
    text = SNIPPET.splitlines()[line - 1].strip()
    assert code in snippet_errors.get(line, []), (
        f"mypy did not report [{code}] on snippet line {line} ({text}):\n{snippet_errors[0][0]}"
    )


@pytest.mark.parametrize("line", [n for n, c in CASES if c == "limit"],
                         ids=[f"line{n}" for n, c in CASES if c == "limit"])
def test_what_mypy_zope_cannot_catch_is_documented(snippet_errors: dict[int, list[str]], line: int):
    text = SNIPPET.splitlines()[line - 1].strip()
    assert line not in snippet_errors, (
        f"mypy now reports snippet line {line} ({text}): update this module's docstring, "
        f"the limit it lists is gone:\n{snippet_errors[0][0]}"
    )


def test_nothing_else_in_the_snippet_is_reported(snippet_errors: dict[int, list[str]]):
    marked = {n for n, _ in CASES}
    stray = sorted(n for n in snippet_errors if n and n not in marked)
    assert not stray, f"unexpected mypy errors on snippet lines {stray}:\n{snippet_errors[0][0]}"
