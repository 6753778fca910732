"""The flow engine (rawsvc.flow): ordered asynchronous actions, failures, on_error."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rawsvc.context import BuildContext
from rawsvc.errors import ActionError
from rawsvc.flow import Flow, describe_failure, run_job
from rawsvc.interfaces import IAction, IActionType
from rawsvc.job import Job, Payload
from rawsvc.template import Template


@implementer(IAction)
class Record:
    """Appends its tag to ${trail}; optionally returns a Deferred or fails."""

    type_name = "record"

    def __init__(self, tag: str, result=None, error: Exception | None = None) -> None:
        self.tag = tag
        self.result = result
        self.error = error
        self.seen: list[Job] = []

    def run(self, job):
        self.seen.append(job)
        trail = job.variables.get("trail", "")
        job.variables["trail"] = trail + self.tag
        if self.error is not None:
            raise self.error
        return self.result


@implementer(IAction)
class Later:
    """An action whose Deferred the test fires."""

    type_name = "later"

    def __init__(self) -> None:
        self.pending: list[Deferred] = []

    def run(self, job):
        d = Deferred()
        self.pending.append(d)
        return d


def test_test_actions_provide_iaction():
    assert verifyObject(IAction, Record("a"))
    assert verifyObject(IAction, Later())


@pytest.mark.parametrize("type_name", ["log", "set", "file", "parse"])
def test_builtin_action_types_provide_iactiontype_and_build_iactions(type_name, tmp_path):
    from rawsvc.plugins import find_action_type

    action_type = find_action_type(type_name)
    assert verifyObject(IActionType, action_type)
    table = {
        "log": {},
        "set": {"vars": {"a": "b"}},
        "file": {"folder": str(tmp_path)},
        "parse": {"regex": "(?P<a>.)"},
    }[type_name]
    values, issues = action_type.options.validate(table)
    assert issues == []
    assert verifyObject(IAction, action_type.from_config(values, BuildContext()))


def test_actions_run_in_order():
    flow = Flow("f", [Record("a"), Record("b"), Record("c")])
    job = Job("t")
    result = run_job(flow, job)
    assert result.result is job  # all synchronous: already fired
    assert job.state == "done"
    assert job.variables["trail"] == "abc"
    assert job.error is None
    assert job.finished_at is not None


def test_run_job_is_flow_run():
    job = Job("t")
    d = Flow("f", [Record("a")]).run(job)
    assert d.result is job and job.variables["trail"] == "a"


def test_run_fires_with_the_job():
    job = Job("t")
    got = []
    run_job(Flow("f", [Record("a")]), job).addCallback(got.append)
    assert got == [job]


def test_action_may_return_a_plain_value_or_a_deferred():
    job = Job("t")
    run_job(Flow("f", [Record("a", result=42), Record("b", result=succeed("x"))]), job)
    assert job.state == "done" and job.variables["trail"] == "ab"


def test_next_action_waits_for_the_deferred():
    later = Later()
    after = Record("z")
    job = Job("t")
    d = run_job(Flow("f", [later, after]), job)
    assert not d.called
    assert after.seen == []
    assert job.state == "running"
    later.pending[0].callback(None)
    assert after.seen == [job]
    assert d.called and job.state == "done"


def test_a_flow_that_waits_twice_ends_with_its_job_once_both_fired():
    first, second = Later(), Later()
    after = Record("z")
    job = Job("t")
    d = run_job(Flow("f", [first, second, after]), job)
    first.pending[0].callback(None)
    assert after.seen == [] and job.state == "running"
    second.pending[0].callback(None)
    assert after.seen == [job]
    assert d.result is job and job.state == "done"


def test_a_deferred_that_fails_after_a_wait_fails_the_job_not_the_flow():
    first, second = Later(), Later()
    job = Job("t")
    d = run_job(Flow("f", [first, second]), job)
    first.pending[0].callback(None)
    second.pending[0].errback(ActionError("gone"))
    assert d.result is job and job.state == "failed" and job.error == "gone"


def test_failing_action_stops_the_flow():
    after = Record("z")
    job = Job("t")
    run_job(Flow("f", [Record("a", error=ActionError("printer on fire")), after]), job)
    assert after.seen == []


def test_failing_action_marks_the_job_failed_and_sets_error():
    job = Job("t")
    d = run_job(Flow("f", [Record("a", error=ActionError("printer on fire"))]), job)
    assert d.result is job  # the Deferred does not fail
    assert job.state == "failed"
    assert job.error == "printer on fire"
    assert job.variables["error"] == "printer on fire"
    assert job.variables["failed_action"] == "record"


def test_failing_deferred_fails_the_action():
    job = Job("t")
    action = Record("a", result=fail(ActionError("late failure")))
    run_job(Flow("f", [action, Record("z")]), job)
    assert job.state == "failed" and job.error == "late failure"
    assert job.variables["trail"] == "a"


def test_unknown_template_variable_fails_the_action_naming_it():
    from rawsvc.actions.log import LogAction

    job = Job("t")
    run_job(Flow("f", [LogAction(Template("x ${nope}"))]), job)
    assert job.state == "failed"
    assert job.error == "unknown variable ${nope}"


def test_unencodable_text_fails_the_action_with_a_clear_error():
    from rawsvc.actions.file import FileAction

    job = Job("t")
    job.variables["x"] = "snowman ☃"
    action = FileAction("/nonexistent-never-written", Template("a"), Template("${x}"), "ascii")
    run_job(Flow("f", [action]), job)
    assert job.state == "failed"
    assert job.error == "cannot encode '☃' at position 8 as ascii"


def test_unexpected_exception_fails_the_job_with_its_type(caplog_twisted):
    job = Job("t")
    run_job(Flow("f", [Record("a", error=ZeroDivisionError("division by zero"))]), job)
    assert job.state == "failed"
    assert job.error == "ZeroDivisionError: division by zero"
    assert any("crashed" in e for e in caplog_twisted)


def test_on_error_runs_after_a_failure_and_sees_error():
    handler = Record("h")
    job = Job("t")
    run_job(Flow("f", [Record("a", error=ActionError("boom"))], on_error=[handler]), job)
    assert handler.seen == [job]
    assert job.variables["trail"] == "ah"
    assert Template("ERR ${error}").render_text(job.variables) == "ERR boom"


def test_on_error_actions_run_in_order():
    job = Job("t")
    run_job(Flow("f", [Record("a", error=ActionError("x"))], on_error=[Record("1"), Record("2")]), job)
    assert job.variables["trail"] == "a12"


def test_on_error_does_not_run_when_the_flow_succeeds():
    handler = Record("h")
    run_job(Flow("f", [Record("a")], on_error=[handler]), Job("t"))
    assert handler.seen == []


def test_failing_on_error_action_does_not_stop_the_others(caplog_twisted):
    job = Job("t")
    d = run_job(
        Flow("f", [Record("a", error=ActionError("first"))],
             on_error=[Record("1", error=ActionError("second")), Record("2")]),
        job,
    )
    assert d.result is job
    assert job.variables["trail"] == "a12"
    assert job.state == "failed" and job.error == "first"
    assert any("second" in e for e in caplog_twisted)


def test_on_error_waits_for_deferreds():
    later = Later()
    after = Record("2")
    job = Job("t")
    d = run_job(Flow("f", [Record("a", error=ActionError("x"))], on_error=[later, after]), job)
    assert not d.called and after.seen == []
    later.pending[0].callback(None)
    assert d.called and after.seen == [job]


def test_a_slow_action_does_not_stall_other_jobs():
    slow = Later()
    gate = {"n": 0}

    @implementer(IAction)
    class FirstSlowThenFast:
        type_name = "maybe-slow"

        def run(self, job):
            gate["n"] += 1
            return slow.run(job) if gate["n"] == 1 else None

    flow = Flow("f", [FirstSlowThenFast(), Record("done")])
    first, second = Job("t"), Job("t")
    d1 = run_job(flow, first)
    d2 = run_job(flow, second)
    assert not d1.called
    assert d2.called and second.state == "done"
    slow.pending[0].callback(None)
    assert d1.called and first.state == "done"


@pytest_twisted.inlineCallbacks
def test_a_slow_action_does_not_stall_other_jobs_on_the_reactor():
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    @implementer(IAction)
    class Sleep:
        type_name = "sleep"

        def __init__(self, seconds):
            self.seconds = seconds

        def run(self, job):
            return deferLater(reactor, self.seconds, lambda: None)

    order = []
    slow = run_job(Flow("slow", [Sleep(0.3)]), Job("t")).addCallback(lambda j: order.append("slow"))
    fast = run_job(Flow("fast", [Sleep(0.01)]), Job("t")).addCallback(lambda j: order.append("fast"))
    yield fast
    assert order == ["fast"]
    yield slow
    assert order == ["fast", "slow"]


def test_log_action_emits_the_rendered_message_at_its_level(caplog_twisted_events):
    from twisted.logger import LogLevel

    from rawsvc.actions.log import LogAction

    job = Job("orders", payload=Payload(b"abc"), peer_host="10.1.2.3")
    run_job(Flow("f", [LogAction(Template("got ${size} bytes from ${peer_host}, $$0"), "warn")]), job)
    [event] = [e for e in caplog_twisted_events if e.get("log_namespace") == "rawsvc.action.log"]
    assert event["message"] == "got 3 bytes from 10.1.2.3, $0"
    assert event["log_level"] is LogLevel.warn
    assert event["job_id"] == job.job_id and event["trigger"] == "orders"


def test_log_action_default_message_renders_for_any_job(caplog_twisted_events):
    from rawsvc.actions.log import LogAction

    values, issues = LogAction.options.validate({})
    job = Job("t", payload=Payload(b"xy"), peer_host="h")
    run_job(Flow("f", [LogAction.from_config(values, BuildContext())]), job)
    assert job.state == "done"
    assert any(e.get("message") == f"job {job.job_id} from h: 2 bytes" for e in caplog_twisted_events)


def test_set_action_sets_variables_from_templates():
    from rawsvc.actions.log import SetAction

    job = Job("t")
    job.variables["a"] = "1"
    run_job(Flow("f", [SetAction({"b": Template("${a}-x"), "c": Template("$$")})]), job)
    assert (job.variables["b"], job.variables["c"]) == ("1-x", "$")


def test_run_can_start_at_a_later_action():
    job = Job("t")
    Flow("f", [Record("a"), Record("b"), Record("c")]).run(job, start_at=1)
    assert job.variables["trail"] == "bc" and job.state == "done"


def test_describe_failure_uses_the_action_error_message():
    from twisted.python.failure import Failure

    assert describe_failure(Failure(ActionError("plain words"))) == "plain words"
    assert describe_failure(Failure(KeyError())) == "KeyError"


def test_flow_runs_a_real_payload_through_parse_and_set():
    from rawsvc.actions.log import SetAction
    from rawsvc.actions.parse import ParseAction
    import re

    parse = ParseAction("regex", Template("${data}"), pattern=re.compile(r"^(?P<sku>\w+);(?P<qty>\d+)$"))
    setter = SetAction({"label": Template("^FD${sku}^PQ${qty}")})
    job = Job("t", payload=Payload(b"ABC;3"))
    run_job(Flow("f", [parse, setter]), job)
    assert job.state == "done"
    assert job.variables["label"] == "^FDABC^PQ3"


@pytest.fixture
def caplog_twisted():
    """Formatted Twisted log events emitted during the test."""
    from twisted.logger import formatEvent, globalLogPublisher

    seen: list[str] = []

    def observer(event):
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        seen.append(text)

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def caplog_twisted_events():
    """Raw Twisted log events emitted during the test."""
    from twisted.logger import globalLogPublisher

    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


@pytest_twisted.inlineCallbacks
def test_an_interrupted_action_ends_the_flow_without_on_error():
    from zope.interface import implementer

    from rawsvc.errors import Interrupted
    from rawsvc.flow import Flow
    from rawsvc.interfaces import IAction
    from rawsvc.job import Job, Payload

    ran = []

    @implementer(IAction)
    class Step:
        type_name = "step"

        def __init__(self, name, exc=None):
            self.name, self.exc = name, exc

        def run(self, job):
            ran.append(self.name)
            if self.exc:
                raise self.exc

    flow = Flow("f", [Step("a", Interrupted("service stopping")), Step("b")], [Step("on_error")])
    job = yield flow.run(Job("t", Payload(b"x")))
    assert job.state == "interrupted"
    assert ran == ["a"]
    assert "error" not in job.variables.snapshot()
