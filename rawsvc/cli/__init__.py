"""
The C{rawsvc} command (C{rawsvc.cli:main}, also C{python -m rawsvc}):
C{--version} and one module of this package per subcommand.

Each subcommand module has C{register(subparsers)} that adds its parser and
sets C{func(args) -> exit code}; the argument parsing and the printing live
here, the logic in the modules they call (L{rawsvc.config},
L{rawsvc.spool.browse}, L{rawsvc.spool.check} ...).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rawsvc import __version__

#: Subcommand modules, each with a C{register(subparsers)} function.
SUBCOMMANDS = [
    "rawsvc.cli.check_config",  # check-config
    "rawsvc.cli.plugin_cache",  # plugin-cache
    "rawsvc.cli.send",          # send
    "rawsvc.cli.status",        # status
    "rawsvc.cli.jobs",          # jobs, job, retry, cancel
    "rawsvc.cli.spool",         # spool check, spool salvage
    "rawsvc.cli.config_keys",   # config-keys
    "rawsvc.cli.preview",       # preview
    "rawsvc.cli.passwd",        # passwd
]


def build_parser() -> argparse.ArgumentParser:
    """The C{rawsvc} parser with every subcommand that imports."""
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
    """Run C{rawsvc ARGV}; the exit status."""
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
