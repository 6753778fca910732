"""
C{rawsvc status HOST[:PORT]}: ask a printer's AppSocket status port (UDP,
9101 by default) for its state, print the answer, exit by state.

It sends a zero-length datagram (again every second until C{--timeout})
and prints the first answer: rawsvc's C{KEY=VALUE} lines (see
L{rawsvc.triggers.appsocket}), or C{--json}.

Exit codes:
  0  idle
  1  busy: receiving or processing a job
  2  usage error (bad arguments)
  3  paused by the operator
  4  error: the last job's flow failed
  5  no answer within --timeout (or the host cannot be resolved)
  6  an answer that is not rawsvc's status format (no STATE= line, or an
     unknown state)
"""

from __future__ import annotations

import json
import socket
import sys
import time

from rawsvc.triggers.appsocket import parse_status

DEFAULT_PORT = 9101

EXIT_IDLE = 0
EXIT_BUSY = 1
EXIT_USAGE = 2
EXIT_PAUSED = 3
EXIT_ERROR = 4
EXIT_NO_ANSWER = 5
EXIT_BAD_ANSWER = 6

EXIT_CODES = {
    "idle": EXIT_IDLE,
    "receiving": EXIT_BUSY,
    "processing": EXIT_BUSY,
    "paused": EXIT_PAUSED,
    "error": EXIT_ERROR,
}


def split_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """C{host}, C{host:port}, C{[v6]:port} or a bare IPv6 address."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad port {port!r} in {text!r}")
        return host, int(port)
    return host, default_port


def query(host: str, port: int, timeout: float, interval: float = 1.0) -> bytes | None:
    """Send the query (repeated every C{interval}); the first answer or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror:
        return None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(addr)  # only answers from the printer's address are read
        deadline = time.monotonic() + timeout
        while True:
            try:
                s.send(b"")
            except OSError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            s.settimeout(min(interval, left))
            try:
                return s.recv(65535)
            except socket.timeout:
                continue
            except OSError:  # ICMP port unreachable: nobody listens (yet)
                time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def status(args) -> int:
    try:
        host, port = split_address(args.address)
    except ValueError as e:
        print(f"rawsvc status: {e}", file=sys.stderr)
        return EXIT_USAGE
    answer = query(host, port, args.timeout)
    if answer is None:
        print(f"rawsvc status: no answer from {host}:{port} (udp) within {args.timeout:g} s", file=sys.stderr)
        return EXIT_NO_ANSWER
    fields = parse_status(answer)
    code = EXIT_CODES.get(fields.get("STATE", ""))
    if args.json:
        print(json.dumps(fields, indent=2))
    else:
        sys.stdout.write(answer.decode("utf-8", "replace"))
    if code is None:
        print(f"rawsvc status: {host}:{port} answered, but not with a known STATE=", file=sys.stderr)
        return EXIT_BAD_ANSWER
    return code


def register(sub) -> None:
    p = sub.add_parser(
        "status",
        help="query a printer's AppSocket status port (UDP 9101)",
        description=__doc__,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("address", metavar="HOST[:PORT]", help=f"the printer (default port {DEFAULT_PORT})")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer (default 3)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=status)
