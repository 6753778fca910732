"""
C{rawsvc config-keys [TABLE ...]}: README's configuration key tables,
printed from the option declarations; C{--update FILE} rewrites the marked
tables of FILE, C{--check FILE} says whether they agree.
"""

from __future__ import annotations

import argparse
import difflib
import sys

from rawsvc import keytables


def register(sub) -> None:
    p = sub.add_parser("config-keys", help="print the config key tables (README's) from the declarations")
    p.add_argument("tables", nargs="*", metavar="TABLE",
                   help="service, flow, trigger.TYPE, action.TYPE or admin.SECTION (default: every built-in one)")
    p.add_argument("--list", action="store_true", help="list the built-in tables' names")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--update", metavar="FILE",
                       help="rewrite every <!-- keys: TABLE --> ... <!-- /keys --> block of FILE")
    group.add_argument("--check", metavar="FILE",
                       help="exit 1, showing the difference, when FILE's marked tables disagree")
    p.set_defaults(func=config_keys)


def config_keys(args: argparse.Namespace) -> int:
    try:
        if args.list:
            print("\n".join(keytables.table_names()))
            return 0
        if args.update or args.check:
            return _file(args.update or args.check, args.tables or None, write=bool(args.update))
        for i, name in enumerate(args.tables or keytables.table_names()):
            table = keytables.render(name)
            sys.stdout.write(("\n" if i else "") + f"<!-- keys: {name} -->\n{table}<!-- /keys -->\n")
        return 0
    except keytables.UnknownTable as e:
        print(f"rawsvc config-keys: {e}", file=sys.stderr)
        return 2


def _file(path: str, names: list[str] | None, write: bool) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        print(f"rawsvc config-keys: cannot read {path}: {e.strerror}", file=sys.stderr)
        return 2
    new = keytables.update(text, names)
    if write:
        if new != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
        print(f"{path}: {len(keytables.blocks(text))} table(s), {'rewritten' if new != text else 'unchanged'}")
        return 0
    if new == text:
        print(f"{path}: {len(keytables.blocks(text))} table(s) agree with the declarations")
        return 0
    sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), path, "declarations"))
    print(f"{path}: tables disagree with the declarations; regenerate: rawsvc config-keys --update {path}",
          file=sys.stderr)
    return 1
