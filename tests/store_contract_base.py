"""
The base of the IJobStore contract suite (see L{store_contract}): the
hooks an engine fills in, the per-test clock and stores, and helpers that
make jobs as triggers do.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import gatherResults

from rawsvc.job import Job, Payload
from rawsvc.spool.records import BLOB_MAX

inlineCallbacks = pytest_twisted.inlineCallbacks

#: Payload sizes every engine must give back exactly: empty, tiny, around
#: SQLite's inline limit, and a few MiB.
SIZES = (0, 1, 255, BLOB_MAX, BLOB_MAX + 1, 3 << 20)


class Clock:
    """The time a store reads: C{clock()}; moved by the test with L{advance}."""

    START = 1_700_000_000.0

    def __init__(self) -> None:
        self.now = self.START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def data_of(size: int, seed: int = 0) -> bytes:
    """C{size} bytes using every byte value (NUL, CR, LF, 0xFF ...)."""
    block = bytes((i * 7 + seed) % 256 for i in range(256))
    return (block * (size // 256 + 1))[:size]


def make_job(data: bytes = b"label", trigger: str = "t", spill_dir: str | None = None, **extra: str) -> Job:
    """A job as a trigger hands it over; C{spill_dir}: its payload in a temporary file there."""
    if spill_dir is None:
        payload = Payload(data)
    else:
        payload = Payload(spool_dir=spill_dir, threshold=0)
        payload.write(data)
    payload.close()
    return Job(trigger=trigger, payload=payload, peer_host="10.0.0.7", peer_port=4242, extra=dict(extra))


def comparable(variables: dict[str, str]) -> dict[str, str]:
    """Variables as the contract compares them: C{action_index} is the record's field, not a variable."""
    return {k: v for k, v in variables.items() if k != "action_index"}


def assert_readable(text: Any) -> None:
    """A message for people: text, no traceback, no Python repr."""
    assert isinstance(text, str) and text.strip(), text
    for sign in ("Traceback", "Error(", "<", "\\n", "b'"):
        assert sign not in text, text


class ContractBase:
    """The hooks (see L{store_contract}) and what every contract test uses."""

    #: False for an engine that keeps nothing across a restart: the tests
    #: that restart it are skipped.
    durable = True

    # Hooks ------------------------------------------------------------------

    def make_store(self, path: Any, clock: Clock) -> Any:
        raise NotImplementedError

    def reopen(self, store: Any) -> Any:
        raise NotImplementedError

    def broken_store(self, path: Any, clock: Clock) -> Any:
        raise NotImplementedError

    # Helpers ----------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _contract(self, tmp_path):
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        pytest_twisted.blockon(deferLater(reactor, 0, lambda: None))  # the reactor runs
        self.tmp_path = tmp_path
        self.clock = Clock()
        self.stores: list[Any] = []
        yield
        for store in reversed(self.stores):
            pytest_twisted.blockon(store.stop())

    def spill_dir(self) -> str:
        path = str(self.tmp_path / "incoming")
        os.makedirs(path, exist_ok=True)
        return path

    @defer.inlineCallbacks
    def new_store(self):
        """A new store, open."""
        store = self.make_store(self.tmp_path / "store", self.clock)
        self.stores.append(store)
        yield store.open()
        return store

    @defer.inlineCallbacks
    def restart(self, store):
        """Stop C{store}; a store reopened over its jobs, open (durable engines only)."""
        if not self.durable:
            pytest.skip("this engine keeps nothing across a restart (durable = False)")
        yield store.stop()
        again = self.reopen(store)
        self.stores.append(again)
        yield again.open()
        return again

    @defer.inlineCallbacks
    def one(self, store, job_id: str):
        """The record of C{job_id}."""
        found = yield store.load(job_id=job_id)
        assert len(found) == 1, found
        return found[0]

    @defer.inlineCallbacks
    def added(self, store, *jobs: Job, flow: str = "f"):
        """Add C{jobs} together (one reactor turn) and wait for all."""
        results = yield gatherResults([store.add(j, flow) for j in jobs])
        return results
