"""
C{rawsvc check-config [FILE]}: the service's own validation, nothing
started: one summary line (with the absolute state_dir) and exit 0, or every
error and exit 1.
"""

from __future__ import annotations

from rawsvc.cli._common import print_config_errors
from rawsvc.config import DEFAULT_CONFIG, load
from rawsvc.errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser("check-config", help="validate a config file without starting anything")
    p.add_argument("file", nargs="?", default=DEFAULT_CONFIG,
                   help=f"path to the TOML config (default {DEFAULT_CONFIG}, as for twistd rawsvc)")
    p.set_defaults(func=check_config)


def check_config(args) -> int:
    try:
        config = load(args.file)
    except ConfigError as e:
        print_config_errors(args.file, e)
        return 1
    print(config.summary())
    return 0
