"""
Action C{http}: one HTTP request per job, with treq.

The C{url}, C{headers} and C{body} are templates; the body defaults to the
payload.  A connection error, a timeout or a 5xx answer is retried
C{retries} times with the same back-off as C{send_tcp}
(L{rawsvc.client.retry.RetryPolicy}): C{retry_delay} before the first
retry, doubling each time, capped at L{MAX_RETRY_DELAY} seconds (or at
C{retry_delay} when that is longer), plus a jitter of up to a quarter of
C{retry_delay}; any other status outside C{expect_status} fails at once.  With C{save_reply}, the response body goes into that
variable and the status into C{${name}_status}, also when the action fails,
so that C{on_error} actions can report what the server said.

TLS certificates are verified against the system trust store (or
C{ca_file}) unless C{verify_tls = false}.

The action sends through a treq C{HTTPClient} it is given (C{client=}: a
test passes C{treq.testing.StubTreq}); built from the config, it uses the
config's shared client for its TLS setting, with persistent, quiet
connections (L{rawsvc.client.http_clients}).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client as webclient
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.client._compat_http import quiet_connection_pool
from rawsvc.client.http_clients import http_clients, make_client
from rawsvc.client.retry import RetryPolicy
from rawsvc.errors import ActionError, ConfigIssue
from rawsvc.interfaces import IAction, IActionType
from rawsvc.template import Template

if TYPE_CHECKING:
    from rawsvc.context import BuildContext

log = Logger(namespace="rawsvc.action.http")

#: The longest wait between two attempts (unless C{retry_delay} is longer).
MAX_RETRY_DELAY = 30.0

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

#: Failures that mean "the server could not be reached or did not answer".
_RETRYABLE = (
    ierror.ConnectError,  # refused, DNS, no route, connect timeout
    webclient.ResponseNeverReceived,
    webclient.RequestTransmissionFailed,
    webclient.ResponseFailed,
)


class _Retryable(ActionError):
    """An attempt failed in a way worth another try."""


def _status_matcher(value: Any) -> tuple[str, ...]:
    """C{200}, C{"2xx"} or a list of those -> patterns like C{"200"}, C{"2xx"}."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigIssue("must name at least one status")
    out = []
    for item in items:
        text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
        if not isinstance(text, str) or len(text) != 3 or not text[0] in "12345" or not all(
            c.isdigit() or c == "x" for c in text[1:]
        ) or ("x" in text[1:2] and text[2] != "x"):
            raise ConfigIssue(
                f"{item!r} is not a status: write 200, \"2xx\" or a list such as [200, 202]"
            )
        out.append(text)
    return tuple(out)


def _status_ok(patterns: tuple[str, ...], status: int) -> bool:
    s = str(status)
    return any(all(p == "x" or p == c for p, c in zip(pat, s)) for pat in patterns)


def _headers(value: dict) -> dict[str, Template]:
    out = {}
    for name, text in value.items():
        if not name or any(c in name for c in " :\r\n\t"):
            raise ConfigIssue(f"{name!r} is not a header name")
        if not isinstance(text, str):
            raise ConfigIssue(f"header {name!r} must be a string template")
        out[name] = Template(text)
    return out


def _optional_variable(value: str) -> str:
    return o.variable_name(value) if value else value


def _url(value: str) -> Template:
    t = Template(value)
    literal_start = value.split("$", 1)[0].lower()
    if not value.startswith("${") and not literal_start.startswith(("http://", "https://")):
        raise ConfigIssue(f"{value!r} must start with http:// or https://")
    return t


@implementer(webclient.IPolicyForHTTPS)
class _NoVerification:
    """TLS without certificate checks (C{verify_tls = false})."""

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        from twisted.internet.ssl import CertificateOptions

        return CertificateOptions(verify=False)


def tls_policy(verify: bool, ca_file: str) -> Any:
    if not verify:
        return _NoVerification()
    if not ca_file:
        return webclient.BrowserLikePolicyForHTTPS()
    from twisted.internet.ssl import Certificate

    try:
        with open(ca_file, "rb") as f:
            root = Certificate.loadPEM(f.read())
    except OSError as e:
        raise ConfigIssue(f"cannot read ca_file {ca_file!r}: {e.strerror}") from None
    except Exception as e:
        raise ConfigIssue(f"ca_file {ca_file!r} is not a PEM certificate: {e}") from None
    return webclient.BrowserLikePolicyForHTTPS(trustRoot=root)


class _ReplyReader(Protocol):
    """Collect a response body up to C{limit} bytes; cancelling aborts it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.done: Deferred = Deferred(self._cancel)

    def _producer(self) -> IPushProducer:
        # Response.deliverBody connects us to a transport that is the body's
        # producer; Protocol.transport is declared only as ITransport | None.
        assert self.transport is not None
        return cast(IPushProducer, self.transport)

    def _cancel(self, _d: Deferred) -> None:
        if self.transport is not None:
            self._producer().stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            if not self.done.called:
                self.done.errback(
                    ActionError(f"reply larger than max_reply ({self.limit} bytes)")
                )
            self._producer().stopProducing()
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(webclient.ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


@provider(IActionType)
@implementer(IAction)
class HttpAction:
    """Send an HTTP request for a job, with retries."""

    type_name = "http"
    options = o.Schema(
        o.Option("url", str, check=_url, doc="the URL (template), `http://` or `https://`"),
        o.Option("method", str, "POST", lambda m: o.one_of(*METHODS)(m.upper()), doc="the HTTP method"),
        o.Option("headers", dict, {}, _headers, doc="`{ Name = \"template\", ... }`: headers to send"),
        o.Option("body", str, "", o.optional_template, doc="template to send as the body instead",
                   shown_default="the payload"),
        o.Option("encoding", str, "auto", o.encoding, doc="encoding of the rendered body"),
        o.Option("timeout", (int, float), 30.0, o.positive, doc="seconds per attempt, reply included"),
        o.Option("retries", int, 3, o.non_negative, doc="extra attempts after a connection error, timeout or 5xx"),
        o.Option("retry_delay", (int, float), 1.0, o.non_negative,
                 doc="seconds before the first retry; doubles each time up to 30 s (or `retry_delay`, if longer), plus a little jitter"),
        o.Option("expect_status", (int, str, list), "2xx", _status_matcher, doc="the statuses that succeed: `\"2xx\"`, `200` or a list of them"),
        o.Option("save_reply", str, "", _optional_variable, shown_default="—",
                 doc="variable for the response body; the status goes into `${name}_status`"),
        o.Option("max_reply", int, 1 << 20, o.positive, doc="largest response body read, in bytes (1 MiB)"),
        o.Option("verify_tls", bool, True, doc="verify the server's TLS certificate"),
        o.Option("ca_file", str, "", doc="PEM file of the CA to trust instead of the system store", shown_default="—"),
    )

    def __init__(
        self,
        url: Template,
        method: str = "POST",
        headers: dict[str, Template] | None = None,
        body: Template | None = None,
        encoding: str = "auto",
        timeout: float = 30.0,
        retries: int = 3,
        retry_delay: float = 1.0,
        expect_status: tuple[str, ...] = ("2xx",),
        save_reply: str = "",
        max_reply: int = 1 << 20,
        tls: Any = None,
        reactor: Any = None,
        client: Any = None,
    ) -> None:
        """
        C{client} is what sends: a treq C{HTTPClient} or anything with its
        C{request} (C{treq.testing.StubTreq}).  Without it the action makes
        its own, checking TLS as C{tls} says, with one connection per
        request (nothing stays open that no one would close).
        """
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.url = url
        self.method = method.upper()
        self.headers = headers or {}
        self.body = body
        self.encoding = encoding
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.expect_status = expect_status
        self.save_reply = save_reply
        self.max_reply = max_reply
        self.reactor = reactor
        self.policy = RetryPolicy(retry_delay, max(MAX_RETRY_DELAY, retry_delay), math.inf, retries)
        if client is None:
            tls = tls or webclient.BrowserLikePolicyForHTTPS()
            client = make_client(reactor, tls, quiet_connection_pool(reactor, persistent=False))
        self.client = client

    @classmethod
    def from_config(cls, options: dict[str, Any], context: BuildContext) -> "HttpAction":
        ca_file = context.resolve_path(options["ca_file"]) if options["ca_file"] else ""
        verify = options["verify_tls"]
        client = http_clients(context).client((verify, ca_file), lambda: tls_policy(verify, ca_file))
        return cls(
            options["url"],
            options["method"],
            options["headers"],
            options["body"],
            options["encoding"],
            options["timeout"],
            options["retries"],
            options["retry_delay"],
            options["expect_status"],
            options["save_reply"],
            options["max_reply"],
            reactor=context.reactor,
            client=client,
        )

    def _body(self, job: Any) -> Any:
        if self.method in ("GET", "HEAD", "OPTIONS", "DELETE") and self.body is None:
            return None
        if self.body is not None:
            return self.body.render(job.variables, self.encoding)
        if not job.payload.in_memory:
            return job.payload.open  # a large payload streams from its file, per attempt
        return job.payload.bytes()

    @inlineCallbacks
    def run(self, job: Any):
        url = self.url.render_text(job.variables)
        if not url.lower().startswith(("http://", "https://")):
            raise ActionError(f"url {url!r} does not start with http:// or https://")
        headers = {k: [t.render_text(job.variables)] for k, t in self.headers.items()}
        body = self._body(job)
        what = f"HTTP {self.method} {url}"
        attempt = 0
        while True:
            attempt += 1
            try:
                status, phrase, reply = yield self._attempt(url, headers, body, what)
            except _Retryable as e:
                last = str(e)
            else:
                self._save(job, status, reply)
                if _status_ok(self.expect_status, status):
                    log.debug("{what}: {status}", what=what, status=status, job_id=job.job_id)
                    return
                last = f"{what} answered {status} {phrase} (expected {_describe(self.expect_status)})"
                if status < 500:
                    raise ActionError(last)
            if self.policy.exhausted(attempt, 0.0):
                break
            wait = self.policy.wait(self.reactor, attempt)
            log.info(
                "{error}; retry {n} of {retries} in {delay:.2f} s",
                error=last, n=attempt, retries=self.retries, delay=wait.delay, job_id=job.job_id,
            )
            yield wait.deferred
        raise ActionError(f"{last} (gave up after {attempt} attempt{'s' if attempt > 1 else ''})")

    @inlineCallbacks
    def _attempt(self, url: str, headers: dict, body: Any, what: str):
        if callable(body):  # stream the spilled payload: never the whole file in memory
            from twisted.web.client import FileBodyProducer

            body = FileBodyProducer(body(), readSize=1 << 16)
        d = self.client.request(
            self.method, url, headers=headers, data=body, unbuffered=True, allow_redirects=False
        )

        @inlineCallbacks
        def exchange():
            response = yield d
            reader = _ReplyReader(self.max_reply)
            response.original.deliverBody(reader)
            content = yield reader.done
            return response.code, response.phrase.decode("latin-1"), content

        def expired(_cancelled: Any, timeout: float) -> Any:
            # Whatever the cancelled request failed with, the attempt timed out.
            raise _Retryable(f"{what}: no complete reply within {timeout:g} s")

        try:
            return (yield exchange().addTimeout(self.timeout, self.reactor, onTimeoutCancel=expired))
        except ActionError:
            raise
        except Exception as e:
            if isinstance(e, _RETRYABLE):
                raise _Retryable(f"{what}: {_explain(e)}") from None
            raise ActionError(f"{what}: {_explain(e)}") from None

    def _save(self, job: Any, status: int, reply: bytes) -> None:
        if self.save_reply:
            job.variables[self.save_reply] = reply.decode("utf-8", "surrogateescape")
            job.variables[f"{self.save_reply}_status"] = str(status)


def _describe(patterns: tuple[str, ...]) -> str:
    return " or ".join(patterns)


def _explain(e: Exception) -> str:
    """A readable reason for a request failure (treq wraps the real one)."""
    reasons = getattr(e, "reasons", None)
    if reasons:
        inner = reasons[0].value
        return _explain(inner) if inner is not e else type(e).__name__
    if isinstance(e, ierror.ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ierror.DNSLookupError):
        return f"DNS lookup failed: {e}"
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
