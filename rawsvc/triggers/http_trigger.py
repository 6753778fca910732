"""
Trigger C{http}: C{POST /print/<name>} (or a configured C{path}) with a
body becomes a job; the flow's replies become the response body.

How a request ends: 200 with the replies when the flow ended done; 422
with a JSON body (C{error}, C{job_id}, C{state}) when it failed; 401
without the bearer C{token}; 413 for a body larger than C{max_job_bytes};
503 when the job could not be stored (send it again); 202 when it is
stored but the service stopped before its flow ended (it resumes: do not
send it again); 404 / 405 for another path or method.  The body streams into the job's payload (a spill file past
C{spill_threshold}), never whole into memory, and the response waits
until the sink has stored and run the job, as a C{tcp} reply does.
Query parameters and the C{headers} chosen become job variables.
Written only against the public plugin API.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import re
import weakref
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.errors import ActionError, ConfigIssue
from rawsvc.interfaces import IJobSink, IReplyChannel, ITrigger, ITriggerType
from rawsvc.job import Job, Payload, PayloadError, SpillBudget
from rawsvc.listening import Listener
from rawsvc.metrics import TriggerCounters
from rawsvc.triggers.api import LISTENER_OPTIONS, ConnectionSettings, with_backlog

log = Logger(namespace="rawsvc.trigger")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _header_names(value: list) -> list[str]:
    names = o.string_list(value)
    for n in names:
        if not re.fullmatch(r"[A-Za-z0-9-]+", n):
            raise ConfigIssue(f"{n!r} is not an HTTP header name")
    return names


def _path(value: str) -> str:
    if value and not value.startswith("/"):
        raise ConfigIssue(f"must begin with '/', not {value!r}")
    return value


def variable_of_header(name: str) -> str:
    """The variable a chosen header becomes: C{X-Order-Id} -> C{x_order_id}."""
    return name.lower().replace("-", "_")


def loopback_only(listen: str) -> bool:
    """Whether the server endpoint C{listen} is reachable only from this machine (loopback or unix)."""
    kind = listen.split(":", 1)[0]
    if kind == "unix":
        return True
    m = re.search(r"(?:^|:)interface=((?:\\:|[^:])+)", listen)
    if m is None:
        return False
    try:
        return ipaddress.ip_address(m.group(1).replace("\\:", ":")).is_loopback
    except ValueError:
        return m.group(1) == "localhost"


HTTP_OPTIONS = o.Schema(*(LISTENER_OPTIONS.options[k] for k in ("name", "type", "listen", "flow", "description"))) + o.Schema(
    o.Option("path", str, "", _path, shown_default="`/print/<name>`", doc="the URL path jobs are POSTed to"),
    o.Option("token", str, "",
             doc="bearer token every request must send (`Authorization: Bearer <token>`); required unless "
                 "`listen` is loopback or unix only"),
    o.Option("headers", list, [], _header_names, shown_default="`[]`",
             doc="request headers that become variables (`X-Order-Id` -> `${x_order_id}`); query parameters always do"),
) + o.Schema(*(LISTENER_OPTIONS.options[k] for k in ("max_job_bytes", "spill_budget", "encoding", "backlog")))


@implementer(IReplyChannel)
class _Replies:
    """Collects a job's replies: they become the response body."""

    def __init__(self, request: "JobRequest") -> None:
        self.request = request
        self.parts: list[bytes] = []

    def reply(self, data: bytes) -> Deferred:
        if self.request.gone:
            return fail(ActionError("the HTTP client has gone"))
        self.parts.append(data)
        return succeed(None)


class JobRequest(Request):
    """A request whose body streams into a job payload (checked for the token and size first)."""

    def __init__(self, trigger: "HttpTrigger", channel: Any, *args: Any, **kw: Any) -> None:
        super().__init__(channel, *args, **kw)
        self.trigger = trigger
        trigger.site.channels.add(channel)
        self.payload: Payload | None = None
        self.refusal: tuple[int, str] | None = None
        self.gone = False
        self.notifyFinish().addErrback(self._gone)

    def _gone(self, _: Failure) -> None:
        """The client went away before its answer: a body not yet handed to the sink is thrown away."""
        self.gone = True
        self.trigger.receiving_requests.discard(self)
        payload, self.payload = self.payload, None
        if payload is not None:
            payload.discard()

    def gotLength(self, length: int | None) -> None:
        t = self.trigger
        self.content = io.BytesIO()  # the body goes to self.payload; forms are not parsed from it
        if not t.authorized(self):
            self.refusal = (401, "a bearer token is required (Authorization: Bearer <token>)")
        elif length is not None and t.max_job_bytes is not None and length > t.max_job_bytes:
            self.refusal = (413, f"the body is larger than max_job_bytes = {t.max_job_bytes}")
        else:
            s = t.settings
            self.payload = Payload(spool_dir=s.temp_dir, threshold=s.spill_threshold, budget=t.spill_budget)
            t.receiving_requests.add(self)

    def handleContentChunk(self, data: bytes) -> None:
        t = self.trigger
        t.counters.bytes_in += len(data)
        if self.refusal is not None or self.payload is None:
            return  # read and dropped: the answer is already decided
        if t.max_job_bytes is not None and self.payload.size + len(data) > t.max_job_bytes:
            self.refusal = (413, f"the body is larger than max_job_bytes = {t.max_job_bytes}")
            self.payload.discard()
            return
        try:
            self.payload.write(data)
        except PayloadError as e:
            self.refusal = (503, f"the job cannot be stored: {e}")

    def process(self) -> None:
        self.trigger.receiving_requests.discard(self)
        self.trigger.serve(self)


class _JobSite(Site):
    """
    The trigger's site: no resource tree (L{JobRequest.process} answers),
    no access log (jobs are logged), and the connections that made a
    request known (C{channels}), so a stop can close the idle ones.
    """

    noisy = False

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.channels: weakref.WeakSet[Any] = weakref.WeakSet()

    def log(self, request: Any) -> None:
        pass


@provider(ITriggerType)
@implementer(ITrigger)
class HttpTrigger(Service):
    """The C{http} trigger: one job per POSTed body."""

    type_name = "http"
    options = HTTP_OPTIONS

    def __init__(self, options: dict[str, Any], context: Any) -> None:
        self.name = options["name"]
        self.opts = options
        self.reactor = context.reactor
        self.settings = ConnectionSettings.from_options(options, context)
        self.flow = self.settings.flow
        self.listen = options["listen"]
        self.path = (options["path"] or f"/print/{self.name}").encode("utf-8")
        self.token = options["token"].encode("utf-8")
        if not self.token and not loopback_only(self.listen):
            raise ConfigIssue("is required: `listen` is reachable from other machines (set interface=127.0.0.1 "
                              "to serve this machine only)", "token")
        self.headers = options["headers"]
        self.max_job_bytes = self.settings.max_job_bytes
        self.spill_budget = SpillBudget(options["spill_budget"] or None)
        self.counters = TriggerCounters()
        self.sink: IJobSink = context.sink
        self.receiving_requests: set[JobRequest] = set()
        self._submitted: set[JobRequest] = set()
        self.site = _JobSite(Resource(), requestFactory=lambda channel, *a, **kw: JobRequest(self, channel, *a, **kw))
        self.site.displayTracebacks = False
        self.paused = False
        self._listener: Listener | None = None
        self.port: Any = None

    @classmethod
    def from_config(cls, options: dict[str, Any], context: Any) -> "HttpTrigger":
        return cls(options, context)

    # Requests ---------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        if not self.token:
            return True
        given = request.getHeader("authorization") or ""
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("utf-8"), self.token)

    def serve(self, request: JobRequest) -> None:
        """Answer a request whose body has arrived: refuse it, or run its job and answer with the outcome."""
        if not self.running:
            return self._drop(request, 503, "the service is stopping")
        if request.path != self.path:
            return self._drop(request, 404, f"no such path; jobs are POSTed to {self.path.decode()}")
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return self._drop(request, 405, "jobs are sent with POST")
        if request.refusal is not None:
            code, why = request.refusal
            if code == 401:
                request.setHeader(b"www-authenticate", b'Bearer realm="rawsvc"')
            if code in (413, 503):
                self.counters.jobs_refused += 1
                log.warn("trigger {trigger}: refused a job from {peer}: {reason}", trigger=self.name,
                         peer=_peer(request), reason=why)
            return self._drop(request, code, why)
        assert request.payload is not None
        payload, request.payload = request.payload, None
        try:
            payload.close()
        except PayloadError as e:
            return self._drop(request, 503, f"the job cannot be stored: {e}")
        host, port = _peer_of(request)
        job = Job(trigger=self.settings.trigger, payload=payload, peer_host=host, peer_port=port,
                  encoding=self.settings.job_encoding, meta=self.variables_of(request))
        replies = _Replies(request)
        job.reply_channel = replies
        self._submitted.add(request)
        try:
            d = self.sink.submit(job, self.flow, self.counters)
        except Exception:
            d = fail()
        d.addBoth(self._answer, request, job, replies)

    def variables_of(self, request: Request) -> dict[str, str]:
        """Query parameters (by name) and the chosen headers (C{x_order_id}) as job variables; a header wins."""
        out: dict[str, str] = {"http_path": request.path.decode("utf-8", "replace")}
        for key, values in (request.args or {}).items():
            name = key.decode("utf-8", "replace")
            if _NAME.match(name) and values:
                out[name] = values[-1].decode("utf-8", "replace")
        for header in self.headers:
            value = request.getHeader(header)
            if value is not None:
                out[variable_of_header(header)] = value
        return out

    def _answer(self, result: Any, request: JobRequest, job: Job, replies: _Replies) -> None:
        self._submitted.discard(request)
        if isinstance(result, Failure):
            log.failure("trigger {trigger}: the job sink failed on job {job_id}", result,
                        trigger=self.name, job_id=job.job_id)
        if request.gone:
            return
        request.setHeader(b"x-rawsvc-job-id", job.job_id.encode())
        state = str(job.state)
        if state == "done":
            body = b"".join(replies.parts)
            self.counters.bytes_out += len(body)
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            self._finish(request)
            return
        if state in ("failed", "cancelled"):
            code = 422
        elif state == "refused":
            code = 503  # not stored: send it again
        else:
            # Stored, not finished (the stop cut its flow off): it resumes at the
            # next start, so the client must not send it again (twice printed).
            code = 202
        self._json(request, code, {"error": job.error or state, "job_id": job.job_id, "state": state})

    def _drop(self, request: JobRequest, code: int, why: str) -> None:
        if request.payload is not None:
            request.payload.discard()
            request.payload = None
        self._json(request, code, {"error": why})

    def _json(self, request: Request, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8") + b"\n"
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(data))
        self.counters.bytes_out += len(data)
        request.write(data)
        self._finish(request)

    def _finish(self, request: Request) -> None:
        channel = request.channel  # finish() lets go of it
        request.finish()
        if not self.running and channel is not None:  # stopping: no keep-alive
            transport = channel.transport
            if transport is not None:
                cast(Any, transport).loseConnection()

    # Lifetime ---------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self.port is not None

    def _new_listener(self) -> Listener:
        endpoint = serverFromString(self.reactor, with_backlog(self.listen, self.opts["backlog"]))
        return Listener(endpoint, self.site, f"trigger {self.name!r}", self.listen, on_port=self._up)

    def _up(self, port: Any) -> None:
        self.port = port
        log.info("trigger {trigger} (http) listening on {listen}, POST {path}, flow {flow}", trigger=self.name,
                 listen=self.listen, path=self.path.decode(), flow=self.flow)

    def startService(self) -> None:
        super().startService()
        if self.paused:
            return
        listener = self._new_listener()
        try:
            listener.startService()
        except Exception:
            self.running = 0
            raise
        self._listener = listener

    def _close(self) -> Deferred:
        listener, self._listener = self._listener, None
        self.port = None
        return listener.stopService() if listener is not None else succeed(None)

    def stopService(self) -> Deferred:
        """Stop listening and close the idle keep-alive connections; a request in flight is answered first."""
        super().stopService()
        busy = {r.channel.transport for r in self.receiving_requests | self._submitted if r.channel is not None}
        for channel in list(self.site.channels):
            if channel.transport is not None and channel.transport not in busy and not channel.requests:
                channel.transport.loseConnection()
        return self._close()

    def pause(self) -> Deferred:
        self.paused = True
        return self._close()

    def resume(self) -> Deferred:
        self.paused = False
        if self._listener is not None or not self.running:
            return succeed(None)
        listener = self._new_listener()
        listener.startService()
        self._listener = listener
        return listener.when_listening().addCallback(lambda _: None)

    # Status -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type_name,
            "listen": self.listen,
            "path": self.path.decode(),
            "listening": self.listening,
            "paused": self.paused,
            "flow": self.flow,
            "requests_receiving": len(self.receiving_requests),
            "jobs_running": len(self._submitted),
            "counters": self.counters.as_dict(),
        }

    def connection_list(self) -> list[dict[str, Any]]:
        return [{"trigger": self.name, "peer": _peer(r), "receiving": r.payload.size if r.payload else 0}
                for r in self.receiving_requests]

    def receiving(self) -> int:
        return len(self.receiving_requests)

    def abort_receiving(self) -> int:
        requests = list(self.receiving_requests)
        for r in requests:
            log.warn("stopping: resetting {peer}, still sending its job; it sends it again", peer=_peer(r))
            cast(Any, r.channel.transport).abortConnection()
        return len(requests)


def _peer_of(request: Request) -> tuple[str, int]:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", "unix")), int(getattr(peer, "port", 0))


def _peer(request: Request) -> str:
    host, port = _peer_of(request)
    return f"{host}:{port}"
