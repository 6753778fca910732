"""
The C{rawsvc} command: C{check-config}, C{--version}, and the subcommands
other modules register (C{send}, C{status}, C{jobs} ...).

Each subcommand module has C{register(subparsers)} that adds its parser and
sets C{func(args) -> exit code}.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rawsvc import __version__

#: Subcommand modules, each with a C{register(subparsers)} function.
SUBCOMMANDS = [
    "rawsvc.cli_config",
    "rawsvc.cli_plugincache",
    "rawsvc.client.cli",
    "rawsvc.triggers.status_cli",
    "rawsvc.spool.cli",
    "rawsvc.spool.check_cli",
    "rawsvc.cli_keys",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rawsvc", description="rawsvc: raw TCP/IP device and print integration."
    )
    parser.add_argument("--version", action="version", version=f"rawsvc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            _broken(name, e)
            continue
        except Exception as e:  # one broken subcommand must not break the others
            _broken(name, e)
            continue
        module.register(sub)
    return parser


def _broken(name: str, error: Exception) -> None:
    print(f"rawsvc: warning: subcommands from {name} unavailable: {type(error).__name__}: {error}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
