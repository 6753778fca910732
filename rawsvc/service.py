"""
RawService: the service tree built from a validated config.

One child service per trigger, the admin listeners, and any shared
component that is itself a service (destination queues, the spool).  On
stop, listeners close first, then jobs in flight are given time to finish.
"""

from __future__ import annotations

import os
import signal
import gc
import sys
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.logger import Logger

from rawsvc.compat import exit_by_signal
from rawsvc.config import Config
from rawsvc.errors import ListenError
from rawsvc.interfaces import IDestinationPool, IDrainable, IJobSink, ITrigger
from rawsvc.plugins import load_dotted, not_provided
from rawsvc.spool.check import SpoolDamaged
from rawsvc.spool.lock import StateDirBusy, StateDirLock

log = Logger(namespace="rawsvc.service")

#: Admin section -> dotted factory C{(options, service) -> IService}.
ADMIN_FACTORIES = {
    "manhole": "rawsvc.admin.manhole:make_service",
    "http": "rawsvc.admin.web:make_service",
}

#: Seconds to wait at stop for jobs in flight (C{[service] stop_grace}).
SHUTDOWN_GRACE = 30.0


class RawService(MultiService):
    """The whole of rawsvc, as one Twisted service."""

    #: Set by the twistd plugin: a listener that cannot open ends the process.
    exit_on_error = False

    def __init__(self, config: Config, sink: IJobSink | None = None) -> None:
        """
        The service tree for C{config}, whose parts the loader built and
        wired (L{rawsvc.wiring}): each trigger already holds its job sink.
        C{sink} (tests) replaces the config's sink for every trigger.
        """
        super().__init__()
        self.config = config
        self.context = config.context
        self.reactor = config.context.reactor
        self.flows = config.flows
        self.triggers: dict[str, ITrigger] = config.triggers
        os.makedirs(self.context.state_dir, mode=0o700, exist_ok=True)
        if sink is None:
            sink = self.context.sink
            if sink is None:  # a config of flows alone: the loader built no trigger to hand one
                from rawsvc.wiring import build_sink

                sink = build_sink(self.context, self.flows)
        else:
            for trigger in self.triggers.values():
                trigger.sink = sink  # type: ignore[attr-defined]  # tests: every trigger here has a sink
        why = not_provided(IJobSink, sink)
        if why is not None:
            raise TypeError(f"the job sink {type(sink).__name__} does not provide IJobSink: {why}")
        self.sink: IJobSink = sink
        #: The outbound pool every send_tcp action of the config shares.
        self.destinations: IDestinationPool = self.context.destinations
        #: Cluster mode's node (L{rawsvc.cluster.node.ClusterNode}): /healthz and /metrics report it; else None.
        self.cluster: Any = self.context.cluster
        for trigger in self.triggers.values():
            trigger.setServiceParent(self)
        for section, options in config.admin.items():
            factory = load_dotted(ADMIN_FACTORIES[section])
            factory(options, self).setServiceParent(self)
        # Shared parts stop after the listeners, in this order (destinations
        # before the spool, which closes last); the state_dir lock goes last of all.
        self._components: list[IService] = [IService(self.destinations), self.context.http_clients,
                                            *self.context.services]
        # One owner per state_dir: taken first at start, released last at stop.
        self.state_lock = StateDirLock(self.context.state_dir, spool=self.config.service.get("spool", True) is True)
        self._components.append(self.state_lock)
        for component in self._components:
            component.setServiceParent(self)

    @property
    def jobs(self) -> IJobSink:
        return self.sink

    def startService(self) -> None:
        self._take_state_dir()
        log.info(
            "rawsvc starting: triggers {triggers}; flows {flows}",
            triggers=", ".join(f"{n} ({t.type_name})" for n, t in self.triggers.items()) or "none",
            flows=", ".join(self.flows) or "none",
        )
        try:
            super().startService()
        except ListenError as e:
            if not self.exit_on_error:
                raise
            # Under twistd: a clear line and a non-zero exit, not a traceback.
            log.critical("{error}; not starting", error=str(e))
            sys.stderr.write(f"rawsvc: {e}; not starting\n")
            raise SystemExit(1)
        if self.exit_on_error:
            # Under twistd the process is ours: what start-up built (modules,
            # the config, compiled templates) lives as long as it does, so the
            # cyclic collector stops re-scanning it at every full collection.
            gc.freeze()

    def _take_state_dir(self) -> None:
        """The state_dir's lock, and a sound spool, before anything is opened, swept or resumed."""
        try:
            self.state_lock.acquire()
        except StateDirBusy as e:
            if not self.exit_on_error:
                raise
            log.critical("{error}; not starting", error=str(e))
            sys.stderr.write(f"rawsvc: {e}; not starting\n")
            raise SystemExit(1)
        except SpoolDamaged as e:
            if not self.exit_on_error:
                raise
            log.critical("{advice}", advice=e.advice())
            sys.stderr.write("".join(f"rawsvc: {line}\n" for line in e.advice().splitlines()))
            raise SystemExit(1)
    def privilegedStartService(self) -> None:
        if self.exit_on_error:  # under twistd, which handles SIGINT and SIGTERM itself
            self._handle_hangup()
        super().privilegedStartService()

    def _handle_hangup(self) -> None:
        """SIGHUP (a closed terminal, a careless kill -HUP): a clean stop, as for SIGTERM."""
        reactor = self.reactor

        def hangup(signum: int, frame: Any) -> None:
            # As twistd does for SIGTERM: once stopped, it ends by the same
            # signal, the exit status service managers count as a clean stop.
            exit_by_signal(reactor, signum)
            reactor.callFromThread(stop)

        def stop() -> None:
            log.info("SIGHUP received: stopping cleanly (as for SIGTERM); unfinished jobs resume at the next start")
            if reactor.running:
                reactor.stop()

        signal.signal(signal.SIGHUP, hangup)

    @inlineCallbacks
    def stopService(self):
        """
        Listeners and admin first (reverse order of start), so nothing new
        arrives; then jobs in flight get up to C{[service] stop_grace}
        seconds, with the destination queues still delivering what is queued
        (no retry starts any more: a delivery waiting for one ends now); then
        the shared components in the order they were added (destinations
        before the spool, which closes last).  A job the stop cuts off is
        interrupted, never failed: it stays unfinished in the spool and
        resumes at the next start.  Nothing is cancelled: a job still running
        when the spool closes is simply not recorded as finished.
        """
        Service.stopService(self)
        components = self._components
        for child in reversed(list(self)):
            if child not in components:
                yield maybeDeferred(child.stopService)
        # Clients still sending a job finish it (it is stored) within the
        # grace; past it they are reset while sending, so they see a failure.
        started = self.reactor.seconds()
        yield self._receiving_done(self.stop_grace)
        sink = self.sink
        if IDrainable.providedBy(sink):
            sink.begin_stop()  # what fails from now on is interrupted, not failed
        self.destinations.begin_stop()
        if IDrainable.providedBy(sink):
            grace = max(0.0, self.stop_grace - (self.reactor.seconds() - started))
            if not (yield _within(self.reactor, sink.drain(), grace)):
                log.warn("stopped with {n} job(s) still in flight after {s} s; they resume at the next start",
                         n=sink.in_flight(), s=grace)
        for component in components:
            yield maybeDeferred(component.stopService)
        from rawsvc.spool import pg_control

        yield pg_control.close(self)  # the PostgreSQL spool's reader (console, /jobs): its connections
        log.info("rawsvc stopped")

    @inlineCallbacks
    def _receiving_done(self, grace: float):
        """Wait up to C{grace} for clients still sending a job (of the stopped listeners), then reset them."""
        from twisted.internet.task import deferLater

        deadline = self.reactor.seconds() + grace
        while any(t.receiving() for t in self.triggers.values()) and self.reactor.seconds() < deadline:
            yield deferLater(self.reactor, 0.05, lambda: None)
        reset = sum(t.abort_receiving() for t in self.triggers.values())
        if reset:
            log.warn("stopping: reset {n} client(s) still sending a job after {s} s", n=reset, s=grace)

    @property
    def stop_grace(self) -> float:
        return float(self.config.service.get("stop_grace", SHUTDOWN_GRACE))

    def status(self) -> dict[str, Any]:
        return {name: t.status() for name, t in self.triggers.items()}


def _within(clock: Any, d: Deferred, seconds: float) -> Deferred:
    """
    Fires True once C{d} has fired (either way), False after C{seconds};
    C{d} itself is left alone (cancelling jobs is what a clean stop must not do).
    """
    waited: Deferred = Deferred()

    def settle(value: bool) -> None:
        if not waited.called:
            if timer.active():
                timer.cancel()
            waited.callback(value)

    timer = clock.callLater(seconds, settle, False)
    d.addBoth(lambda _: settle(True))
    return waited
