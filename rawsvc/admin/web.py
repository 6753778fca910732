"""
The HTTP admin listener: C{/healthz}, C{/metrics}, C{/jobs} and a plain
status page at C{/}, and C{/printers/<name>} (a virtual printer's state;
a POST from loopback sets its simulated conditions).  It listens on
loopback by default.
"""

from __future__ import annotations

import html
import json
import math
import time
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Site

from rawsvc import options as o
from rawsvc import console
from rawsvc.admin import namespace, prometheus
from rawsvc.admin.namespace import health, recent_jobs, status
from rawsvc.console import auth
from rawsvc.interfaces import IHealth, IJobHistory
from rawsvc.listening import Listener
from rawsvc.spool import pg_control
from rawsvc.spool.model import SpoolError
from rawsvc.spool.pg_control import cluster_of
from rawsvc.states import FilterError, parse_limit, parse_states, split_list

if TYPE_CHECKING:
    from rawsvc.interfaces import IJobSink
    from rawsvc.service import RawService

log = Logger(namespace="rawsvc.admin")

HTTP_OPTIONS = o.Schema(
    o.Option(
        "listen",
        str,
        "tcp:8080:interface=127.0.0.1",
        o.server_endpoint,
        doc="HTTP endpoint (an `ssl:` endpoint for TLS); anywhere but loopback it needs `users_file` and/or "
            "`tokens` (see \"Who may do what\")",
    ),
    o.Option("users_file", str, None,
             doc="console users, lines `name:role:bcrypt-hash` (role viewer or operator; `rawsvc passwd` writes "
                 "them); mode 0600; they log in with HTTP Basic", shown_default="none"),
    o.Option("tokens", list, [], o.string_list,
             doc="bearer tokens, `\"name:role:token\"` strings (`Authorization: Bearer <token>`)"),
    o.Option("refresh", int, 5, o.non_negative, doc="seconds between reloads of the `/` page (0: off)"),
    o.Option("recent_jobs", int, 50, o.positive, doc="jobs listed on `/`"),
)

#: Most jobs one /jobs answer lists.
MAX_JOBS = 1000


def _json(request: Any, value: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value, indent=1, default=str).encode("utf-8") + b"\n"


class AdminPage(Resource):
    """
    An admin resource: a HEAD request answers with the headers of a GET
    (the same status, type and length) and no body.  twisted.web would
    otherwise render the GET and log a warning for each HEAD as it drops
    the body.
    """

    def render_GET(self, request: Any) -> bytes:
        raise NotImplementedError

    def render_HEAD(self, request: Any) -> bytes:
        body = self.render_GET(request)
        request.setHeader(b"content-length", b"%d" % len(body))
        return b""


class Health(AdminPage):
    """
    200 while every listener is up and the sink stores jobs, 503 otherwise;
    the body says which listeners are down and why jobs are refused.
    """

    isLeaf = True

    def __init__(self, service: RawService) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Any) -> bytes:
        up, listeners = health(self.service)
        down = [name for name, v in listeners.items() if not v["up"]]
        reason = refusing(self.service.sink)
        node = self.service.cluster
        lease = node.health() if node is not None else None
        ok = up and reason is None and lease is None
        report: dict[str, Any] = {"status": "ok" if ok else "unhealthy", "ok": ok, "refusing": reason is not None}
        if reason is not None:
            report["reason"] = reason
        if node is not None:
            report["cluster"] = {"ok": lease is None, **node.stats()}
            if lease is not None:
                report["cluster"]["reason"] = lease
        report.update(down=down, listeners=listeners)
        return _json(request, report, 200 if ok else 503)


def refusing(sink: IJobSink, now: float | None = None) -> str | None:
    """Why the sink refuses jobs now (or did a moment ago), else None: its L{IHealth} report."""
    if not IHealth.providedBy(sink):
        return None
    return sink.health(now)


class Metrics(AdminPage):
    isLeaf = True

    def __init__(self, service: RawService) -> None:
        super().__init__()
        self.service = service
        self.registry = prometheus.registry_for(service)

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", prometheus.CONTENT_TYPE.encode())
        return prometheus.render(self.service, self.registry).encode("utf-8")


def _arg(request: Any, name: str) -> str | None:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


class Jobs(AdminPage):
    """
    Recent and running jobs, newest first, as JSON.  Filters: C{trigger}
    and C{state} (comma-separated lists; a waiting job carries its C{delivery}: destination, attempt, last error, next try), C{since} (received at or after,
    Unix seconds), C{limit} (default 100, at most MAX_JOBS).  A bad filter
    is a 400 whose C{error} names the accepted values.  With a PostgreSQL
    spool the jobs are every node's, read on a thread (a 503 while the
    database is out of reach).
    """

    isLeaf = True

    #: The query parameters /jobs accepts.
    PARAMETERS = ("trigger", "state", "since", "limit")

    def __init__(self, service: RawService) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Any) -> Any:
        try:
            states, triggers, since, limit = self._filters(request)
        except FilterError as e:
            return _json(request, {"error": str(e)}, 400)
        cluster = cluster_of(self.service)
        if cluster is not None:  # every node's jobs, read on a thread
            d = pg_control.recent(cluster, limit, sorted(states), sorted(triggers), since)
            d.addCallbacks(lambda jobs: {"count": len(jobs), "jobs": jobs}, self._unavailable)
            d.addCallback(lambda value: self._finish(request, value))
            d.addErrback(self._finish_failed, request)
            return NOT_DONE_YET
        jobs = [
            j
            for j in recent_jobs(self.service, MAX_JOBS)
            if (not triggers or j["trigger"] in triggers)
            and (not states or j["state"] in states)
            and j["received_at"] >= since
        ][:limit]
        sink = self.service.sink
        waiting = sink.waiting_deliveries() if IJobHistory.providedBy(sink) else {}
        for j in jobs:
            if j["state"] in ("waiting", "held") and j["job_id"] in waiting:
                j["delivery"] = dict(waiting[j["job_id"]])  # destination, attempt, last_error, next_try
        return _json(request, {"count": len(jobs), "jobs": jobs})

    def render_HEAD(self, request: Any) -> Any:
        body = self.render_GET(request)
        if body is NOT_DONE_YET:
            return body
        request.setHeader(b"content-length", b"%d" % len(body))
        return b""

    @staticmethod
    def _unavailable(failure: Any) -> tuple[dict[str, str], int]:
        """503 when the spool cannot be read; any other failure (a bug) is logged and a 500."""
        if failure.check(SpoolError):
            return {"error": f"spool unavailable: {failure.value}"}, 503
        log.failure("/jobs failed", failure)
        return {"error": "the jobs could not be listed; see the service log"}, 500

    @staticmethod
    def _finish_failed(failure: Any, request: Any) -> None:
        """Writing the answer failed: log it and end the request (500), never leave it open."""
        log.failure("/jobs failed", failure)
        if request.finished or request.channel is None:
            return
        try:
            request.setResponseCode(500)
            request.finish()
        except Exception:
            log.failure("/jobs: cannot end the request")

    @staticmethod
    def _finish(request: Any, value: Any) -> None:
        if request.finished or request.channel is None:  # the client has gone
            return
        value, code = value if isinstance(value, tuple) else (value, 200)
        body = _json(request, value, code)
        request.setHeader(b"content-length", b"%d" % len(body))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def _filters(self, request: Any) -> tuple[set[str], set[str], float, int]:
        for name in request.args:
            key = name.decode("utf-8", "replace")
            if key not in self.PARAMETERS:
                raise FilterError(f"unknown parameter {key!r}; use: {', '.join(self.PARAMETERS)}")
        states = set(parse_states(_arg(request, "state")))
        triggers = set(split_list(_arg(request, "trigger")))
        since_text = _arg(request, "since") or "0"
        try:
            since = float(since_text)
        except ValueError:
            since = math.nan
        if not math.isfinite(since):
            raise FilterError(f"since must be a time in Unix seconds, not {since_text!r}")
        limit = parse_limit(_arg(request, "limit"), 100, MAX_JOBS)
        return states, triggers, since, limit


_STYLE = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em}"
    "table{border-collapse:collapse;margin-bottom:1.5em}"
    "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
    ".failed,.down{color:#b00}.done,.up{color:#070}"
)


def _table(headers: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{html.escape(classes[i])}"' if classes and classes[i] else ""
        cells = "".join(f"<td>{html.escape('' if c is None else str(c))}</td>" for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    if not rows:
        body.append(f'<tr><td colspan="{len(headers)}">none</td></tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


class StatusPage(AdminPage):
    """The human page at C{/}: triggers, printers, destinations, recent jobs."""

    def __init__(self, service: RawService, refresh: int, recent: int) -> None:
        super().__init__()
        self.service = service
        self.refresh = refresh
        self.recent = recent

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == b"":
            return self
        return super().getChild(path, request)

    def render_GET(self, request: Any) -> bytes:
        report = status(self.service)
        triggers = report["triggers"]
        t_rows, t_classes = [], []
        for name, t in triggers.items():
            c = t["counters"]
            up = t["listening"] and not t.get("paused", False)
            t_rows.append([
                name, t.get("type", ""), t.get("address") or t.get("listen", ""),
                "up" if up else ("paused" if t.get("paused") else "down"),
                c["connections_open"], c["jobs_received"], c["jobs_ok"], c["jobs_failed"],
                c["jobs_refused"], c["bytes_in"],
            ])
            t_classes.append("up" if up else "down")
        printers = [[n, s, ", ".join(triggers[n].get("conditions") or []), triggers[n].get("held", "")]
                    for n, s in report["printers"].items()]
        dests = [
            [d, s.get("state", ""), s.get("queued", 0), s.get("attempts", 0), s.get("delivered", 0),
             s.get("failures", 0), s.get("retries", 0)]
            for d, s in report["destinations"].items()
        ]
        jobs = recent_jobs(self.service, self.recent)
        j_rows = [
            [j["job_id"], j["trigger"], j["peer"], _when(j["received_at"]), j["size"], j.get("language", ""),
             j["state"], j["error"] or ""]
            for j in jobs
        ]
        refresh = f'<meta http-equiv="refresh" content="{self.refresh}">' if self.refresh else ""
        page = (
            f'<!doctype html><html><head><meta charset="utf-8">{refresh}'
            f"<title>rawsvc</title><style>{_STYLE}</style></head><body>"
            f"<h1>rawsvc</h1><p>{html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))}"
            ' &middot; <a href="/healthz">healthz</a> &middot; <a href="/metrics">metrics</a>'
            ' &middot; <a href="/jobs">jobs</a> &middot; <a href="/console/">console</a></p>'
            "<h2>Triggers</h2>"
            + _table(["name", "type", "address", "state", "open", "received", "ok", "failed", "refused", "bytes in"],
                     t_rows, t_classes)
            + "<h2>Printers</h2>" + _table(["printer", "state", "conditions", "held"], printers)
            + "<h2>Destinations</h2>"
            + _table(["destination", "state", "queued", "attempts", "delivered", "failures", "retries"], dests)
            + "<h2>Recent jobs</h2>"
            + _table(["job", "trigger", "peer", "received", "bytes", "language", "state", "error"], j_rows,
                     [j["state"] for j in jobs])
            + "</body></html>"
        )
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return page.encode("utf-8")


_LOOPBACK = ("127.", "::1", "::ffff:127.")


class Printers(Resource):
    """
    C{/printers/<name>}: a virtual printer's state (GET, JSON);
    C{POST /printers/<name>/condition} with a JSON body
    C{{"condition": "paper_out", "on": true}} sets or clears a simulated
    condition (C{"condition": "all", "on": false} clears every one).  POSTs
    are taken from loopback clients only, with a JSON content type (a web
    page elsewhere cannot send one without asking first).
    """

    def __init__(self, service: Any) -> None:
        super().__init__()
        self.service = service

    def getChild(self, path: bytes, request: Any) -> Resource:
        return PrinterPage(self.service, path.decode("utf-8", "replace"))


class PrinterPage(AdminPage):
    """One printer (GET) and its C{condition} (POST); see L{Printers}."""

    isLeaf = True

    def __init__(self, service: Any, name: str) -> None:
        super().__init__()
        self.service = service
        self.name = name

    def render_GET(self, request: Any) -> bytes:
        if request.postpath not in ([], [b""]):
            return _json(request, {"error": "not found"}, 404)
        try:
            return _json(request, namespace.printer(self.service, self.name))
        except KeyError as e:
            return _json(request, {"error": e.args[0]}, 404)

    def render_POST(self, request: Any) -> bytes:
        if request.postpath != [b"condition"]:
            return _json(request, {"error": "POST /printers/<name>/condition"}, 404)
        peer = request.getClientAddress()
        if isinstance(peer, (IPv4Address, IPv6Address)) and not peer.host.startswith(_LOOPBACK):
            return _json(request, {"error": "conditions are set from loopback only"}, 403)
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            return _json(request, {"error": "send a JSON body (content-type: application/json)"}, 415)
        try:
            body = json.loads(request.content.read() or b"{}")
            cond, on = body["condition"], body.get("on", True)
            if not isinstance(cond, str) or not isinstance(on, bool):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            return _json(request, {"error": 'the body must be {"condition": "<name>", "on": true|false}'}, 400)
        try:
            return _json(request, namespace.condition(self.service, self.name, cond, on))
        except KeyError as e:
            return _json(request, {"error": e.args[0]}, 404)
        except ValueError as e:
            return _json(request, {"error": str(e)}, 400)


def make_site(service: RawService, refresh: int = 5, recent: int = 50) -> Site:
    root = StatusPage(service, refresh, recent)
    root.putChild(b"healthz", Health(service))
    root.putChild(b"metrics", Metrics(service))
    root.putChild(b"jobs", Jobs(service))
    root.putChild(b"printers", Printers(service))
    shown = console.install(root, service)  # /console and /api/v1
    site = Site(root)
    site.console = shown  # type: ignore[attr-defined]
    site.displayTracebacks = False
    return site


def make_service(options: dict[str, Any], service: RawService) -> Listener:
    """The HTTP admin listener for C{[admin.http]}."""
    endpoint = serverFromString(service.context.reactor, options["listen"])
    site = make_site(service, options["refresh"], options["recent_jobs"])
    site.resource = auth.guard(site.resource, options, service.context.reactor)
    listener = AdminListener(endpoint, site, "[admin.http]", options["listen"])
    listener.setName("admin-http")
    listener.previewer = site.console.previewer  # type: ignore[attr-defined]
    return listener


class AdminListener(Listener):
    """The admin HTTP listener; stopping it also ends the console's spare preview worker."""

    previewer: Any = None

    def stopService(self) -> Any:
        if self.previewer is not None:
            self.previewer.stop()
        return super().stopService()

