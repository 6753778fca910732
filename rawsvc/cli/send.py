"""
rawsvc send HOST:PORT [FILE|-]: send a file to a raw TCP/IP port, the way
"nc host 9100 < file" should: connect, send every byte, half-close
(shutdown(SHUT_WR)), print the printer's back-channel reply to stdout,
and say how it went in the exit code.

By default it waits for the printer to close the connection (the AppSocket
end of job) for up to --timeout seconds; --delay SECONDS instead reads the
reply for that long after the last byte and then closes.

With its standard error a terminal, a file of 1 MiB or more shows a progress bar there (bytes handed to the connection, rate);
otherwise, or with --no-progress, nothing but errors is written there.

Exit codes::

    0  delivered
    1  other failure (reset after every byte was written, internal error)
    2  bad arguments (usage, HOST:PORT, unreadable FILE)
    3  connection refused (printer busy or not listening), after --retries
    4  timeout: connecting, or waiting for the printer to close
    5  connection reset mid-job (the bytes written so far are on stderr)
    6  host name not found (DNS)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Any, BinaryIO, TextIO

EXIT_DELIVERED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_TIMEOUT = 4
EXIT_RESET = 5
EXIT_DNS = 6

#: Files at least this large show a progress bar (when standard error is a terminal).
PROGRESS_MIN = 1 << 20
#: Seconds between redraws of the bar.
REDRAW = 0.1
BAR_WIDTH = 30


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f}"


class Progress:
    """A one-line progress bar on C{out} (a terminal): bytes read of C{total}, the rate."""

    def __init__(self, total: int, out: TextIO, clock: Any = time.monotonic) -> None:
        self.total = total
        self.out = out
        self.clock = clock
        self.done = 0
        self.started = clock()
        self._drawn = -REDRAW
        #: A line is drawn and not yet ended.
        self._open = False

    def line(self) -> str:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(BAR_WIDTH * fraction)
        elapsed = max(self.clock() - self.started, 1e-6)
        return (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:3.0f}% "
                f"{_mib(self.done)}/{_mib(self.total)} MiB {_mib(self.done / elapsed)} MiB/s")

    def add(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if now - self._drawn >= REDRAW or self.done >= self.total:
            self._drawn = now
            self._open = True
            self.out.write("\r" + self.line())
            self.out.flush()

    def restart(self) -> None:
        """A new attempt: from zero again."""
        self.finish()
        self.done = 0
        self.started = self.clock()
        self._drawn = -REDRAW

    def finish(self) -> None:
        """End the line (before anything else is written there)."""
        if self._open:
            self._open = False
            self.out.write("\n")
            self.out.flush()


class _Counted:
    """A file whose reads advance a L{Progress}."""

    def __init__(self, f: BinaryIO, progress: Progress) -> None:
        self.f = f
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.progress.add(len(data))
        return data

    def close(self) -> None:
        self.f.close()
        self.progress.finish()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def wants_progress(args: argparse.Namespace, size: int, err: Any = None) -> bool:
    """Whether to draw the bar: a large file, standard error a terminal, no --no-progress."""
    err = sys.stderr if err is None else err
    if getattr(args, "no_progress", False) or size < PROGRESS_MIN:
        return False
    try:
        return bool(err.isatty())
    except (AttributeError, ValueError):
        return False


EXIT_CODES = {
    "delivered": EXIT_DELIVERED,
    "refused": EXIT_REFUSED,
    "connect_timeout": EXIT_TIMEOUT,
    "reply_timeout": EXIT_TIMEOUT,
    "reset": EXIT_RESET,
    "dns_failure": EXIT_DNS,
}


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def _count(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number 0 or more")
    return int(value)


def _encoding(value: str) -> str:
    from rawsvc.errors import ConfigIssue
    from rawsvc.template import check_encoding

    try:
        return check_encoding(value)
    except ConfigIssue as e:
        raise argparse.ArgumentTypeError(e.message) from None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "send",
        help="send a file to a raw TCP/IP port (JetDirect/AppSocket) and print the reply",
        description=__doc__.split("Exit codes::")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 delivered, 1 other failure, 2 bad arguments, 3 refused, "
        "4 timeout, 5 reset mid-job, 6 host not found",
    )
    parser.add_argument("destination", metavar="HOST:PORT", help="e.g. 127.0.0.1:9100 or [::1]:9100")
    parser.add_argument("file", metavar="FILE", nargs="?", default="-", help="what to send; - (default) is stdin")
    parser.add_argument(
        "--delay", type=_seconds, default=None, metavar="SECONDS",
        help="read the reply this long after the last byte, then close "
        "(default: wait for the printer to close, up to --timeout)",
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=10.0, metavar="SECONDS",
        help="connect timeout, and how long to wait for the printer to close (default 10)",
    )
    parser.add_argument(
        "--encoding", type=_encoding, default=None,
        help="decode the reply with this encoding and print it as text (default: raw bytes)",
    )
    parser.add_argument("--retries", type=_count, default=0, help="retry a refused or reset connection N times (default 0)")
    parser.add_argument(
        "--retry-delay", type=_seconds, default=1.0, metavar="SECONDS",
        help="first wait before a retry, doubled each time up to 30 s (default 1)",
    )
    parser.add_argument("--no-half-close", action="store_true", help="do not shut down the write side after sending")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (default: one on a terminal for files of 1 MiB or more)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each attempt to stderr")
    parser.set_defaults(func=run)


def _error(message: str) -> None:
    print(f"rawsvc send: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from rawsvc.client.address import AddressError, Destination

    try:
        dest = Destination.parse(args.destination)
    except AddressError as e:
        _error(str(e))
        return EXIT_USAGE
    spooled: BinaryIO | None = None
    if args.file == "-":
        spooled = tempfile.TemporaryFile()
        shutil.copyfileobj(sys.stdin.buffer, spooled, 1 << 20)
        size = spooled.tell()
        path = None
    else:
        path = args.file
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
        except OSError as e:
            _error(f"cannot read {path}: {e.strerror or e}")
            return EXIT_USAGE

    def opener() -> BinaryIO:
        if spooled is not None:
            spooled.seek(0)
            return os.fdopen(os.dup(spooled.fileno()), "rb")
        assert path is not None  # no spooled stdin: a file was named
        return open(path, "rb")

    progress = Progress(size, sys.stderr) if wants_progress(args, size) else None
    source = opener
    if progress is not None:
        shown = progress

        def source() -> Any:
            shown.restart()
            return _Counted(opener(), shown)

    try:
        return _send(args, dest, source, size)
    finally:
        if progress is not None:
            progress.finish()
        if spooled is not None:
            spooled.close()


def _send(args: argparse.Namespace, dest: Any, opener: Any, size: int) -> int:
    from twisted.internet.task import react

    from rawsvc.client.address import AllowList
    from rawsvc.client.destinations import DestinationPool
    from rawsvc.client.protocol import SendSettings

    settings = SendSettings(
        connect_timeout=args.timeout or 10.0,
        disconnect_delay=args.delay or 0.0,
        wait_for_eof=args.delay is None,
        eof_timeout=args.timeout or 10.0,
        half_close=not args.no_half_close,
        retries=args.retries,
        retry_delay=args.retry_delay or 0.001,
        max_retry_delay=30.0,
    )
    outcome: list[int] = []

    def main(reactor: Any) -> Any:
        if args.verbose:
            from twisted.logger import globalLogBeginner, textFileLogObserver

            globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
        # The user names the destination on the command line: no allow-list.
        pool = DestinationPool(reactor, AllowList.allow_all())
        d = pool.deliver(dest, opener, settings, "cli", size)
        d.addCallback(_report, args, outcome)
        return d

    try:
        react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else EXIT_FAILED
    return outcome[0] if outcome else EXIT_FAILED


def _report(result: Any, args: argparse.Namespace, outcome: list[int]) -> None:
    if result.reply:
        if args.encoding:
            sys.stdout.write(result.reply.decode(args.encoding, "replace"))
            sys.stdout.flush()
        else:
            sys.stdout.buffer.write(result.reply)
            sys.stdout.buffer.flush()
    if result.ok:
        if args.verbose:
            _error(f"{result.message} ({result.attempts} attempt(s), ended by {result.ending})")
    else:
        _error(result.message)
    outcome.append(EXIT_CODES.get(result.outcome, EXIT_FAILED))
