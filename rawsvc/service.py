"""
RawService: the service tree built from a validated config.

One child service per trigger, the admin listeners, and any shared
component that is itself a service (destination queues, the spool).  On
stop, listeners close first, then jobs in flight are given time to finish.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.logger import Logger

from rawsvc.client.destinations import DestinationPool
from rawsvc.compat import exit_by_signal
from rawsvc.config import Config
from rawsvc.dispatch import Dispatcher
from rawsvc.errors import ListenError
from rawsvc.plugins import load_dotted
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

    def __init__(self, config: Config, sink: Any = None) -> None:
        super().__init__()
        self.config = config
        self.context = config.context
        self.reactor = config.context.reactor
        self.flows = config.flows
        self.triggers = config.triggers
        os.makedirs(self.context.state_dir, mode=0o700, exist_ok=True)
        if sink is None:
            sink = self._make_sink()
        self.sink = sink
        self.context.components["sink"] = sink
        self.context.components["service"] = self
        pool = self.context.components.get("destinations")
        if isinstance(pool, DestinationPool) and hasattr(sink, "delivery_waiting"):
            pool.watchers.append(sink)  # a delivery waiting to retry shows on its job
        for trigger in self.triggers.values():
            trigger.sink = sink
            trigger.setServiceParent(self)
        for section, options in config.admin.items():
            factory = load_dotted(ADMIN_FACTORIES[section])
            factory(options, self).setServiceParent(self)
        self._add_component_services()
        # One owner per state_dir: taken first at start, released last at stop.
        self.state_lock = StateDirLock(self.context.state_dir, spool=bool(self.config.service.get("spool", True)))
        self.state_lock.setServiceParent(self)
        self._components.append(self.state_lock)

    def _make_sink(self) -> Any:
        factory = self.context.components.get("sink_factory")
        if factory is not None:
            return factory(self)
        if self.config.service.get("spool", True):
            from rawsvc.spool.sink import SpoolSink

            return SpoolSink.for_service(self)
        return Dispatcher(self.flows, self.config.service.get("history", 1000))

    def _add_component_services(self) -> None:
        self._components: list[Any] = []
        for name, component in list(self.context.components.items()):
            if name in ("sink", "service"):
                continue
            if IService.providedBy(component) and component.parent is None:
                component.setServiceParent(self)
                self._components.append(component)

    @property
    def jobs(self) -> Any:
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
        components = getattr(self, "_components", [])
        for child in reversed(list(self)):
            if child not in components:
                yield maybeDeferred(child.stopService)
        # Clients still sending a job finish it (it is stored) within the
        # grace; past it they are reset while sending, so they see a failure.
        started = self.reactor.seconds()
        yield self._receiving_done(self.stop_grace)
        if hasattr(self.sink, "stopping"):
            self.sink.stopping = True  # what fails from now on is interrupted, not failed
        pool = self.context.components.get("destinations")
        if isinstance(pool, DestinationPool):
            pool.begin_stop()
        drain = getattr(self.sink, "drain", None)
        if drain is not None:
            grace = max(0.0, self.stop_grace - (self.reactor.seconds() - started))
            if not (yield _within(self.reactor, drain(), grace)):
                log.warn("stopped with {n} job(s) still in flight after {s} s; they resume at the next start",
                         n=len(getattr(self.sink, "running", ())), s=grace)
        for component in components:
            yield maybeDeferred(component.stopService)
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
