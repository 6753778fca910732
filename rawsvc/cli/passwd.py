"""
C{rawsvc passwd FILE NAME [--role viewer|operator]}: set NAME's password
in a console users file (C{[admin.http] users_file}), adding the user or
replacing their line; the file is written mode 0600.  The password is
asked twice on a terminal (getpass), else read from the first line of
stdin.

Exit codes: 0 written; 1 the file cannot be read or written; 2 usage
error (bad name, empty password, the two entries differ).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile

import bcrypt

from rawsvc.console.auth import ROLES


def read_password(stdin=None) -> str | None:
    """The new password: asked twice on a terminal, else stdin's first line; None when they differ."""
    stdin = stdin or sys.stdin
    if stdin.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != first:
            return None
        return first
    return stdin.readline().rstrip("\r\n")


def updated_lines(lines: list[str], name: str, role: str, hashed: str) -> list[str]:
    """C{lines} of a users file with NAME's line set (in place, or appended)."""
    entry = f"{name}:{role}:{hashed}"
    out, found = [], False
    for line in lines:
        if line.split(":", 1)[0] == name and not line.lstrip().startswith("#"):
            if not found:
                out.append(entry)
            found = True
        else:
            out.append(line)
    if not found:
        out.append(entry)
    return out


def write_private(path: str, text: str) -> None:
    """Replace C{path} with C{text} atomically, mode 0600 from the start."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".passwd-", dir=folder)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def passwd(args: argparse.Namespace) -> int:
    if not args.name or any(c in args.name for c in ":\r\n") or args.name.strip() != args.name:
        print(f"rawsvc passwd: a user name cannot be empty or hold ':', spaces at its ends or line breaks: "
              f"{args.name!r}", file=sys.stderr)
        return 2
    password = read_password()
    if password is None:
        print("rawsvc passwd: the two passwords differ; nothing written", file=sys.stderr)
        return 2
    if not password:
        print("rawsvc passwd: an empty password; nothing written", file=sys.stderr)
        return 2
    try:
        with open(args.file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as e:
        print(f"rawsvc passwd: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 1
    hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(args.rounds)).decode("ascii")
    try:
        write_private(args.file, "\n".join(updated_lines(lines, args.name, args.role, hashed)) + "\n")
    except OSError as e:
        print(f"rawsvc passwd: cannot write {args.file}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"rawsvc passwd: {args.name} ({args.role}) set in {args.file}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("passwd", help="set a console user's password ([admin.http] users_file)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="the users file (created 0600 when missing)")
    p.add_argument("name", metavar="NAME", help="the user")
    p.add_argument("--role", choices=ROLES, default="viewer", help="viewer (looks) or operator (acts); default viewer")
    p.add_argument("--rounds", type=int, default=12, choices=range(4, 32), metavar="N",
                   help="bcrypt cost (default 12)")
    p.set_defaults(func=passwd)
