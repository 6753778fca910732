"""
The IJobStore contract (tests/store_contract.py) on PostgreSQL,
L{rawsvc.spool.pg.PgStore}: one throwaway server for the session
(L{pg_support.pg_server}), a new database per store; a reopened store is a
new PgStore over the same database (the same node restarted).
"""

from __future__ import annotations

import pytest

from rawsvc.spool.pg import PgStore
from pg_support import free_port
from store_contract import StoreContract


class TestPgStore(StoreContract):
    durable = True

    def make_store(self, path, clock):
        from twisted.internet import reactor

        return PgStore(self.pg.new_database(), reactor, str(path / "payloads"), node="n1", clock=clock)

    def reopen(self, store):
        return PgStore(store.dsn, store.reactor, store.files_dir, node=store.node, clock=store.clock)

    def broken_store(self, path, clock):
        from twisted.internet import reactor

        return PgStore(f"postgresql://postgres@127.0.0.1:{free_port()}/none", reactor, str(path), clock=clock)

    @pytest.fixture(autouse=True)
    def _server(self, pg_server):
        self.pg = pg_server
