"""
The contract of L{rawsvc.interfaces.IJobStore}, as tests every engine must pass.

Not collected by itself (no C{test_} prefix; the tests are in
C{store_contract_writes.py} and C{store_contract_reads.py}, the hooks and
helpers in C{store_contract_base.py}).  To check an engine, subclass
L{StoreContract} in a test module and fill in its hooks::

    from store_contract import StoreContract   # tests/ is on sys.path

    class TestMyStore(StoreContract):
        durable = True                        # False: it forgets at a restart

        def make_store(self, path, clock):
            # A new store, not opened, empty, all of its own: keep its files
            # under `path` (a fresh folder), read time from `clock()`.
            return MyStore(...)

        def reopen(self, store):
            # Another store object over the same jobs as `store` (already
            # stopped): the same node restarted, or a second process.
            return MyStore(...)

        def broken_store(self, path, clock):
            # A store whose open() fails (say, a server nobody listens on).
            return MyStore(...)

C{tests/test_store_sqlite.py} (SQLite) and C{tests/test_store_memory.py}
(L{rawsvc.spool.memory.MemoryStore}) are two such modules.

B{The next engine (PostgreSQL).}  Start the server once per module with a
fixture of the subclass (C{initdb}/C{pg_ctl} as user C{postgres} on a free
loopback port: see PEERS.md), and let C{make_store} create a database (or
schema) of its own per call, so tests never see each other's jobs;
C{path} may hold the socket folder or go unused.  C{reopen} connects again
to the same database as the same node: a clean C{stop} lets its jobs go,
so the new store (the only live node) must find them in C{load()} as a
restart does.  C{broken_store} points at a port nothing listens on.  A
subclass may add tests of its own beside the contract's (claims, leases).

Every test gets a new L{Clock} (C{self.clock}) at L{Clock.START}; a store
made with it records those times, so tests move time instead of sleeping.
Stores made through L{StoreContract.new_store} and
L{StoreContract.restart} are stopped after the test.
"""

from __future__ import annotations

from store_contract_base import SIZES, Clock, ContractBase, assert_readable, comparable, data_of, make_job
from store_contract_reads import ReadsContract
from store_contract_writes import WritesContract

__all__ = [
    "SIZES", "Clock", "ContractBase", "ReadsContract", "StoreContract", "WritesContract", "assert_readable",
    "comparable", "data_of", "make_job",
]


class StoreContract(WritesContract, ReadsContract):
    """
    The whole contract: subclass it as C{Test...} and fill in the hooks of
    L{ContractBase} (C{make_store}, C{reopen}, C{broken_store}, C{durable}).
    The tests are in L{store_contract_writes} and L{store_contract_reads}.
    """
