"""
The IJobStore contract (tests/store_contract.py) on
L{rawsvc.spool.memory.MemoryStore}, written from the interface's docstrings
alone: it passes all but the tests that restart a store (it is not durable).
"""

from __future__ import annotations

from rawsvc.spool.memory import MemoryStore
from store_contract import StoreContract


class TestMemoryStore(StoreContract):
    durable = False

    def make_store(self, path, clock):
        return MemoryStore(clock=clock)

    def broken_store(self, path, clock):
        return MemoryStore(clock=clock, fail_open="the spool's disk is gone (a test)")
