"""
The console's pages, rendered by the server with C{twisted.web.template}.

Why C{twisted.web.template} and not Jinja2 or klein: it is part of Twisted,
which rawsvc runs on already (no new dependency), it escapes every string
by default (a tag tree, not text pasted into text: a job id or a variable
cannot become markup), and it flattens Deferreds, so a page built from
spool reads on a thread never blocks the reactor.  klein would add routing
we do not need on a listener that already is a C{twisted.web} site.

Pages: C{/console/} (jobs: table, filters, pagination, new jobs by
polling), C{/console/job/ID} (variables, timeline, payload, previews,
retry/cancel/reprint), C{/console/printers} (triggers, printers,
destinations with pause/resume, and the charts of L{rawsvc.console.charts}).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.template import Tag, flattenString, tags

from rawsvc.console.api import ApiError, Api, Console, arg, hexdump, parse_query, send, VIEW_BYTES
from rawsvc.console.charts import RANGES, charts
from rawsvc.console.source import NoSuchJob
from rawsvc.interfaces import IJobRates
from rawsvc.states import JOB_STATES, FilterError

log = Logger(namespace="rawsvc.console")


def when(ts: Any) -> str:
    """A time for people (local), or nothing."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def layout(title: str, csrf: str, *body: Any) -> Tag:
    """The page frame: head, the CSRF token for the script, navigation."""
    return tags.html(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(name="csrf-token", content=csrf),
            tags.title(f"{title} - rawsvc"),
            tags.link(rel="stylesheet", href="/console/static/console.css"),
        ),
        tags.body(
            tags.nav(tags.a("Jobs", href="/console/"), tags.a("Printers", href="/console/printers"),
                     tags.a("Status", href="/"), tags.a("Metrics", href="/metrics")),
            tags.h1(title),
            *body,
            tags.script(src="/console/static/console.js"),
        ),
    )


def table(headers: list[str], rows: Sequence[list[Any] | tuple[str, list[Any]]], **attrs: str) -> Tag:
    """A table; a row is a list of cells (strings or tags); C{rows} may carry a class as C{("cls", cells)}."""
    body = tags.tbody()
    for row in rows:
        cls, cells = row if isinstance(row, tuple) else ("", row)
        body(tags.tr(*[tags.td("" if c is None else c if isinstance(c, Tag) else str(c)) for c in cells],
                     class_=cls))
    if not rows:
        body(tags.tr(tags.td("none", colspan=str(len(headers)))))
    return tags.table(tags.thead(tags.tr(*[tags.th(h) for h in headers])), body, **attrs)


class Pages(Resource):
    """C{/console/...}: a leaf that routes on the rest of the path."""

    isLeaf = True

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def render_GET(self, request: Any) -> Any:
        self.console.previewer.warm()  # someone looks: a label preview may follow
        d: Deferred[Any] = ensureDeferred(self._page(request))
        d.addCallback(lambda tag: flattenString(request, tag))
        d.addCallback(lambda html: send(request, b"<!doctype html>\n" + html, b"text/html; charset=utf-8"))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure: Any, request: Any) -> None:
        code, message = 500, "the console could not draw this page; see the service log"
        if failure.check(NoSuchJob):
            code, message = 404, str(failure.value)
        elif failure.check(FilterError):
            code, message = 400, str(failure.value)
        elif failure.check(ApiError):
            code, message = failure.value.code, str(failure.value)
        else:
            log.failure("console page {path} failed", failure, path=request.path.decode("utf-8", "replace"))
        d = flattenString(request, layout("Error", self.console.csrf_token, tags.p(message, class_="error")))
        d.addCallback(lambda html: send(request, b"<!doctype html>\n" + html, b"text/html; charset=utf-8", code))
        d.addErrback(lambda f: log.failure("console error page failed", f))

    async def _page(self, request: Any) -> Any:
        # Below /console: the path segment that chose this leaf, and the rest.
        parts = [p.decode("utf-8", "replace") for p in request.prepath[1:] + request.postpath if p]
        if not parts:
            return await self._jobs(request)
        if parts == ["printers"]:
            return self._printers()
        if len(parts) == 2 and parts[0] == "job":
            return await self._job(parts[1])
        raise ApiError(404, f"no console page /console/{'/'.join(parts)}")

    async def _jobs(self, request: Any) -> Tag:
        query = parse_query(request)
        page = await self.console.jobs.page(query)
        args = {k.decode(): v[0].decode("utf-8", "replace") for k, v in request.args.items() if k != b"cursor"}
        rows = [
            (j["state"], [tags.a(j["job_id"], href="/console/job/" + quote(j["job_id"])), j["trigger"],
                          when(j["received_at"]), j["size"], j["state"], j["destination"] or "", j["error"] or ""])
            for j in page.jobs
        ]
        attrs = {"id": "jobs"}
        if query.cursor is None:  # the first page follows new jobs
            attrs["data-poll"] = "/api/v1/jobs?" + urlencode(args)
        nav = tags.p()
        if query.cursor is not None:
            nav(tags.a("newest", href="/console/?" + urlencode(args)), " ")
        if page.next_cursor is not None:
            nav(tags.a("older", href="/console/?" + urlencode({**args, "cursor": str(page.next_cursor)}), rel="next"))
        state = tags.select(tags.option("any state", value=""), name="state")
        for s in JOB_STATES:
            option = tags.option(s, value=s)
            if arg(request, "state") == s:
                option(selected="selected")
            state(option)
        filters = tags.form(
            state,
            tags.input(name="trigger", placeholder="trigger", value=arg(request, "trigger") or ""),
            tags.input(name="destination", placeholder="destination", value=arg(request, "destination") or ""),
            tags.input(name="q", placeholder="job id or variable text", value=arg(request, "q") or ""),
            tags.input(name="since", placeholder="since (Unix s)", value=arg(request, "since") or ""),
            tags.input(name="until", placeholder="until (Unix s)", value=arg(request, "until") or ""),
            tags.button("Filter", type="submit"),
            method="get", action="/console/", class_="filters",
        )
        headers = ["job", "trigger", "received", "bytes", "state", "destination", "error"]
        return layout("Jobs", self.console.csrf_token, filters, table(headers, rows, **attrs), nav)

    async def _job(self, job_id: str) -> Tag:
        jobs = self.console.jobs
        job = await jobs.detail(job_id)
        base = "/api/v1/jobs/" + quote(job_id, safe="")
        summary = table(["field", "value"], [
            ["state", tags.span(job["state"], class_=job["state"], id="state")], ["trigger", job["trigger"]],
            ["flow", job["flow"] or ""], ["peer", job["peer"]], ["received", when(job["received_at"])],
            ["finished", when(job["finished_at"])], ["payload", f"{job['payload_size']} bytes"],
            ["language", job["language"] or ""], ["error", job["error"] or ""],
        ])
        variables = table(["variable", "value"], [[k, v] for k, v in sorted(job["variables"].items())])
        timeline = table(["time", "event", "detail"], [[when(e["at"]), e["event"], e["detail"]] for e in job["timeline"]])
        delivery = job["delivery"]
        body: list[Any] = [summary, self._actions(job, base), tags.h2("Timeline"), timeline]
        if delivery and delivery.get("destination"):
            body += [tags.h2("Delivery"), table(["field", "value"], [[k, v] for k, v in delivery.items()])]
        body += [tags.h2("Variables"), variables]
        if jobs.has_payloads:
            body += await self._payload(job_id, job, base)
        return layout(f"Job {job_id}", self.console.csrf_token, *body)

    def _csrf(self) -> Tag:
        return tags.input(type="hidden", name="csrf", value=self.console.csrf_token)

    def _actions(self, job: dict[str, Any], base: str) -> Tag:
        out = tags.div(tags.p("", id="action-result"), class_="actions")
        if job["state"] in ("failed", "cancelled", "waiting"):
            out(tags.form(self._csrf(), tags.button("Retry", type="submit", id="retry"),
                          method="post", action=base + "/retry", class_="action"))
        if job["state"] == "done":
            out(tags.form(self._csrf(), tags.button("Reprint (run its flow again)", type="submit", id="reprint"),
                          method="post", action=base + "/reprint", class_="action"))
            known = sorted(self.console.known_destinations())
            out(tags.form(self._csrf(),
                          tags.input(name="destination", id="reprint-destination", placeholder="host:port",
                                     list="destinations", required="required"),
                          tags.datalist(*[tags.option(value=d) for d in known], id="destinations"),
                          tags.button("Reprint to", type="submit", id="reprint-to"),
                          method="post", action=base + "/reprint", class_="action"))
        if job["state"] in ("queued", "running", "waiting"):
            out(tags.form(tags.input(type="hidden", name="csrf", value=self.console.csrf_token),
                          tags.button("Cancel", type="submit", id="cancel"),
                          method="post", action=base + "/cancel", class_="action"))
        return out

    async def _payload(self, job_id: str, job: dict[str, Any], base: str) -> list[Any]:
        data = await self.console.jobs.payload(job_id, VIEW_BYTES)
        shown = f"first {len(data)} of {job['payload_size']} bytes" if job["payload_size"] > len(data) else \
            f"{len(data)} bytes"
        out: list[Any] = [tags.h2("Preview")]
        result = await self.console.preview(job_id)
        if result.pngs:
            out += [tags.img(src=f"{base}/preview/{i}.png", alt=f"label {i + 1}", class_="label",
                             id=f"label-{i}") for i in range(len(result.pngs))]
        elif result.error is None:
            out.append(tags.p(f"No preview: the job is {result.language}, not ZPL."))
        if result.error:
            out.append(tags.p(result.error, class_="error"))
        out += [tags.p(w, class_="warning") for w in result.warnings]
        out += [
            tags.h2("Payload"),
            tags.p(shown, " \u00b7 ", tags.a("download", href=base + "/payload")),
            tags.h3("Text"), tags.pre(data.decode("utf-8", "replace"), id="payload-text"),
            tags.h3("Hex"), tags.pre(hexdump(data[:4096]), id="payload-hex"),
        ]
        return out

    def _toggle(self, kind: str, name: str, paused: bool) -> Tag:
        """The pause (or resume) button of trigger or destination C{name}."""
        action = "resume" if paused else "pause"
        return tags.form(self._csrf(), tags.button(action.capitalize(), type="submit", id=f"{action}-{kind}-{name}"),
                         method="post", action=f"/api/v1/{kind}s/{quote(name, safe='')}/{action}", class_="action")

    def _printers(self) -> Tag:
        report = Api(self.console)._destinations()
        triggers = []
        for name, t in report["triggers"].items():
            state = "paused" if t["paused"] else t["state"]
            triggers.append(("up" if t["listening"] and not t["paused"] else "down",
                             [name, t["type"], t["address"] or "", tags.span(state, class_="state"),
                              t["counters"].get("jobs_received"), t["counters"].get("jobs_failed"),
                              t["jobs_per_minute"], t["last_error"], when(t["last_error_at"]),
                              self._toggle("trigger", name, t["paused"])]))
        dests = [
            ("down" if s.get("paused") else "",
             [d, tags.span(s.get("state", ""), class_="state"), s.get("queued", 0), s.get("waiting", 0),
              s.get("delivered", 0), s.get("failures", 0), s.get("jobs_per_minute", 0), s.get("last_error") or "",
              when(s.get("last_error_at")), self._toggle("destination", d, bool(s.get("paused")))])
            for d, s in report["destinations"].items()
        ]
        sink = self.console.service.sink
        rates = sink.rates if IJobRates.providedBy(sink) else None
        body: list[Any] = [
            tags.div(tags.p("", id="action-result"), class_="actions"),
            tags.h2("Triggers and printers"),
            table(["trigger", "type", "address", "state", "received", "failed", "jobs/min", "last error", "when", ""],
                  triggers, id="triggers"),
            tags.h2("Destinations"),
            table(["destination", "state", "queued", "waiting", "delivered", "failures", "jobs/min", "last error",
                   "when", ""], dests, id="destinations"),
        ]
        if rates is not None:
            for name, (minutes, bucket) in RANGES.items():
                body += [tags.h2(f"Last {name}"), charts(rates.series(minutes, bucket), name)]
        return layout("Printers and destinations", self.console.csrf_token, *body)
