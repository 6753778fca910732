"""
A farm of L{rawsvc.testing.FakePrinter}s in a process of its own, for the
cluster tests and the cluster bench (their own code blocks on sockets and
subprocesses, so the printers get a reactor of their own):

    python tests/printer_farm.py OUT COUNT [CLOSE_DELAY]

listens on COUNT free loopback ports, each an I{exclusive} printer (one
connection at a time: while one is open the printer does not listen, so a
second sender's connect is refused before it sends a byte, as a busy
AppSocket printer refuses it; one accepted before the listener closed is
reset and recorded), prints C{{"ports": [...]}} on one line once they listen, and
appends one JSON line to OUT per connection as it ends:
C{{"printer": i, "data": base64, "eof": bool, "opened": t, "eof_at": t,
"closed": t, "overlap": bool}} (times from C{time.monotonic()}, the same
clock in every process of the machine).  SIGTERM stops it.
"""

from __future__ import annotations

import base64
import json
import signal
import sys


def main(out_path: str, count: int, close_delay: float) -> None:
    from twisted.internet import reactor

    from rawsvc.testing import FakePrinter, ReceivedJob

    out = open(out_path, "a", buffering=1)

    def record(index: int, job: ReceivedJob, overlap: bool = False) -> None:
        out.write(json.dumps({
            "printer": index, "data": base64.b64encode(job.bytes).decode(), "eof": job.eof_at is not None,
            "opened": job.opened, "eof_at": job.eof_at, "closed": job.closed, "overlap": overlap,
        }) + "\n")

    printers = []
    for i in range(count):
        printer = FakePrinter(close_delay=close_delay, refuse_when_busy=True,
                              on_closed=lambda job, i=i: record(i, job))
        printer.listen()
        printers.append(printer)

    def note_overlaps() -> None:  # the turned-away connections never close as jobs: log them as they come
        for i, printer in enumerate(printers):
            while printer.overlaps:
                record(i, printer.overlaps.pop(0), overlap=True)
        reactor.callLater(0.05, note_overlaps)

    note_overlaps()
    print(json.dumps({"ports": [p.port for p in printers]}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run(installSignalHandlers=False)
    for i, printer in enumerate(printers):
        for job in printer.overlaps:
            record(i, job, overlap=True)
    out.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
