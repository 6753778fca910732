"""
What a trigger or action may need while it is built: the reactor, the state
directory, and the parts it is wired to, each a typed field set in one
place (L{rawsvc.wiring}): the destination pool, the job sink, the triggers
built so far.  There is no registry to fetch things from at run time.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import IService

from rawsvc.interfaces import IJobSink, IJobStore, ITrigger

if TYPE_CHECKING:
    from rawsvc.client.destinations import DestinationPool
    from rawsvc.client.http_clients import HttpClients
    from rawsvc.flow import Flow

#: Where state lives when the config does not say.
DEFAULT_STATE_DIR = "var/rawsvc"


def config_relative(config_path: str, path: str) -> str:
    """
    C{path} made absolute: a relative one is taken from the config file's
    folder (the working directory for a config that is not a file), so a
    config means the same state_dir whatever the directory it is run from.
    """
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return os.path.normpath(path)
    base = os.path.dirname(os.path.abspath(config_path)) if config_path != "<memory>" else os.getcwd()
    return os.path.normpath(os.path.join(base, path))


@attrs.define(eq=False)
class BuildContext:
    """Passed to every C{from_config}."""

    config_path: str = "<memory>"
    state_dir: str = DEFAULT_STATE_DIR
    service_options: dict[str, Any] = attrs.field(factory=dict)
    #: The validated C{[cluster]} table with a PostgreSQL spool (L{rawsvc.cluster.settings}), else None.
    cluster_options: dict[str, Any] | None = None
    reactor: Any = None
    #: Set by the loader: every trigger's validated options, by name.
    trigger_options: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    #: Set by the loader before triggers are built: every flow, by name.
    flows: dict[str, Flow] = attrs.field(factory=dict)
    #: The outbound destination pool every send_tcp action shares (an IDestinationPool;
    #: send_tcp drives the concrete pool, so it is typed as one).
    destinations: DestinationPool = attrs.field(default=None)
    #: The HTTP clients (one connection pool per TLS setting) every http action shares.
    http_clients: HttpClients = attrs.field(default=None)
    #: The job sink triggers hand their jobs to (an IJobSink): built by the
    #: loader after the flows (L{rawsvc.wiring.build_sink}); a test may set its own first.
    sink: IJobSink | None = None
    #: The durable store behind the sink, when the spool is on (else None).
    store: IJobStore | None = None
    #: The triggers built so far, by name (a status responder finds its printer here).
    triggers: dict[str, ITrigger] = attrs.field(factory=dict)
    #: Services the wiring built that the service tree owns (the pool, the spool), in stop order.
    services: list[IService] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        if self.destinations is None:
            from rawsvc.client.destinations import DestinationPool

            self.destinations = DestinationPool(self.reactor)
        if self.http_clients is None:
            from rawsvc.client.http_clients import HttpClients

            self.http_clients = HttpClients(self.reactor)

    @property
    def config_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.config_path)) if self.config_path != "<memory>" else os.getcwd()

    def resolve_path(self, path: str) -> str:
        """Relative paths in the config are relative to the working directory."""
        return os.path.abspath(path)

    @property
    def temp_dir(self) -> str:
        return os.path.join(self.state_dir, "tmp")
