"""
Test helpers for plugin authors (re-exported by L{rawsvc.testing}):

- framers, without I/O: L{run_framer} collects what a framer makes of a
  stream, L{run_framer_every_split} also checks that any TCP split of it
  gives the same;
- a trigger's connections, without sockets: L{load_trigger} builds a
  trigger from its options with a L{Clock} and a L{StubSink}; L{connect}
  opens a connection over a L{StubTransport};
- a real service on loopback: L{start_service} builds and starts one from
  TOML text, L{RunningService.endpoint} is what a client connects to.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from rawsvc.interfaces import IFramer, IJobSink, ITrigger
from rawsvc.states import route
from rawsvc.job import Job
from rawsvc.triggers.framing import HALF_CLOSE, Data, Drop, End, Event, Query, Reply, Start

if TYPE_CHECKING:
    from rawsvc.metrics import TriggerCounters
    from rawsvc.service import RawService
    from rawsvc.triggers.base import ListenerTrigger

# Framers ------------------------------------------------------------------------


@attrs.frozen
class FramedJob:
    """One job a framer ended: its bytes and what its C{End} said."""

    data: bytes
    meta: Mapping[str, str] = attrs.field(factory=dict)
    ack: bytes = b""
    nak: bytes = b""


@attrs.define
class FramerRun:
    """What a framer made of a whole stream (L{run_framer})."""

    #: The jobs it ended, in order (empty messages included).
    jobs: list[FramedJob] = attrs.field(factory=list)
    #: The bytes of its C{Reply} events, joined in order.
    replies: bytes = b""
    #: The values of its C{Query} events.
    queries: list[Any] = attrs.field(factory=list)
    #: Each C{Drop}: the bytes it threw away and its reason.
    dropped: list[tuple[bytes, str]] = attrs.field(factory=list)
    #: The C{meta} of each C{Start}.
    starts: list[Mapping[str, str]] = attrs.field(factory=list)
    #: Bytes of a job the end of input left unterminated (C{partial} decides).
    pending: bytes = b""

    @property
    def payloads(self) -> list[bytes]:
        """The jobs' bytes."""
        return [j.data for j in self.jobs]


def run_framer(framer: IFramer, chunks: Iterable[bytes], how: str = HALF_CLOSE) -> FramerRun:
    """
    Feed C{chunks} to C{framer}, end the input with C{how}, and collect the
    events as the connection would take them.  An C{End} at the end of
    input with no bytes before it is no job (as on a real connection).
    """
    run = FramerRun()
    current: list[bytes] = []
    replies: list[bytes] = []

    def take(events: Iterable[Event], at_close: bool) -> None:
        nonlocal current
        for ev in events:
            if isinstance(ev, Data):
                current.append(ev.data)
            elif isinstance(ev, End):
                if current or not at_close:
                    run.jobs.append(FramedJob(b"".join(current), dict(ev.meta), ev.ack, ev.nak))
                current = []
            elif isinstance(ev, Drop):
                run.dropped.append((b"".join(current), ev.reason))
                current = []
            elif isinstance(ev, Reply):
                replies.append(ev.data)
            elif isinstance(ev, Query):
                run.queries.append(ev.value)
            elif isinstance(ev, Start):
                run.starts.append(dict(ev.meta))
            else:
                raise AssertionError(f"the framer returned {ev!r}, which is not a framing event")

    for chunk in chunks:
        if chunk:
            take(framer.feed(chunk), False)
    take(framer.end_of_input(how), True)
    run.pending = b"".join(current)
    run.replies = b"".join(replies)
    return run


def run_framer_every_split(make_framer: Callable[[], IFramer], data: bytes, how: str = HALF_CLOSE) -> FramerRun:
    """
    L{run_framer} on C{data} whole, byte by byte, and cut in two at every
    point; fails with an C{AssertionError} naming the first split that gives
    other events (TCP may split a stream anywhere).  Returns the whole run.
    """
    whole = run_framer(make_framer(), [data], how)
    splits: list[tuple[str, list[bytes]]] = [("byte by byte", [data[i : i + 1] for i in range(len(data))])]
    splits += [(f"cut at {i}", [data[:i], data[i:]]) for i in range(1, len(data))]
    for name, chunks in splits:
        got = run_framer(make_framer(), chunks, how)
        if got != whole:
            raise AssertionError(f"fed {name}, the framer gave {got!r}; whole, {whole!r}")
    return whole


# A trigger's connections, without sockets -----------------------------------------


@attrs.define(eq=False)
class HeldJob:
    """A job a L{StubSink} holds: its flow and the Deferred the trigger waits on."""

    job: Job
    flow: str
    deferred: Deferred


@implementer(IJobSink)
class StubSink:
    """
    A job sink that runs no flow: it keeps each job (C{jobs}) until the
    test L{finish}es it, so a test decides when and how each flow ends.
    """

    def __init__(self) -> None:
        self.jobs: list[HeldJob] = []

    def submit(self, job: Job, flow_name: str, counters: TriggerCounters | None = None) -> Deferred:
        d: Deferred = Deferred()
        self.jobs.append(HeldJob(job, flow_name, d))
        if counters is not None:
            counters.jobs_received += 1
        return d

    @property
    def payloads(self) -> list[bytes]:
        """The bytes of every job submitted so far."""
        return [h.job.payload.bytes() for h in self.jobs]

    def finish(self, index: int = 0, state: str = "done", reply: bytes | None = None, error: str | None = None) -> Job:
        """
        End job C{index}'s flow: with C{reply} written as a C{reply} action
        would, then C{state} (done, failed, refused ...) and C{error}.
        """
        held = self.jobs[index]
        job = held.job
        if reply is not None and job.reply_channel is not None:
            job.reply_channel.reply(reply).addErrback(lambda f: None)
        for step in route(job.state, state):  # as a real sink moves it
            job.state = step
        if error is not None:
            job.error = error
        held.deferred.callback(job)
        return job


class StubTransport(StringTransport):
    """A StringTransport that also records a half-close (C{write_closed}) and a reset (C{aborted})."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")


def load_trigger(trigger_type: str, state_dir: str, clock: Clock | None = None, **options: Any) -> ListenerTrigger:
    """
    A trigger of C{trigger_type} (a registered type or a C{module:Name}
    path) built from C{options} (the keys of its C{[[trigger]]} table;
    C{name}, C{listen} and C{flow} have defaults) through the real config
    loader, so its options are validated as in production.  It runs on
    C{clock} (a new L{Clock} when None; the trigger's C{reactor}) and hands
    its jobs to a L{StubSink} (C{trigger.sink}).  It is not started:
    L{connect} clients to it.
    """
    from rawsvc.config import loads
    from rawsvc.context import BuildContext

    table = {"name": "t", "type": trigger_type, "listen": "tcp:0:interface=127.0.0.1", "flow": "f", **options}
    text = (
        f"[service]\nstate_dir = {json.dumps(str(state_dir))}\nspool = false\n[[trigger]]\n"
        + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items())
        + f'[[flow]]\nname = {json.dumps(table["flow"])}\nactions = [ {{ type = "log" }} ]\n'
    )
    config = loads(text, "<memory>", BuildContext(reactor=clock if clock is not None else Clock()))
    trigger = cast("ListenerTrigger", config.triggers[table["name"]])  # connect() needs build_protocol
    trigger.sink = StubSink()
    return trigger


def connect(trigger: ListenerTrigger, host: str = "127.0.0.1", port: int = 40000) -> tuple[Any, StubTransport]:
    """A new connection of C{trigger} from C{host:port}: its protocol and its L{StubTransport}."""
    proto = trigger.build_protocol()
    transport = StubTransport(peerAddress=IPv4Address("TCP", host, port))
    proto.makeConnection(transport)
    return proto, transport


# A real service on loopback ---------------------------------------------------------


@attrs.define(eq=False)
class RunningService:
    """A started L{rawsvc.service.RawService}; L{stop} it at the end of the test."""

    service: RawService

    def trigger(self, name: str) -> ITrigger:
        return self.service.triggers[name]

    def port(self, name: str) -> int:
        """The port trigger C{name} listens on (configs use C{tcp:0:interface=127.0.0.1})."""
        return int(cast("ListenerTrigger", self.trigger(name)).port.getHost().port)

    def endpoint(self, name: str) -> str:
        """A client endpoint string for trigger C{name}, for L{rawsvc.testing.send_job}."""
        return f"tcp:127.0.0.1:{self.port(name)}"

    def stop(self) -> Deferred:
        d = self.service.stopService()
        return d if isinstance(d, Deferred) else succeed(None)


def start_service(toml: str, state_dir: str, service_options: Mapping[str, Any] | None = None,
                  reactor: Any = None) -> RunningService:
    """
    Build and start a real service from C{toml} (its triggers, flows ...;
    no C{[service]} table: C{state_dir} and C{service_options} make it, the
    spool off unless they say otherwise).  Listen on
    C{tcp:0:interface=127.0.0.1} and ask L{RunningService.port}.
    """
    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from rawsvc.service import RawService

    service_table = {"state_dir": str(state_dir), "spool": False, **(service_options or {})}
    text = "[service]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in service_table.items()) + toml
    config = loads(text, "<memory>", BuildContext() if reactor is None else BuildContext(reactor=reactor))
    service = RawService(config)
    service.startService()
    return RunningService(service)
