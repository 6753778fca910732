"""
The preview worker: C{python -m rawsvc.console.render_worker} reads one
job's payload on stdin, draws it (L{rawsvc.console.zpl.render}) and writes
one JSON object on stdout: C{language}, C{warnings}, C{error} and
C{pngs} (base64).  A process of its own, so that the service can kill a
render that runs past its time: a thread inside the renderer cannot be
interrupted.
"""

from __future__ import annotations

import base64
import json
import sys

from rawsvc.console.zpl import render


def main() -> int:
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
    sys.exit(main())
