"""
One job's path in process, for instruction counts: accept -> frame -> flow
-> reply -> close, N times, on StringTransport (no sockets, no reactor run).

    python bench/micro_job.py [N]                       # wall time per job
    valgrind --tool=callgrind --callgrind-out-file=OUT python bench/micro_job.py 2000
        # instructions, repeatable on a noisy machine; compare two trees by running
        # each tree's copy with PYTHONPATH=<tree> (the same N); subtract an N=0 run for start-up.

The config is the bench's round-trip flow (``reply "OK ${size}\\n"``, spool off), 1 KiB jobs,
framed on half-close.
"""

from __future__ import annotations

import sys
import time

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

CONFIG = """
[service]
state_dir = "/tmp/rawsvc-micro-job"
spool = false

[[trigger]]
name = "rt"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "rt"

[[flow]]
name = "rt"
actions = [ { type = "reply", data = "OK ${size}\\n" } ]
"""


class HalfCloseTransport(StringTransport):
    def loseWriteConnection(self) -> None:
        self.loseConnection()

    def connection_lost(self) -> None:
        """What a real transport lets go of when it closes (Twisted's FileDescriptor.connectionLost)."""
        self.producer = None
        self.streaming = None


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from rawsvc.triggers.base import TriggerFactory

    clock = Clock()
    config = loads(CONFIG, "micro.toml", BuildContext(reactor=clock))
    trigger = config.triggers["rt"]
    if getattr(trigger, "sink", None) is None:  # the tree before explicit wiring: the service set it
        from rawsvc.dispatch import Dispatcher

        trigger.sink = Dispatcher(config.flows)
    factory = TriggerFactory(trigger)
    payload = b"x" * 1024
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    started = time.perf_counter()
    for i in range(n):
        proto = factory.buildProtocol(peer)
        transport = HalfCloseTransport(peerAddress=peer)
        proto.makeConnection(transport)
        proto.dataReceived(payload)
        proto.readConnectionLost()
        clock.advance(0)
        if i == 0:
            assert transport.value() == b"OK 1024\n", transport.value()
        transport.connection_lost()
        proto.connectionLost(Failure(ConnectionDone()))
    took = time.perf_counter() - started
    if n:
        print(f"{n} jobs: {took / n * 1e6:.1f} us per job")


if __name__ == "__main__":
    main()
