"""
Parts written only from rawsvc/interfaces.py's docstrings work in the real
service: a job sink, a trigger and an action (the store: tests/store_contract.py).

Also the regression tests of the defects found that way: a sink written to
the old IJobSink signature, `[service] log_jobs` with the spool on, and a
plugin trigger that does not provide ITrigger.
"""

from __future__ import annotations

import socket
import sys
import textwrap

import pytest
import pytest_twisted
from twisted.internet.defer import succeed
from twisted.internet.threads import deferToThread
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rawsvc.config import loads
from rawsvc.context import BuildContext
from rawsvc.errors import ConfigError
from rawsvc.interfaces import IJobSink
from support import port_of, recv_all, start_service, wait_until

# -- a sink -----------------------------------------------------------------


@implementer(IJobSink)
class ListSink:
    """IJobSink from its docstring: count, keep the job, end it done; no flow runs."""

    def __init__(self):
        self.jobs = []

    def submit(self, job, flow_name, counters=None):
        if counters is not None:
            counters.jobs_received += 1
        self.jobs.append((flow_name, job.payload.bytes()))
        job.state = "queued"
        job.state = "running"
        job.state = "done"
        if counters is not None:
            counters.jobs_ok += 1
        return succeed(job)


TCP = """
[[trigger]]
name = "t"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "f"

[[flow]]
name = "f"
actions = [ { type = "log", message = "never runs with ListSink" } ]
"""


def _send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


@pytest_twisted.inlineCallbacks
def test_a_sink_written_from_ijobsink_gets_every_job_with_its_counters(tmp_path):
    sink = ListSink()
    assert verifyObject(IJobSink, sink)
    service = start_service(tmp_path, TCP, sink=sink)
    try:
        yield deferToThread(_send, port_of(service, "t"), b"\x00binary\xff job")
        yield wait_until(lambda: sink.jobs)
        assert sink.jobs == [("f", b"\x00binary\xff job")]
        counters = service.triggers["t"].counters
        assert (counters.jobs_received, counters.jobs_ok) == (1, 1)
    finally:
        yield service.stopService()


class OldSignatureSink:
    """Written to the old docstring, submit(job, flow_name): what the triggers call fails."""

    def submit(self, job, flow_name):
        return succeed(job)


def test_a_sink_to_the_old_submit_signature_is_refused_at_build(tmp_path):
    sink = implementer(IJobSink)(OldSignatureSink)()
    with pytest.raises(Exception, match="submit"):
        verifyObject(IJobSink, sink)
    config = loads(f'[service]\nstate_dir = "{tmp_path}/s"\n' + TCP, str(tmp_path / "c.toml"), BuildContext(sink=sink))
    with pytest.raises(TypeError, match="does not provide IJobSink: .*submit"):
        from rawsvc.service import RawService

        RawService(config)


# -- a trigger and an action, as a plugin module ------------------------------------

PLUGIN = '''
"""A UDP trigger (each datagram a job) and an action, written from rawsvc/interfaces.py alone."""
from twisted.application.service import Service
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.errors import ActionError
from rawsvc.interfaces import IAction, IActionType, ITrigger, ITriggerType
from rawsvc.job import Job, Payload
from rawsvc.metrics import TriggerCounters


class _Datagrams(DatagramProtocol):
    def __init__(self, trigger):
        self.trigger = trigger

    def datagramReceived(self, data, addr):
        t = self.trigger
        t.counters.bytes_in += len(data)
        payload = Payload()
        payload.write(data)
        payload.close()
        job = Job(trigger=t.name, payload=payload, peer_host=addr[0], peer_port=addr[1])
        t.sink.submit(job, t.flow, t.counters)


@provider(ITriggerType)
@implementer(ITrigger)
class UdpJobs(Service):
    type_name = "udp-jobs"
    options = o.Schema(
        o.Option("name", str), o.Option("type", str), o.Option("flow", str),
        o.Option("port", int, 0),
    )

    def __init__(self, options, context):
        self.name = options["name"]
        self.flow = options["flow"]
        self.sink = context.sink
        self.reactor = context.reactor
        self.counters = TriggerCounters()
        self.port = None
        self.paused = False
        self.wanted = options["port"]

    @classmethod
    def from_config(cls, options, context):
        return cls(options, context)

    @property
    def listening(self):
        return self.port is not None

    def startService(self):
        super().startService()
        self.port = self.reactor.listenUDP(self.wanted, _Datagrams(self), interface="127.0.0.1")

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None

    def pause(self):
        self.paused = True

    def resume(self):
        self.paused = False

    def status(self):
        return {"name": self.name, "type": self.type_name, "listening": self.listening,
                "paused": self.paused, "counters": self.counters.as_dict()}

    def connection_list(self):
        return []

    def receiving(self):
        return 0

    def abort_receiving(self):
        return 0


@provider(IActionType)
@implementer(IAction)
class Shout:
    type_name = "shout"
    options = o.Schema(o.Option("into", str, "shouted"))

    def __init__(self, into):
        self.into = into

    @classmethod
    def from_config(cls, options, context):
        return cls(options["into"])

    def run(self, job):
        text = job.variables["data"]
        if not text.strip():
            raise ActionError("nothing to shout")
        if text.startswith("crash"):
            raise ValueError("a bug in the plugin")
        job.variables[self.into] = text.upper()


class NotATrigger(Service):
    """Declares ITriggerType but builds an object that is no ITrigger."""
    type_name = "not-a-trigger"
    options = o.Schema(o.Option("name", str), o.Option("type", str), o.Option("flow", str))

    @classmethod
    def from_config(cls, options, context):
        return cls()


NotATrigger = provider(ITriggerType)(NotATrigger)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "contractplugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "contractplugin"
    sys.modules.pop("contractplugin", None)


def _udp_config(tmp_path, out) -> str:
    return textwrap.dedent(f"""
        [[trigger]]
        name = "u"
        type = "contractplugin:UdpJobs"
        flow = "f"

        [[flow]]
        name = "f"
        actions = [
          {{ type = "contractplugin:Shout", into = "loud" }},
          {{ type = "file", folder = "{out}", name = "${{job_id}}.txt", data = "${{loud}}" }},
        ]
    """)


@pytest_twisted.inlineCallbacks
def test_a_trigger_and_an_action_written_from_the_interfaces_run_jobs_end_to_end(tmp_path, plugin):
    out = tmp_path / "out"
    service = start_service(tmp_path, _udp_config(tmp_path, out))
    try:
        port = service.triggers["u"].port.getHost().port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"label one", ("127.0.0.1", port))
            s.sendto(b"   ", ("127.0.0.1", port))  # the action refuses it cleanly
        yield wait_until(lambda: service.triggers["u"].counters.jobs_failed == 1
                            and service.triggers["u"].counters.jobs_ok == 1)
        assert [p.read_bytes() for p in out.iterdir()] == [b"LABEL ONE"]
        failed = [j for j in service.sink.recent() if j.state == "failed"]
        assert [j.error for j in failed] == ["nothing to shout"]
    finally:
        yield service.stopService()


def test_a_plugin_trigger_that_is_no_itrigger_is_a_config_error(tmp_path, plugin):
    text = textwrap.dedent("""
        [[trigger]]
        name = "x"
        type = "contractplugin:NotATrigger"
        flow = "f"

        [[flow]]
        name = "f"
        actions = [ { type = "log", message = "m" } ]
    """)
    with pytest.raises(ConfigError) as e:
        loads(text, str(tmp_path / "c.toml"))
    (line,) = e.value.errors
    prefix = f"{tmp_path / 'c.toml'}: [[trigger]] 'x': type 'not-a-trigger' built a NotATrigger, which does not provide ITrigger: it lacks "
    assert line.startswith(prefix), line
    assert line.endswith("; it is not declared to (add @implementer(ITrigger))"), line
    lacking = line[len(prefix):].split(";")[0].split(", ")
    assert {"flow", "counters", "listening", "pause", "receiving", "abort_receiving"} <= set(lacking)


# -- log_jobs with the spool on -----------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_log_jobs_logs_each_finished_job_also_with_the_spool(tmp_path):
    from twisted.logger import globalLogPublisher

    events = []

    def observe(event):
        if event.get("log_namespace") == "rawsvc.flow":
            events.append(event)

    text = TCP.replace('{ type = "log", message = "never runs with ListSink" }', '{ type = "set", vars = { a = "b" } }')
    config = loads(f'[service]\nstate_dir = "{tmp_path}/s"\nspool = true\nlog_jobs = true\n' + text,
                   str(tmp_path / "c.toml"), BuildContext())
    from rawsvc.service import RawService

    service = RawService(config)
    globalLogPublisher.addObserver(observe)
    service.startService()
    try:
        yield deferToThread(_send, port_of(service, "t"), b"job")
        yield wait_until(lambda: service.triggers["t"].counters.jobs_ok == 1)
        done = [e for e in events if e["log_format"].startswith("job {job_id} done")]
        assert [(e["flow"],) for e in done] == [("f",)]
    finally:
        globalLogPublisher.removeObserver(observe)
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_log_jobs_is_off_by_default_with_the_spool(tmp_path):
    from twisted.logger import globalLogPublisher

    events = []
    text = TCP.replace('{ type = "log", message = "never runs with ListSink" }', '{ type = "set", vars = { a = "b" } }')
    config = loads(f'[service]\nstate_dir = "{tmp_path}/s"\n' + text, str(tmp_path / "c.toml"), BuildContext())
    from rawsvc.service import RawService

    service = RawService(config)
    observe = events.append
    globalLogPublisher.addObserver(observe)
    service.startService()
    try:
        yield deferToThread(_send, port_of(service, "t"), b"job")
        yield wait_until(lambda: service.triggers["t"].counters.jobs_ok == 1)
        assert not [e for e in events if e.get("log_format", "").startswith("job {job_id} done")]
    finally:
        globalLogPublisher.removeObserver(observe)
        yield service.stopService()

