"""
The operator console on the admin HTTP listener: the JSON API
(L{rawsvc.console.api}, C{/api/v1/...}), the pages that use it
(L{rawsvc.console.pages}, C{/console/...}, drawn with
C{twisted.web.template}: see that module for why), offline ZPL label
previews (L{rawsvc.console.preview}, L{rawsvc.console.zpl}) and the
vendored stylesheet and script (L{rawsvc.console.static}).

L{install} puts it on the admin site's root resource.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.web.resource import Resource
from twisted.web.util import redirectTo

from rawsvc.console.api import Api, Console
from rawsvc.console.pages import Pages
from rawsvc.console.preview import Previewer
from rawsvc.console.source import MemoryJobs, PgJobs, SpoolJobs
from rawsvc.console.static import static_resource

__all__ = ["Console", "install", "make_console"]


def make_console(service: Any) -> Console:
    """
    The console of C{service}: its jobs from the SQLite spool when it has
    one, every node's from a PostgreSQL spool, else (no spool) from the
    sink's history.
    """
    from rawsvc.spool.pg_control import cluster_of

    reactor = service.context.reactor
    cluster = cluster_of(service)
    if cluster is not None:
        jobs: Any = PgJobs(cluster.reader)
    elif service.config.service.get("spool", True) is True:  # the SQLite spool
        from rawsvc.spool.sink import SpoolSink

        # Reads wait for the index to hold every write acknowledged before them.
        flush = service.sink.store.flush if isinstance(service.sink, SpoolSink) else None
        jobs = SpoolJobs(service.context.state_dir, reactor, reactor.getThreadPool(), flush)
    else:
        jobs = MemoryJobs(service.sink)
    # One token per process, shown in every page: a cross-site page cannot read it.
    return Console(service, jobs, Previewer(reactor), secrets.token_urlsafe(24))


def install(root: Resource, service: Any) -> Console:
    """Add C{/console} and C{/api/v1} under C{root}; the console made."""
    console = make_console(service)
    root.putChild(b"console", ConsoleRoot(Pages(console)))
    api = Resource()
    api.putChild(b"v1", Api(console))
    root.putChild(b"api", api)
    return console


class ConsoleRoot(Resource):
    """C{/console}: C{static/} for the stylesheet and script, the pages for every other path."""

    def __init__(self, pages: Pages) -> None:
        super().__init__()
        self.pages = pages
        self.putChild(b"static", static_resource())

    def getChild(self, path: bytes, request: Any) -> Resource:
        return self.pages

    def render_GET(self, request: Any) -> bytes:
        """C{/console} without its slash: on to C{/console/} (the jobs page)."""
        return redirectTo(b"/console/", request)

    def render_HEAD(self, request: Any) -> bytes:
        return self.render_GET(request)
