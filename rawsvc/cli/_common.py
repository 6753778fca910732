"""
What several subcommands share: the C{--state-dir}/C{-c} options, the state
directory they name (read through L{rawsvc.config.service_config}, so as the
service reads it), and how a broken config is reported.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from rawsvc.config import DEFAULT_CONFIG, service_config
from rawsvc.context import DEFAULT_STATE_DIR
from rawsvc.errors import ConfigError

#: Exit status of a command whose config does not validate (check-config itself exits 1).
EXIT_CONFIG = 2


def state_dir_options(p: argparse.ArgumentParser) -> None:
    """Add C{--state-dir DIR} and C{-c/--config FILE}."""
    p.add_argument("--state-dir", metavar="DIR", help="the service's state directory (default: from --config)")
    p.add_argument("-c", "--config", metavar="FILE", default=None,
                   help=f"read [service] state_dir from this config (default {DEFAULT_CONFIG} if present, "
                        f"as for twistd rawsvc, else {DEFAULT_STATE_DIR})")


def state_dir_of(args: argparse.Namespace) -> str:
    """
    The absolute state directory: C{--state-dir} (from the working
    directory), else C{[service] state_dir} of C{--config} (default
    L{DEFAULT_CONFIG} when it exists), validated and resolved as the service
    resolves it (from the config file's folder).  A config that does not
    validate raises L{ConfigError}.
    """
    if args.state_dir:
        return os.path.abspath(args.state_dir)
    return service_config(args.config).state_dir


def pg_spool_of(args: argparse.Namespace) -> str | None:
    """
    The PostgreSQL URI of C{[service] spool} when the config read (C{--config},
    else L{DEFAULT_CONFIG} when it exists and no C{--state-dir} is given)
    names one; None for a SQLite spool (or none).  A config that does not
    validate raises L{ConfigError}.
    """
    from rawsvc.spool.pg_schema import is_pg_uri

    if args.config is None and (args.state_dir or not os.path.exists(DEFAULT_CONFIG)):
        return None
    spool = service_config(args.config).settings.spool
    return spool if is_pg_uri(spool) else None


def with_spool(args: argparse.Namespace, run: Callable[[argparse.Namespace, str, str | None], int]) -> int:
    """C{run(args, state_dir, pg_uri)} (see L{pg_spool_of}); a config that does not validate exits L{EXIT_CONFIG}."""
    try:
        state_dir = state_dir_of(args)
        uri = pg_spool_of(args)
    except ConfigError as e:
        print_config_errors(args.config or DEFAULT_CONFIG, e)
        return EXIT_CONFIG
    return run(args, state_dir, uri)


def print_config_errors(path: str, error: ConfigError) -> None:
    """A config's errors on stderr, as check-config lists them: a heading, then file: table: key: message."""
    print(f"{path}: {len(error.errors)} error(s):", file=sys.stderr)
    for line in error.errors:
        print(f"  {line}", file=sys.stderr)


def with_state_dir(args: argparse.Namespace, run: Callable[[argparse.Namespace, str], int]) -> int:
    """C{run(args, state_dir)}; a config that does not validate is listed and exits L{EXIT_CONFIG}."""
    try:
        state_dir = state_dir_of(args)
    except ConfigError as e:
        print_config_errors(args.config or DEFAULT_CONFIG, e)
        return EXIT_CONFIG
    return run(args, state_dir)


def say(args: Any, message: str) -> None:
    """One line on stderr, C{rawsvc COMMAND: message}."""
    print(f"rawsvc {args.command}{_sub(args)}: {message}", file=sys.stderr)


def _sub(args: Any) -> str:
    sub = getattr(args, "spool_command", None)
    return f" {sub}" if sub else ""
