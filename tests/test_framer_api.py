"""
The protocol plugin API (rawsvc.triggers.api): a framer and a policy make a
trigger type, and the framed connection gives it metadata on the job,
acks and replies in order, queries, drops, end-of-input rules, settings
read once, and hooks in a fixed order.  Driven without sockets
(rawsvc.testing.load_trigger/connect: StringTransport and task.Clock).
"""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rawsvc import options as o
from rawsvc.errors import ConfigError
from rawsvc.interfaces import IAnnouncingFramer, IConnectionPolicy, IFramer, ITrigger, ITriggerType
from rawsvc.testing import connect, load_trigger
from rawsvc.triggers.api import ConnectionPolicy, Data, Drop, End, Query, Reply, framed_trigger
from rawsvc.triggers.framing import DelimiterFramer, LengthFramer, StreamFramer
from rawsvc.triggers.printer_framing import PrinterFramer
from rawsvc.triggers.pjl import UEL


@implementer(IFramer)
class TaggedLines:
    """
    A test protocol: lines C{TAG:payload}; C{PING} answers C{PONG}, C{?} asks
    the trigger, C{BAD...} is dropped; a job is acked C{+}, nacked C{-}.
    Bytes stream through (only a line's start is held back), so it is
    honest about large jobs.
    """

    def __init__(self, ack: bytes = b"+") -> None:
        self.ack = ack
        self.head = b""  # the line so far, until its ':' (or its end)
        self.tag: str | None = None

    def feed(self, data):
        events = []
        while data:
            if self.tag is None:
                nl, colon = data.find(b"\n"), data.find(b":")
                if colon >= 0 and (nl < 0 or colon < nl):
                    self.tag, data = (self.head + data[:colon]).decode(), data[colon + 1 :]
                    self.head = b""
                    continue
                if nl < 0:
                    self.head += data
                    return events
                line, data, self.head = self.head + data[:nl], data[nl + 1 :], b""
                if line == b"PING":
                    events.append(Reply(b"PONG\n"))
                elif line == b"?":
                    events.append(Query("status"))
                elif line.startswith(b"BAD"):
                    events += [Data(line), Drop("a bad line")]
                continue
            nl = data.find(b"\n")
            if nl < 0:
                events.append(Data(data))
                return events
            if nl:
                events.append(Data(data[:nl]))
            events.append(End({"tag": self.tag, "job_id": "not-a-job-id"}, ack=self.ack, nak=b"-"))
            self.tag, data = None, data[nl + 1 :]
        return events

    def end_of_input(self, how):
        return [End({"tag": self.tag, "how": how}, ack=self.ack, nak=b"-")] if self.tag is not None else []


class RecordingPolicy(ConnectionPolicy):
    """Records every hook call in the trigger's C{calls}; answers the C{status} query."""

    def _note(self, *what):
        self.conn.trigger.calls.append(what)

    def accepted(self):
        self._note("accepted")

    def query(self, value):
        self._note("query", value)
        return b"STATUS ok\n"

    def job_began(self, meta):
        self._note("began", dict(meta))

    def job_abandoned(self):
        self._note("abandoned")

    def job_submitted(self, job):
        self._note("submitted", job.payload.bytes())

    def job_finished(self, job):
        self._note("finished", job.state)

    def done(self):
        self._note("done")


TaggedTrigger = framed_trigger(
    "tagged-lines",
    o.Schema(o.Option("ack", str, "+", doc="the acknowledgement of a job")),
    lambda options: TaggedLines(options["ack"].encode()),
    make_policy=RecordingPolicy,
)

PLUGIN = "test_framer_api:TaggedTrigger"


def tagged(tmp_path, **keys):
    trigger = load_trigger(PLUGIN, tmp_path, **keys)
    trigger.calls = []
    return trigger


def closed(proto, clean=True):
    proto.connectionLost(Failure(ConnectionDone() if clean else ConnectionLost("reset by peer")))


# The contract ------------------------------------------------------------------------


@pytest.mark.parametrize("framer", [StreamFramer(), DelimiterFramer(b"\n"), LengthFramer(3), TaggedLines()])
def test_the_built_in_framers_and_a_plugin_framer_provide_iframer(framer):
    assert verifyObject(IFramer, framer)


def test_the_printer_framer_announces_where_its_jobs_begin():
    assert verifyObject(IAnnouncingFramer, PrinterFramer())
    assert not IAnnouncingFramer.providedBy(DelimiterFramer(b"\n"))


def test_framed_trigger_makes_a_trigger_type_the_config_builds(tmp_path):
    assert verifyObject(ITriggerType, TaggedTrigger)
    trigger = tagged(tmp_path)
    assert verifyObject(ITrigger, trigger) and trigger.type_name == "tagged-lines"
    proto, _ = connect(trigger)
    assert verifyObject(IConnectionPolicy, proto.policy)


def test_a_plugin_trigger_gets_the_listener_options_and_its_own_validated(tmp_path):
    with pytest.raises(ConfigError) as e:
        tagged(tmp_path, ack=1, max_job_bytes=-1, nosuch=True)
    text = str(e.value)
    assert "key 'ack': must be a string" in text
    assert "key 'max_job_bytes': must be 0 (no limit) or more" in text
    assert "key 'nosuch': unknown key" in text


def test_a_framer_factory_that_rejects_its_options_is_a_config_error(tmp_path):
    def picky(options):
        raise ValueError("ack must be one byte")

    globals()["PickyTrigger"] = framed_trigger("picky", o.Schema(), picky)
    try:
        with pytest.raises(ConfigError, match="ack must be one byte"):
            load_trigger("test_framer_api:PickyTrigger", tmp_path)
    finally:
        del globals()["PickyTrigger"]


# Metadata, acks, replies, queries, drops ----------------------------------------------


def test_end_metadata_lands_on_the_job_and_its_variables_and_builtins_win(tmp_path):
    trigger = tagged(tmp_path)
    proto, _ = connect(trigger)
    proto.dataReceived(b"ORDER:42 widgets\n")
    job = trigger.sink.jobs[0].job
    assert job.payload.bytes() == b"42 widgets"
    assert dict(job.meta) == {"tag": "ORDER", "job_id": "not-a-job-id"}
    assert job.variables["tag"] == "ORDER"
    assert job.variables["job_id"] == job.job_id != "not-a-job-id"
    with pytest.raises(TypeError):
        job.meta["tag"] = "changed"  # type: ignore[index]


def test_acks_go_out_in_job_order_once_each_flow_has_ended(tmp_path):
    trigger = tagged(tmp_path)
    proto, transport = connect(trigger)
    proto.dataReceived(b"A:one\nB:two\nC:three\n")
    sink = trigger.sink
    sink.finish(1)
    assert transport.value() == b""  # job one still runs
    sink.finish(0, reply=b"[one]")
    assert transport.value() == b"[one]++"
    sink.finish(2, state="failed", error="no")
    assert transport.value() == b"[one]++-"


def test_an_interrupted_job_is_neither_acked_nor_nacked(tmp_path):
    trigger = tagged(tmp_path)
    proto, transport = connect(trigger)
    proto.dataReceived(b"A:one\n")
    trigger.sink.finish(0, state="interrupted")
    assert transport.value() == b""


def test_a_refused_job_gets_its_nak_then_the_refusal(tmp_path):
    trigger = tagged(tmp_path, refusal="REFUSED ${reason}\n")
    proto, transport = connect(trigger)
    proto.dataReceived(b"A:one\n")
    trigger.sink.finish(0, state="refused", error="spool unavailable")
    assert transport.value() == b"-REFUSED spool unavailable\n"
    assert transport.write_closed


def test_a_job_too_large_is_refused_with_its_nak_in_order(tmp_path):
    trigger = tagged(tmp_path, max_job_bytes=4)
    proto, transport = connect(trigger)
    proto.dataReceived(b"A:ok\nB:far too long\n")
    assert trigger.sink.payloads == [b"ok"] and trigger.counters.jobs_refused == 1
    assert transport.value() == b""  # the nak waits behind job one's ack
    trigger.sink.finish(0)
    assert transport.value() == b"+-"


def test_reply_events_wait_for_the_replies_of_earlier_jobs(tmp_path):
    trigger = tagged(tmp_path)
    proto, transport = connect(trigger)
    proto.dataReceived(b"A:one\nPING\n")
    assert transport.value() == b""
    trigger.sink.finish(0)
    assert transport.value() == b"+PONG\n"


def test_a_query_is_answered_at_once_by_the_policy(tmp_path):
    trigger = tagged(tmp_path)
    proto, transport = connect(trigger)
    proto.dataReceived(b"A:one\n?\n")
    assert transport.value() == b"STATUS ok\n"  # while job one still runs
    assert ("query", "status") in trigger.calls


def test_a_drop_throws_the_bytes_away_without_a_job(tmp_path):
    trigger = tagged(tmp_path)
    proto, _ = connect(trigger)
    proto.dataReceived(b"BAD line\nA:good\n")
    assert trigger.sink.payloads == [b"good"]
    assert trigger.calls[:3] == [("accepted",), ("began", {}), ("abandoned",)]


# The end of input -------------------------------------------------------------------


def test_an_end_at_the_end_of_input_ends_the_job_with_its_metadata(tmp_path):
    trigger = tagged(tmp_path)
    proto, _ = connect(trigger)
    proto.dataReceived(b"LAST:no newline")
    proto.readConnectionLost()
    [held] = trigger.sink.jobs
    assert held.job.payload.bytes() == b"no newline"
    assert dict(held.job.meta) == {"tag": "LAST", "how": "half-close"}


def test_a_reset_discards_a_job_the_end_of_input_would_end(tmp_path):
    trigger = tagged(tmp_path)
    proto, _ = connect(trigger)
    proto.dataReceived(b"LAST:cut off")
    closed(proto, clean=False)
    assert trigger.sink.jobs == []
    assert ("abandoned",) in trigger.calls


def test_on_reset_process_keeps_it(tmp_path):
    trigger = tagged(tmp_path, on_reset="process")
    proto, _ = connect(trigger)
    proto.dataReceived(b"LAST:cut off")
    closed(proto, clean=False)
    assert trigger.sink.payloads == [b"cut off"]
    assert trigger.sink.jobs[0].job.meta["how"].startswith("lost (")


@pytest.mark.parametrize("partial, jobs", [("process", [b"tail"]), ("discard", [])])
def test_bytes_the_framer_did_not_end_follow_the_partial_option(tmp_path, partial, jobs):
    trigger = load_trigger("tcp", tmp_path, execute_on="delimiter", delimiter="\n", partial=partial)
    proto, _ = connect(trigger)
    proto.dataReceived(b"tail")
    proto.readConnectionLost()
    assert trigger.sink.payloads == jobs


# Hooks, settings, failures ----------------------------------------------------------


def test_the_hooks_come_in_order_and_done_once_the_last_job_finished(tmp_path):
    trigger = tagged(tmp_path)
    proto, _ = connect(trigger)
    proto.dataReceived(b"A:x")
    proto.dataReceived(b"y\n")
    closed(proto)
    assert ("done",) not in trigger.calls  # its job still runs
    trigger.sink.finish(0)
    assert trigger.calls == [("accepted",), ("began", {}), ("submitted", b"xy"), ("finished", "done"), ("done",)]


def test_an_announcing_framer_s_job_begins_at_its_start_not_its_first_byte(tmp_path):
    trigger = load_trigger("printer", tmp_path)
    proto, _ = connect(trigger)
    proto.dataReceived(UEL + b'@PJL JOB NAME="label 7"\r\n')
    assert trigger.state.state == "idle" and not proto.began  # PJL only, so far: maybe a status poll
    proto.dataReceived(b"^XA^FDhello^FS^XZ")
    assert trigger.state.state == "receiving" and proto.began
    proto.dataReceived(UEL + b"@PJL EOJ\r\n" + UEL)
    job = trigger.sink.jobs[0].job
    assert dict(job.meta) == {"pjl_job_name": "label 7", "pjl_language": "", "eoj": "uel"}
    assert job.variables["pjl_job_name"] == "label 7" and job.variables["printer"] == "t"
    assert trigger.state.state == "processing"


def test_settings_are_read_once_when_the_trigger_is_built(tmp_path):
    trigger = tagged(tmp_path, max_job_bytes=4)
    trigger.opts["max_job_bytes"] = 1000  # too late: the connection reads its settings
    proto, _ = connect(trigger)
    proto.dataReceived(b"A:too long\n")
    assert trigger.sink.jobs == [] and trigger.counters.jobs_refused == 1
    import attrs

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        trigger.settings.max_job_bytes = 1000


def test_a_policy_hook_that_fails_is_logged_and_the_job_still_reaches_the_sink(tmp_path):
    from twisted.logger import globalLogPublisher

    seen = []
    globalLogPublisher.addObserver(seen.append)
    trigger = tagged(tmp_path)
    trigger.calls = None  # every hook now fails (None has no append)
    try:
        proto, _ = connect(trigger)
        proto.dataReceived(b"A:job\n")
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert trigger.sink.payloads == [b"job"]
    assert any(e.get("hook") == "job_submitted" and e.get("log_failure") for e in seen)


@implementer(IFramer)
class Broken:
    def feed(self, data):
        raise RuntimeError("framer bug")

    def end_of_input(self, how):
        return []


def test_a_framer_that_raises_resets_the_connection_and_makes_no_job(tmp_path):
    from twisted.logger import globalLogPublisher

    seen = []
    globalLogPublisher.addObserver(seen.append)
    globals()["BrokenTrigger"] = framed_trigger("broken", o.Schema(), lambda options: Broken())
    try:
        trigger = load_trigger("test_framer_api:BrokenTrigger", tmp_path)
        proto, transport = connect(trigger)
        proto.dataReceived(b"anything")
    finally:
        del globals()["BrokenTrigger"]
        globalLogPublisher.removeObserver(seen.append)
    assert transport.aborted and trigger.sink.jobs == []
    assert any(e.get("log_failure") and "framer failed" in e.get("log_format", "") for e in seen)


def test_hold_keeps_the_bytes_and_serve_frames_them_in_turn(tmp_path):
    trigger = tagged(tmp_path)
    proto, _ = connect(trigger)
    proto.hold()
    proto.dataReceived(b"A:waited\n")
    proto.readConnectionLost()
    assert trigger.sink.jobs == [] and not proto.evictable()
    proto.serve()
    assert trigger.sink.payloads == [b"waited"] and proto.input_done



# The README's plugin section runs as written ------------------------------------------


def _readme_plugin_code() -> dict:
    import os
    import re

    from conftest import ROOT

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("\n## Plugins\n") : text.index("\n## Benchmarks\n")]
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", section, re.S):
        exec(compile(block, "README.md", "exec"), namespace)
    return namespace


def test_the_readme_framer_frames_any_split_and_acks_each_line(tmp_path):
    from rawsvc.testing import run_framer_every_split

    code = _readme_plugin_code()
    run = run_framer_every_split(code["PlusLines"], b"one\n\ntwo\nlast", how="close")
    assert run.payloads == [b"one", b"", b"two"] and run.pending == b"last"
    assert {(j.ack, j.nak) for j in run.jobs} == {(b"+\n", b"-\n")}
    assert verifyObject(ITriggerType, code["PlusLinesTrigger"])


def test_the_readme_action_fails_cleanly_or_crashes_as_it_says():
    from rawsvc.errors import ActionError
    from rawsvc.job import Job, Payload

    code = _readme_plugin_code()
    lookup = code["Lookup"]
    job = Job("t", payload=Payload(b"W1\n"))
    lookup(True).run(job)
    assert job.variables["item"] == "widget"
    with pytest.raises(ActionError, match="unknown item code 'X9'"):
        lookup(True).run(Job("t", payload=Payload(b"X9")))
    with pytest.raises(KeyError):
        lookup(False).run(Job("t", payload=Payload(b"X9")))
