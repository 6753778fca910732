"""
A cluster's jobs seen from one node: what the console, C{/jobs} and the
manhole use when the spool is PostgreSQL (L{cluster_of}).

L{ClusterControl} is the node's L{IJobControl}: a retry or cancel of a job
that another live node runs is not applied here (that node would carry on
with it); it is asked of that node through a request row, as C{rawsvc
retry} asks it, and its answer awaited.  Any other job (this node's, one
whose node is gone, a finished one of nobody's) is the local sink's to act
on.
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from rawsvc.interfaces import IJobControl
from rawsvc.spool import pg_browse
from rawsvc.spool.pg_reader import PgReader

log = Logger(namespace="rawsvc.spool")

#: Seconds a retry or cancel asked of another node waits for its answer.
ANSWER_WAIT = 10.0
#: Seconds between looks for that answer.
ANSWER_POLL = 0.1


@implementer(IJobControl)
class ClusterControl:
    """Retry and cancel from this node (see the module docstring)."""

    def __init__(self, sink: Any, store: Any, reader: PgReader, reactor: Any, wait: float = ANSWER_WAIT) -> None:
        self.sink = sink
        self.store = store
        self.reader = reader
        self.reactor = reactor
        self.wait = wait

    def retry(self, job_id: str) -> Any:
        return self._act("retry", job_id)

    def cancel(self, job_id: str) -> Any:
        return self._act("cancel", job_id)

    @inlineCallbacks
    def _act(self, action: str, job_id: str) -> Any:
        if job_id not in self.sink.running:
            owner = yield self.reader.run(pg_browse.owner_elsewhere, job_id, self.store.incarnation)
            if owner is not None:
                return (yield self._ask(owner, action, job_id))
        handler = self.sink.retry if action == "retry" else self.sink.cancel
        return (yield handler(job_id))

    @inlineCallbacks
    def _ask(self, owner: str, action: str, job_id: str) -> Any:
        request_id = yield self.reader.run(pg_browse.add_request, job_id, action)
        deadline = self.reactor.seconds() + self.wait
        while True:
            answer = yield self.reader.run(pg_browse.request_answer, request_id)
            if answer is not None:
                return f"node {owner}: {answer[1]}"
            if self.reactor.seconds() >= deadline:
                return (f"job {job_id} runs on node {owner}: {action} requested (#{request_id}), no answer within "
                        f"{self.wait:g} s")
            yield deferLater(self.reactor, ANSWER_POLL, lambda: None)


class Cluster:
    """What a node needs to show and act on every node's jobs: a reader and the control."""

    def __init__(self, service: Any, store: Any) -> None:
        reactor = service.context.reactor
        self.reader = PgReader(store.dsn, reactor, reactor.getThreadPool())
        self.control = ClusterControl(service.sink, store, self.reader, reactor)


_clusters: weakref.WeakKeyDictionary[Any, Cluster] = weakref.WeakKeyDictionary()


def close(service: Any) -> Deferred[None]:
    """
    The service stops: close its reader's idle connections (on the reader's
    thread pool: closing one talks to the server).  A read after this (the
    service started again) connects again.
    """
    cluster = _clusters.get(service)
    if cluster is None:
        return succeed(None)
    reader = cluster.reader
    d = deferToThreadPool(reader.reactor, reader.threadpool, reader.close)
    d.addErrback(lambda f: log.failure("closing the spool reader's connections failed", f))
    return d


def cluster_of(service: Any) -> Cluster | None:
    """The L{Cluster} of a service whose spool is PostgreSQL (made once), else None."""
    from rawsvc.spool.pg import PgStore
    from rawsvc.spool.sink import SpoolSink

    sink = service.sink
    if not isinstance(sink, SpoolSink) or not isinstance(sink.store, PgStore):
        return None
    cluster = _clusters.get(service)
    if cluster is None:
        cluster = _clusters[service] = Cluster(service, sink.store)
    return cluster


def job_control(service: Any) -> Any:
    """Who acts on a job for this node: the cluster's control with a PostgreSQL spool, else the sink."""
    cluster = cluster_of(service)
    return cluster.control if cluster is not None else service.sink


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """A job row as C{/jobs} and the manhole list a job (L{rawsvc.job.Job.summary}), its delivery when it waits."""
    variables = row["variables"] or {}
    record = {
        "job_id": row["job_id"], "trigger": row["trigger"],
        "peer": f"{row['peer_host']}:{row['peer_port']}" if row["peer_host"] else "",
        "received_at": row["received_at"], "finished_at": row["finished_at"], "size": row["size"],
        "state": row["state"], "error": row["last_error"], "language": variables.get("language"),
    }
    if row["state"] == "waiting":
        record["delivery"] = {"destination": row["destination"], "attempt": row["delivery_attempt"],
                              "last_error": row["last_error"], "next_try": row["next_try"]}
    return record


def recent(cluster: Cluster, limit: int, states: Any = (), triggers: Any = (), since: float | None = None) -> Any:
    """A Deferred firing with the newest C{limit} jobs of every node, as L{summary} records."""
    d = cluster.reader.run(pg_browse.list_jobs, tuple(states), tuple(triggers), limit, since)
    return d.addCallback(lambda rows: [summary(r) for r in rows])
