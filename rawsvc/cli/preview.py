"""
C{rawsvc preview FILE [-o OUT.png]}: draw the ZPL labels of FILE as PNG
images, offline, as the console does (the same renderer and printer
profile, L{rawsvc.console.zpl}; the same worker process, bounded by
C{--timeout}).  One label: OUT.png; several: OUT-1.png, OUT-2.png ...
Without C{-o}: FILE's name with C{.png}.  The renderer's warnings go to
stderr.

Exit codes:
  0  every label drawn
  1  nothing drawn: not ZPL (its language is printed), or the renderer
     refused it (too large, malformed, past the time limit)
  2  usage error (no such file, bad arguments)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys

from rawsvc.console import zpl


def output_names(out: str, count: int) -> list[str]:
    """The file names for C{count} labels drawn to C{out}."""
    if count == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}-{i}{ext or '.png'}" for i in range(1, count + 1)]


def preview(args: argparse.Namespace) -> int:
    try:
        with open(args.file, "rb") as f:
            data = f.read(zpl.MAX_BYTES + 1)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        print(f"rawsvc preview: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    language = zpl.detect_language(data)
    if language != "zpl":
        print(f"rawsvc preview: {args.file} is {language}, not ZPL: no preview", file=sys.stderr)
        return 1
    if size > zpl.MAX_BYTES:
        print(f"rawsvc preview: {args.file} is {size} bytes; previews are drawn up to {zpl.MAX_BYTES} bytes",
              file=sys.stderr)
        return 1
    try:
        done = subprocess.run([sys.executable, "-m", "rawsvc.console.render_worker"], input=data,
                              capture_output=True, timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        print(f"rawsvc preview: drawing {args.file} took longer than {args.timeout:g} s; stopped", file=sys.stderr)
        return 1
    if done.returncode != 0:
        print(f"rawsvc preview: the renderer failed: {done.stderr.decode('utf-8', 'replace')[-500:]}", file=sys.stderr)
        return 1
    answer = json.loads(done.stdout)
    for warning in answer["warnings"]:
        print(f"rawsvc preview: warning: {warning}", file=sys.stderr)
    if answer["error"]:
        print(f"rawsvc preview: {answer['error']}", file=sys.stderr)
        return 1
    pngs = [base64.b64decode(p) for p in answer["pngs"]]
    if not pngs:
        print(f"rawsvc preview: {args.file} has no label (no ^XA ... ^XZ)", file=sys.stderr)
        return 1
    out = args.output or os.path.splitext(args.file)[0] + ".png"
    for name, png in zip(output_names(out, len(pngs)), pngs):
        with open(name, "wb") as f:
            f.write(png)
        print(name)
    return 0


def register(sub) -> None:
    p = sub.add_parser("preview", help="draw a ZPL file's labels as PNG images (offline)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="a ZPL job (as a printer would receive it)")
    p.add_argument("-o", "--output", metavar="OUT.png", help="where to write (several labels: OUT-1.png ...)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds the renderer may take (default 30)")
    p.set_defaults(func=preview)
