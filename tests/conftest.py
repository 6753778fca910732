"""
Shared test habits (pytest + pytest-twisted only):

- the reactor is imported inside fixtures and tests, never at module top;
- an autouse fixture fails any test that leaves listening ports,
  connections or delayed calls behind;
- a test that needs an external tool skips on a laptop without it, and fails
  under CI=true.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import pytest
import pytest_twisted

# A job state change outside rawsvc.states.TRANSITIONS raises in every test,
# also inside the twistd processes the tests start (they inherit this).
os.environ["RAWSVC_STRICT_STATES"] = "1"

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def require_tool(name: str) -> str:
    """Path of an external tool; skip (fail under CI) when it is missing."""
    path = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
    if path:
        return path
    message = f"{name} is not installed (see .ci/run for the Debian package)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_module(name: str) -> None:
    """Skip (fail under CI) when the Python module C{name} is not importable."""
    if importlib.util.find_spec(name) is not None:
        return
    message = f"{name} is not importable (pip install '.[test]')"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _reactor_state():
    from twisted.internet import reactor

    readers = set(reactor.getReaders()) | set(reactor.getWriters())
    # The reactor's own wakers (thread and SIGCHLD) are not a test's leftovers.
    readers = {r for r in readers if "Waker" not in type(r).__name__}
    return readers, {c for c in reactor.getDelayedCalls() if c.active()}


@pytest.fixture(autouse=True)
def clean_reactor(request):
    """Fail a test that leaves sockets or delayed calls in the reactor."""
    before_sockets, before_calls = _reactor_state()
    yield
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    leftovers = None
    for _ in range(50):  # let closing connections finish (up to ~0.5 s)
        sockets, calls = _reactor_state()
        new_sockets = sockets - before_sockets
        new_calls = {c for c in calls - before_calls if not _is_internal(c)}
        if not new_sockets and not new_calls:
            return
        leftovers = (new_sockets, new_calls)
        pytest_twisted.blockon(deferLater(reactor, 0.01, lambda: None))
    sockets, calls = leftovers
    for s in sockets:
        try:
            s.loseConnection() if hasattr(s, "loseConnection") else s.stopListening()
        except Exception:
            pass
    for c in calls:
        c.cancel()
    pytest.fail(
        f"test left the reactor dirty: sockets={[repr(s) for s in sockets]} "
        f"delayed calls={[repr(c) for c in calls]}"
    )


def _is_internal(call) -> bool:
    text = repr(call)
    # Twisted's own thread-pool shutdown and log flushing are not the test's.
    return "ThreadPool" in text or "_runUntilCurrent" in text


@pytest.fixture
def reactor():
    from twisted.internet import reactor as _reactor

    return _reactor


@pytest.fixture
def python():
    return sys.executable


@pytest.fixture
def service_factory(tmp_path):
    """
    Start real RawServices from TOML text (lines before the first table go
    into support.start_service's [service] table); stopped after the test.
    """
    from support import start_service, stop_service

    started = []

    def make(toml: str):
        svc = start_service(tmp_path, toml)
        started.append(svc)
        return svc

    yield make
    for svc in started:
        stop_service(svc)
# A session's throwaway PostgreSQL (at the end: pg_support imports require_tool from here).
from pg_support import pg_server  # noqa: F401,E402
