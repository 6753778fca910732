"""The twistd plugin's options and service factory: C{twistd rawsvc}."""

from __future__ import annotations

import sys

from twisted.python import usage

from rawsvc import __version__
from rawsvc.config import DEFAULT_CONFIG, load
from rawsvc.errors import ConfigError


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run rawsvc on a TOML config (see README.md and etc/rawsvc.toml)."
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "Path to the TOML config file."],
    ]

    def postOptions(self) -> None:
        """With C{[service] log_format = "json"}, twistd logs JSON lines (L{rawsvc.logs})."""
        from rawsvc import logs

        logs.install(self["config"], getattr(self, "parent", None))

    def opt_version(self) -> None:
        """Print rawsvc's version and exit."""
        print(f"rawsvc {__version__}")
        sys.exit(0)


def makeService(options: Options):
    from rawsvc.service import RawService

    try:
        config = load(options["config"])
    except ConfigError as e:
        sys.stderr.write(f"rawsvc: the config has {len(e.errors)} error(s); not starting:\n")
        for line in e.errors:
            sys.stderr.write(f"  {line}\n")
        sys.stderr.flush()
        raise SystemExit(1)
    service = RawService(config)
    service.exit_on_error = True
    return service
