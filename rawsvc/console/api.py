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
  - C{GET destinations}: triggers, printers and destinations with their
    state, queue depth and last error.

Every error is a 4xx (or 503) with a JSON C{{"error": "..."}} for people.
"""

from __future__ import annotations

import hmac
import json
import math
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from rawsvc.admin.namespace import destinations, status
from rawsvc.console.preview import Previewer
from rawsvc.console.source import JobQuery, NoSuchJob
from rawsvc.interfaces import IJobControl
from rawsvc.spool.model import SpoolError
from rawsvc.spool.pg_control import job_control
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
        elif len(parts) >= 2 and parts[0] == "jobs":
            await self._job(request, parts[1], parts[2:], method)
        elif parts in (["jobs"], ["destinations"]):
            raise ApiError(405, f"{method} is not allowed here; use GET")
        else:
            raise ApiError(404, f"no API endpoint /api/v1/{'/'.join(parts)}")

    async def _list(self, request: Any) -> dict[str, Any]:
        page = await self.console.jobs.page(parse_query(request))
        return {"count": len(page.jobs), "jobs": page.jobs,
                "next_cursor": None if page.next_cursor is None else str(page.next_cursor)}

    def _destinations(self) -> dict[str, Any]:
        report = status(self.console.service)
        triggers = {
            name: {"type": t.get("type"), "state": t.get("state", "up" if t["listening"] else "down"),
                   "listening": t["listening"], "paused": bool(t.get("paused", False)),
                   "address": t.get("address") or t.get("listen"), "counters": t["counters"]}
            for name, t in report["triggers"].items()
        }
        return {"triggers": triggers, "printers": report["printers"], "destinations": destinations(self.console.service)}

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
        peer = request.getClientAddress()
        who = peer.host if isinstance(peer, (IPv4Address, IPv6Address)) else str(peer)
        log.info("console: {action} of job {job_id} asked by {who}", action=action, job_id=job_id, who=who)
        try:
            d: Deferred[str] = sink.retry(job_id) if action == "retry" else sink.cancel(job_id)
            message = await d
        except KeyError:
            raise NoSuchJob(job_id) from None
        log.info("console: {action} of job {job_id}: {message}", action=action, job_id=job_id, message=message)
        return {"ok": True, "job_id": job_id, "action": action, "message": message}
