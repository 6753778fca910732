"""
Printer pools: a C{send_tcp} destination that names several printers
(C{destination = ["10.0.0.5:9100", "10.0.0.6:9100"]}), and which of them a
job goes to (L{PrinterPool.order}).

- C{failover} (the default): the first printer, in the order given, that
  is not cooling down;
- C{round_robin}: the next printer after the one the last job went to;
- C{least_queued}: the printer with the fewest jobs in its queue (ties:
  the order given).

A printer that refuses, times out, is unreachable or fails its pre-flight
check cools down for C{cooldown} seconds: no job is given to it meanwhile
while another printer of the pool is not cooling, and the pool's jobs
queued for it move to the others (L{rawsvc.client.destinations}).  When
every printer cools down, the job goes to the one whose cool-down ends
first and is retried there with the usual back-off, until another printer
is back.

Each printer keeps its own queue: jobs for one printer are sent in the
order they were queued for it, but a pool as a whole is not FIFO (a job
that moved may print after one queued later on another printer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from rawsvc.client.address import Destination

#: The values of C{policy}.
POLICIES = ("failover", "round_robin", "least_queued")

#: Seconds a printer that failed is skipped, by default.
COOLDOWN = 30.0

#: The outcome of a delivery that left a pool member's queue to go to another member.
MOVED = "moved"


@attrs.define(eq=False)
class PrinterPool:
    """The printers of one C{send_tcp} destination list and how a job picks one."""

    members: Sequence[Destination]
    policy: str = "failover"
    cooldown: float = COOLDOWN
    #: round_robin: the index of the member the last job went to.
    _last: int = -1

    def order(self, cooling_until: Callable[[str], float], queued: Callable[[str], int]) -> list[Destination]:
        """
        The members in the order a job should try them: those not cooling
        down by the policy, then those cooling down, the soonest back first.
        C{cooling_until(key)} is when a member's cool-down ends (0: it is not
        cooling); C{queued(key)} is how many jobs its queue holds.
        """
        n = len(self.members)
        indexed = list(enumerate(self.members))
        if self.policy == "round_robin":
            start = (self._last + 1) % n
            indexed = indexed[start:] + indexed[:start]
        elif self.policy == "least_queued":
            indexed.sort(key=lambda item: (queued(str(item[1])), item[0]))
        ready = [(i, m) for i, m in indexed if cooling_until(str(m)) <= 0]
        cooling = sorted(((i, m) for i, m in indexed if cooling_until(str(m)) > 0),
                         key=lambda item: cooling_until(str(item[1])))
        chosen = ready + cooling
        if self.policy == "round_robin" and ready:
            self._last = ready[0][0]
        return [m for _, m in chosen]
