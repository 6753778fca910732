"""
The console's JSON API, C{/api/v1/...}, which its pages use too:

  - C{GET jobs}: newest first, one page; filters C{state}, C{trigger},
    C{destination} (comma-separated lists), C{since}/C{until} (Unix
    seconds, received in C{[since, until)}), C{q} (text in the job id or
    its variables), C{cursor} (the C{next_cursor} of the page before) and
    C{limit} (1 to L{MAX_PAGE});
  - C{GET jobs/ID}: the job's record, variables, delivery and timeline;
  - C{GET jobs/ID/payload}: its bytes; C{GET jobs/ID/view?as=text|hex}:
    the first L{VIEW_BYTES} of them for people;
  - C{GET jobs/ID/preview}: its label images (C{images}: their URLs,
    C{warnings}, C{error}, C{language}); C{GET jobs/ID/preview/N.png};
  - C{POST jobs/ID/retry}, C{POST jobs/ID/cancel}: what the sink answers
    (L{IJobControl}; with a PostgreSQL spool, the node running the job:
    L{rawsvc.spool.pg_control}); each needs the console's CSRF token in the
    C{X-CSRF-Token} header or a C{csrf} form field;
  - C{POST jobs/ID/reprint}: a done job again: without C{destination},
    its flow runs again (as a retry does); with C{destination=host:port}
    (one the allow-list allows), its payload goes there as a new job
    (variables C{reprint_of}, C{reprint_destination}, C{reprint_by});
  - C{GET destinations}: triggers, printers and destinations with their
    state, queue depth, last error and when, jobs per minute;
  - C{POST triggers/NAME/pause|resume}, C{POST destinations/HOST:PORT/pause|resume}:
    stop a trigger accepting or a destination's deliveries starting (queued
    ones wait), and let them go on;
  - C{GET stats?range=hour|day}: jobs per minute (done, failed) and ack
    latency (p50, p99) per point, as the console's charts draw them.

Every POST needs the console's CSRF token and is logged with who asked.

Every error is a 4xx (or 503) with a JSON C{{"error": "..."}} for people.
"""

from __future__ import annotations

import hmac
import json
import math
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from urllib.parse import unquote

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from rawsvc.admin.namespace import destinations, status
from rawsvc.client.address import AddressError, Destination
from rawsvc.console.charts import RANGES
from rawsvc.console.preview import Previewer
from rawsvc.console.source import JobQuery, NoSuchJob
from rawsvc.interfaces import IDestinationControl, IJobControl, IJobRates
from rawsvc.job import Job, Payload
from rawsvc.spool.model import SpoolError
from rawsvc.spool.sink import SpoolSink
from rawsvc.spool.pg_control import job_control
from rawsvc.wiring import REPRINT_FLOW
from rawsvc.states import FilterError, parse_limit, parse_states, split_list

log = Logger(namespace="rawsvc.console")

#: Largest page of jobs.
MAX_PAGE = 500
#: Payload bytes shown by the text and hex views.
VIEW_BYTES = 64 * 1024

LIST_PARAMETERS = ("state", "trigger", "destination", "since", "until", "q", "cursor", "limit")


class ApiError(Exception):
    """An answer other than 200: C{code} and a message for people."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def arg(request: Any, name: str) -> str | None:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def _time(request: Any, name: str) -> float | None:
    text = arg(request, name)
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise FilterError(f"{name} must be a time in Unix seconds, not {text!r}")
    return value


def parse_query(request: Any) -> JobQuery:
    """The job list filters of a request; L{FilterError} names what is wrong."""
    for name in request.args:
        key = name.decode("utf-8", "replace")
        if key not in LIST_PARAMETERS:
            raise FilterError(f"unknown parameter {key!r}; use: {', '.join(LIST_PARAMETERS)}")
    cursor_text = arg(request, "cursor")
    cursor = None
    if cursor_text:
        if not cursor_text.isdigit():
            raise FilterError(f"cursor must be the next_cursor of a page, not {cursor_text!r}")
        cursor = int(cursor_text)
    return JobQuery(
        states=tuple(parse_states(arg(request, "state"))),
        triggers=tuple(split_list(arg(request, "trigger"))),
        destinations=tuple(split_list(arg(request, "destination"))),
        since=_time(request, "since"),
        until=_time(request, "until"),
        text=(arg(request, "q") or "").strip() or None,
        cursor=cursor,
        limit=parse_limit(arg(request, "limit"), 50, MAX_PAGE),
    )


def who(request: Any) -> str:
    """Who sent C{request}: the console user (when logged in) and the address."""
    peer = request.getClientAddress()
    host = peer.host if isinstance(peer, (IPv4Address, IPv6Address)) else str(peer)
    user = getattr(request, "console_user", None)
    return f"{user} from {host}" if user else host


def only(request: Any, allowed: tuple[str, ...]) -> None:
    """L{FilterError} for a parameter of C{request} not in C{allowed}."""
    for name in request.args:
        key = name.decode("utf-8", "replace")
        if key not in allowed:
            raise FilterError(f"unknown parameter {key!r}; use: {', '.join(allowed) or 'none'}")


def hexdump(data: bytes) -> str:
    """Offset, 16 bytes in hex and as ASCII, per line."""
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i:i + 16]
        ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{i:08x}  {chunk.hex(' '):<47}  {ascii_}")
    return "\n".join(lines)


def write_json(request: Any, value: Any, code: int = 200) -> None:
    """Answer C{request} (rendered asynchronously) with C{value} as JSON."""
    send(request, json.dumps(value, default=str).encode("utf-8"), b"application/json", code)


def send(request: Any, body: bytes, content_type: bytes, code: int = 200, headers: dict[bytes, bytes] | None = None) -> None:
    """Finish an asynchronous answer, unless the client has gone."""
    if request.finished or request.channel is None:  # answered, or the client has gone
        return
    request.setResponseCode(code)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    for k, v in (headers or {}).items():
        request.setHeader(k, v)
    request.setHeader(b"content-length", b"%d" % len(body))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


class Console:
    """What the console's resources share: the service, its jobs, the previewer and the CSRF token."""

    def __init__(self, service: Any, jobs: Any, previewer: Previewer, csrf_token: str) -> None:
        self.service = service
        self.jobs = jobs
        self.previewer = previewer
        self.csrf_token = csrf_token

    def check_csrf(self, request: Any) -> None:
        header = request.getHeader(b"x-csrf-token")
        given = header.decode("utf-8", "replace") if header else (arg(request, "csrf") or "")
        if not hmac.compare_digest(given.encode(), self.csrf_token.encode()):
            raise ApiError(403, "missing or wrong CSRF token: reload the console page and try again")

    async def pause(self, request: Any, kind: str, name: str, action: str) -> dict[str, Any]:
        """Pause or resume trigger or destination C{name}; the answer for the API."""
        asker = who(request)
        if kind == "trigger":
            trigger = self.service.triggers.get(name)
            if trigger is None:
                raise ApiError(404, f"no trigger {name!r}; known: {', '.join(sorted(self.service.triggers)) or 'none'}")
            log.info("console: {action} of trigger {trigger} asked by {who}", action=action, trigger=name, who=asker)
            try:
                await maybeDeferred(trigger.pause if action == "pause" else trigger.resume)
            except Exception as e:
                log.error("console: {action} of trigger {trigger} failed: {error}", action=action, trigger=name,
                          error=str(e))
                raise ApiError(409, f"cannot {action} trigger {name}: {e}") from None
            message = f"trigger {name} {action}d by {asker}"
        else:
            pool = self.service.destinations
            if not IDestinationControl.providedBy(pool):
                raise ApiError(409, "this service has no destination pool to pause")
            log.info("console: {action} of destination {destination} asked by {who}", action=action,
                     destination=name, who=asker)
            try:
                changed = pool.pause(name, asker) if action == "pause" else pool.resume(name)
            except AddressError as e:
                raise ApiError(400, f"destination {name!r}: {e}") from None
            message = (f"destination {name} {action}d by {asker}" if changed
                       else f"destination {name} was not {'running' if action == 'pause' else 'paused'}: nothing to do")
        log.info("console: {message}", message=message, trigger=name if kind == "trigger" else None,
                 destination=name if kind != "trigger" else None)
        return {"ok": True, kind: name, "action": action, "message": message}

    def known_destinations(self) -> set[str]:
        """Destinations to offer for a reprint: the config's literal ones and those delivered to."""
        pool = self.service.destinations
        if pool is None:
            return set()
        known = set(pool.named()) if IDestinationControl.providedBy(pool) else set()
        return known | set(destinations(self.service))

    async def reprint(self, request: Any, job_id: str, destination: str) -> dict[str, Any]:
        """Reprint done job C{job_id}: its flow again, or its payload to C{destination} as a new job."""
        detail = await self.jobs.detail(job_id)
        if detail["state"] != "done":
            raise ApiError(409, f"job {job_id} is {detail['state']}: only a done job is reprinted (retry a failed one)")
        sink = self.service.sink
        asker = who(request)
        if not destination:
            if not IJobControl.providedBy(sink):
                raise ApiError(409, "reprint needs the durable spool ([service] spool = true)")
            log.info("console: reprint of job {job_id} (its flow again) asked by {who}", job_id=job_id, who=asker)
            message = await sink.retry(job_id)
            return {"ok": True, "job_id": job_id, "action": "reprint", "message": message}
        try:
            dest = Destination.parse(destination)
        except AddressError as e:
            raise ApiError(400, f"destination {destination!r}: {e}") from None
        pool = self.service.destinations
        if pool is None or not pool.allow.may_allow(dest):
            raise ApiError(400, f"destination {dest} is not in allowed_destinations: choose an allowed one")
        spooled = IJobControl.providedBy(sink)  # the spool sink: its flows include REPRINT_FLOW
        if (not spooled or REPRINT_FLOW not in sink.flows or not isinstance(sink, SpoolSink)
                or not hasattr(self.jobs, "payload_into")):
            raise ApiError(409, "reprint to a destination needs the spool's payloads")
        # The payload is copied on the reader's thread a chunk at a time into
        # a payload that spills to the service's temp directory past 1 MiB:
        # a large job is never read into memory whole.
        payload = Payload(spool_dir=self.service.context.temp_dir)
        await self.jobs.payload_into(job_id, payload)
        job = Job(trigger="console", peer_host=asker.rsplit(" ", 1)[-1], payload=payload)
        job.variables["reprint_of"] = job_id
        job.variables["reprint_destination"] = str(dest)
        job.variables["reprint_by"] = asker
        log.info("console: reprint of job {job_id} to {destination} as job {new} asked by {who}", job_id=job_id,
                 destination=str(dest), new=job.job_id, who=asker)
        stored, finished = sink.submit_stored(job, REPRINT_FLOW)
        finished.addCallback(lambda j: log.info("console: reprint {new} of job {job_id} ended {state}", new=j.job_id,
                                                job_id=job_id, state=str(j.state)))
        finished.addErrback(lambda f: log.failure("console: reprint {new} of job {job_id} failed", f, new=job.job_id,
                                                  job_id=job_id))
        await stored  # stored, or SpoolError: a 503 with the spool's reason (nothing was reprinted)
        return {"ok": True, "job_id": job.job_id, "reprint_of": job_id, "destination": str(dest), "action": "reprint",
                "message": f"job {job_id} reprinted to {dest} as job {job.job_id}"}

    async def preview(self, job_id: str) -> Any:
        cached = self.previewer.cached(job_id)
        if cached is not None:
            return cached
        detail = await self.jobs.detail(job_id)
        limit = self.previewer.max_bytes + 1
        data = await self.jobs.payload(job_id, limit)
        return await self.previewer.preview(job_id, data, detail["payload_size"])


class Api(Resource):
    """C{/api/v1}: one leaf that routes on the rest of the path."""

    isLeaf = True

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def render(self, request: Any) -> Any:
        d = ensureDeferred(self._answer(request))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure: Any, request: Any) -> None:
        if failure.check(ApiError):
            write_json(request, {"error": str(failure.value)}, failure.value.code)
        elif failure.check(FilterError):
            write_json(request, {"error": str(failure.value)}, 400)
        elif failure.check(NoSuchJob):
            write_json(request, {"error": str(failure.value)}, 404)
        elif failure.check(SpoolError):
            write_json(request, {"error": f"spool unavailable: {failure.value}"}, 503)
        else:
            log.failure("console API {path} failed", failure, path=request.path.decode("utf-8", "replace"))
            write_json(request, {"error": "the console could not answer; see the service log"}, 500)

    async def _answer(self, request: Any) -> None:
        parts = [p.decode("utf-8", "replace") for p in request.postpath if p]
        method = request.method.decode("ascii", "replace")
        read = method in ("GET", "HEAD")
        if parts == ["jobs"] and read:
            write_json(request, await self._list(request))
        elif parts == ["destinations"] and read:
            write_json(request, self._destinations())
        elif parts == ["stats"] and read:
            write_json(request, self._stats(request))
        elif len(parts) >= 2 and parts[0] == "jobs":
            await self._job(request, parts[1], parts[2:], method)
        elif len(parts) == 3 and parts[0] in ("triggers", "destinations") and parts[2] in ("pause", "resume"):
            if method != "POST":
                raise ApiError(405, f"{parts[2]} is a POST")
            only(request, ("csrf",))
            self.console.check_csrf(request)
            write_json(request, await self.console.pause(request, parts[0][:-1], unquote(parts[1]), parts[2]))
        elif parts in (["jobs"], ["destinations"], ["stats"]):
            raise ApiError(405, f"{method} is not allowed here; use GET")
        else:
            raise ApiError(404, f"no API endpoint /api/v1/{'/'.join(parts)}")

    async def _list(self, request: Any) -> dict[str, Any]:
        page = await self.console.jobs.page(parse_query(request))
        return {"count": len(page.jobs), "jobs": page.jobs,
                "next_cursor": None if page.next_cursor is None else str(page.next_cursor)}

    def _destinations(self) -> dict[str, Any]:
        service = self.console.service
        report = status(service)
        rates = service.sink.rates if IJobRates.providedBy(service.sink) else None
        triggers = {
            name: {"type": t.get("type"), "state": t.get("state", "up" if t["listening"] else "down"),
                   "listening": t["listening"], "paused": bool(t.get("paused", False)),
                   "address": t.get("address") or t.get("listen"), "counters": t["counters"],
                   "last_error": t.get("last_error") or t.get("error") or "",
                   "last_error_at": t.get("last_error_at"),
                   "jobs_per_minute": round(rates.per_minute(name), 2) if rates is not None else None}
            for name, t in report["triggers"].items()
        }
        return {"triggers": triggers, "printers": report["printers"], "destinations": destinations(service)}

    def _stats(self, request: Any) -> dict[str, Any]:
        only(request, ("range",))
        name = arg(request, "range") or "hour"
        if name not in RANGES:
            raise FilterError(f"range must be {' or '.join(RANGES)}, not {name!r}")
        sink = self.console.service.sink
        if not IJobRates.providedBy(sink):
            raise ApiError(409, "this service's job sink keeps no rates")
        rates = sink.rates
        minutes, bucket = RANGES[name]
        return {"range": name, **rates.series(minutes, bucket)}

    async def _job(self, request: Any, job_id: str, rest: list[str], method: str) -> None:
        jobs = self.console.jobs
        read = method in ("GET", "HEAD")
        if not rest and read:
            write_json(request, await jobs.detail(job_id))
        elif rest == ["payload"] and read:
            await jobs.detail(job_id)  # 404 first
            if not jobs.has_payloads:
                raise ApiError(409, "this service keeps no payloads (it runs without the spool)")
            data = await jobs.payload(job_id)
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id)
            send(request, data, b"application/octet-stream",
                 headers={b"content-disposition": f'attachment; filename="{safe}.prn"'.encode()})
        elif rest == ["view"] and read:
            mode = arg(request, "as") or "text"
            if mode not in ("text", "hex"):
                raise FilterError(f"as must be text or hex, not {mode!r}")
            detail = await jobs.detail(job_id)
            data = await jobs.payload(job_id, VIEW_BYTES) if jobs.has_payloads else b""
            shown = data.decode("utf-8", "replace") if mode == "text" else hexdump(data)
            write_json(request, {"job_id": job_id, "as": mode, "size": detail["payload_size"], "shown_bytes": len(data),
                                 "truncated": detail["payload_size"] > len(data), "content": shown})
        elif rest == ["preview"] and read:
            result = await self._preview(job_id)
            write_json(request, {
                "job_id": job_id, "language": result.language, "labels": len(result.pngs),
                "images": [f"/api/v1/jobs/{job_id}/preview/{i}.png" for i in range(len(result.pngs))],
                "warnings": result.warnings, "error": result.error})
        elif len(rest) == 2 and rest[0] == "preview" and read:
            result = await self._preview(job_id)
            name = rest[1]
            index = int(name[:-4]) if name.endswith(".png") and name[:-4].isdigit() else -1
            if not 0 <= index < len(result.pngs):
                raise ApiError(404, f"job {job_id} has no label image {name}")
            send(request, result.pngs[index], b"image/png", headers={b"cache-control": b"private, max-age=3600"})
        elif len(rest) == 1 and rest[0] in ("retry", "cancel"):
            if method != "POST":
                raise ApiError(405, f"{rest[0]} is a POST")
            self.console.check_csrf(request)
            write_json(request, await self._act(request, rest[0], job_id))
        elif rest == ["reprint"]:
            if method != "POST":
                raise ApiError(405, "reprint is a POST")
            only(request, ("csrf", "destination"))
            self.console.check_csrf(request)
            write_json(request, await self.console.reprint(request, job_id, (arg(request, "destination") or "").strip()))
        else:
            raise ApiError(404, f"no API endpoint /api/v1/jobs/{job_id}/{'/'.join(rest)}")

    async def _preview(self, job_id: str) -> Any:
        if not self.console.jobs.has_payloads:
            raise ApiError(409, "this service keeps no payloads (it runs without the spool): no previews")
        return await self.console.preview(job_id)

    async def _act(self, request: Any, action: str, job_id: str) -> dict[str, Any]:
        sink = job_control(self.console.service)
        if not IJobControl.providedBy(sink):
            raise ApiError(409, f"{action} needs the durable spool ([service] spool = true)")
        log.info("console: {action} of job {job_id} asked by {who}", action=action, job_id=job_id, who=who(request))
        try:
            d: Deferred[str] = sink.retry(job_id) if action == "retry" else sink.cancel(job_id)
            message = await d
        except KeyError:
            raise NoSuchJob(job_id) from None
        log.info("console: {action} of job {job_id}: {message}", action=action, job_id=job_id, message=message)
        return {"ok": True, "job_id": job_id, "action": action, "message": message}
