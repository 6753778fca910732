"""
Wiring, in one place: the parts a config's triggers and actions are handed.

The loader (L{rawsvc.config.loads}) builds, in this order: the destination
pool (with the build context, before any action), the flows (their
C{send_tcp} actions take the pool), then here the job sink (and, with the
spool on, the store behind it) for those flows, then the triggers, each
given the sink.  The sink learns the triggers through the same
C{context.triggers} mapping the loader fills, to count a resumed job on its
trigger and tell a trigger (L{IRecoveryAware}) that an operator's retry of
its job succeeded.  L{rawsvc.service.RawService} then owns what was built:
it adds C{context.services} to its service tree.

Nothing is looked up by name at run time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from zope.interface.verify import verifyObject

from rawsvc.context import BuildContext
from rawsvc.interfaces import IDeliveryWatcher, IJobSink, IJobStore, IRecoveryAware, ITrigger

if TYPE_CHECKING:
    from rawsvc.flow import Flow
    from rawsvc.job import Job
    from rawsvc.metrics import TriggerCounters

#: The folder of C{state_dir} where a PostgreSQL spool keeps the large payloads it read back.
PG_PAYLOADS = "pg-payloads"



def build_sink(context: BuildContext, flows: Mapping[str, Flow]) -> IJobSink:
    """
    The job sink for C{flows}: C{context.sink} when the caller (a test) set
    one, else the durable spool sink (C{[service] spool = true}, the
    default, or a PostgreSQL URI: L{build_store}) or the in-memory
    dispatcher.
    """
    if context.sink is not None:
        return context.sink
    from rawsvc.config import SERVICE_OPTIONS

    opts = SERVICE_OPTIONS.settings(context.service_options)  # declared defaults for what is not set
    flows = {**flows, **reprint_flow(context)}
    sink: IJobSink
    if opts.spool:
        from rawsvc.spool.sink import SpoolSink

        store = build_store(context, opts)
        verifyObject(IJobStore, store)
        spool = SpoolSink(
            dict(flows), store, context.reactor,
            history=opts.history,
            retention_days=opts.retention_days,
            retention_mb=opts.retention_mb,
            triggers=context.triggers,
            pool=context.destinations,
            stop_grace=float(opts.stop_grace),
        )
        context.store = store
        context.services.append(spool.service)
        if context.cluster_options is not None:
            from rawsvc.cluster.node import ClusterNode
            from rawsvc.spool.pg import PgStore

            assert isinstance(store, PgStore)  # [cluster] is only valid with a PostgreSQL spool
            node = ClusterNode(context.reactor, opts.spool, store, context.destinations, spool,
                               context.cluster_options, os.path.join(context.state_dir, PG_PAYLOADS))
            context.cluster = node
            spool.service.wakeups = None  # the node's listener already wakes the requests' poll
            spool.shared_deliveries = True
            context.services.append(node)  # stops after the spool: deliveries go on during its grace
        sink = spool
    else:
        from rawsvc.dispatch import Dispatcher

        sink = Dispatcher(dict(flows), opts.history)
    verifyObject(IJobSink, sink)  # a built-in: a mismatch is our bug, found by any test
    if IDeliveryWatcher.providedBy(sink):
        context.destinations.add_watcher(sink)  # a delivery waiting to retry shows on its job
    context.sink = sink
    return sink


#: The flow of a job the console reprints to a destination an operator chose
#: (variable C{reprint_destination}); no config flow can have this name.
REPRINT_FLOW = "rawsvc:reprint"


def reprint_flow(context: BuildContext) -> dict[str, Flow]:
    """
    C{{REPRINT_FLOW: flow}}: one C{send_tcp} of the payload to
    C{${reprint_destination}} (the allow-list applies, as to any send_tcp),
    with that action's defaults; empty when the pool cannot be configured
    (the config's own send_tcp actions say why).
    """
    from rawsvc.actions.send_tcp import SendTcpAction
    from rawsvc.flow import Flow
    from rawsvc.errors import ConfigIssue

    values, issues = SendTcpAction.options.validate({"destination": "${reprint_destination}"})
    if issues:  # pragma: no cover - a fixed, valid table
        return {}
    try:
        action = SendTcpAction.from_config(values, context)
    except ConfigIssue:
        return {}
    return {REPRINT_FLOW: Flow(REPRINT_FLOW, [action])}


def build_store(context: BuildContext, opts: Any) -> IJobStore:
    """
    The store behind the spool sink: PostgreSQL for a C{postgresql://} URI
    (large payloads read back are kept in C{state_dir/pg-payloads}), else
    SQLite in C{state_dir}.
    """
    from rawsvc.spool.pg_schema import is_pg_uri

    if is_pg_uri(opts.spool):
        from rawsvc.spool.pg import PgStore

        cluster = context.cluster_options
        if cluster is None:
            return PgStore(opts.spool, context.reactor, os.path.join(context.state_dir, PG_PAYLOADS))
        return PgStore(opts.spool, context.reactor, os.path.join(context.state_dir, PG_PAYLOADS),
                       node=cluster["node"] or None, lease_ttl=float(cluster["lease_ttl"]))
    from rawsvc.spool.store import Store

    return Store(context.state_dir, context.reactor, min_free_bytes=int(opts.min_free_mb * (1 << 20)))


def counters_of(triggers: Mapping[str, ITrigger], name: str) -> TriggerCounters | None:
    """The counters of trigger C{name}, or None when the config has no such trigger (any more)."""
    trigger = triggers.get(name)
    return trigger.counters if trigger is not None else None


def tell_recovered(triggers: Mapping[str, ITrigger], job: Job) -> None:
    """Tell the job's trigger, when it wants to know, that its job ran again and is done."""
    trigger = triggers.get(job.trigger)
    if trigger is not None and IRecoveryAware.providedBy(trigger):
        trigger.job_recovered(job)
