"""
The preview worker: C{python -m rawsvc.console.render_worker} reads one
job's payload on stdin, draws it (L{rawsvc.console.zpl.render}) and writes
one JSON object on stdout: C{language}, C{warnings}, C{error} and
C{pngs} (base64).  A process of its own, so that the service can kill a
render that runs past its time: a thread inside the renderer cannot be
interrupted.

With C{--spare SECONDS} it is a spare: it imports the renderer first, then
waits up to SECONDS for its payload (none: it exits, writing nothing).
"""

from __future__ import annotations

import base64
import json
import os
import select
import sys

from rawsvc.console.zpl import render


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--spare":
        try:
            import zplkit  # noqa: F401  (drawn faster once fed)
        except ImportError:
            pass
        ready, _, _ = select.select([sys.stdin], [], [], float(argv[1]))
        if not ready:
            return 0
    data = sys.stdin.buffer.read()
    result = render(data)
    json.dump(
        {
            "language": result.language,
            "warnings": result.warnings,
            "error": result.error,
            "pngs": [base64.b64encode(p).decode("ascii") for p in result.pngs],
        },
        sys.stdout,
    )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)  # the answer is out: no interpreter teardown (it costs more than the render)
