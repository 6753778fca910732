"""
The IJobStore contract (tests/store_contract.py) on the SQLite store,
L{rawsvc.spool.store.Store}: a fresh state_dir per test; a reopened store
is a new Store over the same state_dir (the service restarted).
"""

from __future__ import annotations

from rawsvc.spool.store import Store
from store_contract import StoreContract


class TestSQLiteStore(StoreContract):
    durable = True

    def make_store(self, path, clock):
        from twisted.internet import reactor

        return Store(str(path), reactor, clock=clock)

    def reopen(self, store):
        return Store(store.state_dir, store.reactor, clock=store.clock)

    def broken_store(self, path, clock):
        from twisted.internet import reactor

        path.write_bytes(b"")  # a file where the state_dir's parent should be
        return Store(str(path / "state"), reactor, clock=clock)
