"""
What a trigger or action may need while it is built: the reactor, the state
directory, and the service's shared components (destination queues, the
job sink, other triggers), created on first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs

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
    reactor: Any = None
    components: dict[str, Any] = attrs.field(factory=dict)
    #: Set by the loader: every trigger's validated options, by name.
    trigger_options: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    #: Set by the loader before triggers are built: every flow, by name.
    flows: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor

    @property
    def config_dir(self) -> str:
        return os.path.dirname(os.path.abspath(self.config_path)) if self.config_path != "<memory>" else os.getcwd()

    def resolve_path(self, path: str) -> str:
        """Relative paths in the config are relative to the working directory."""
        return os.path.abspath(path)

    def component(self, name: str, factory: Callable[[], Any]) -> Any:
        """The shared component C{name}, built by C{factory} on first use."""
        if name not in self.components:
            self.components[name] = factory()
        return self.components[name]

    @property
    def temp_dir(self) -> str:
        return os.path.join(self.state_dir, "tmp")
