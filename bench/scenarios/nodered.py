"""
Node-RED 4 for the line round trip: C{npm install node-red@4} into a cache
directory at bench time, a flow C{tcp in} (stream, '\\n') -> C{function} ->
C{tcp out} (reply to TCP), no editor.  Its listener binds every interface
(Node-RED has no bind option for C{tcp in}): run the bench on this machine only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from harness import BASELINES, Proc, free_port

CACHE = Path(os.environ.get("BENCH_NODERED_DIR", Path.home() / ".cache" / "rawsvc-bench" / "node-red"))


def install() -> tuple[Path | None, str]:
    red = CACHE / "node_modules" / "node-red" / "red.js"
    if red.exists():
        return red, ""
    if not (shutil.which("node") and shutil.which("npm")):
        return None, "node/npm not installed"
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        out = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "node-red@4"],
            cwd=CACHE, capture_output=True, text=True, timeout=300,
        )
    except subprocess.TimeoutExpired:
        return None, "npm install node-red@4 timed out"
    if out.returncode != 0 or not red.exists():
        return None, f"npm install node-red@4 failed: {(out.stderr or out.stdout).strip().splitlines()[-1:]}"
    return red, ""


def start(ctx, port: int) -> tuple[Proc | None, str]:
    red, why = install()
    if red is None:
        return None, why
    user_dir = ctx.workdir / "node-red"
    user_dir.mkdir(exist_ok=True)
    flows = user_dir / "flows.json"
    flows.write_text((BASELINES / "nodered_flow.json").read_text().replace("@PORT@", str(port)))
    env = dict(os.environ, BENCH_NODERED_FLOWS=str(flows), BENCH_NODERED_USERDIR=str(user_dir),
               BENCH_NODERED_UI_PORT=str(free_port()))
    argv = ["node", str(red), "--settings", str(BASELINES / "nodered_settings.js"), "--userDir", str(user_dir)]
    return Proc("node-red", argv, ctx.workdir, env=env), ""


def version() -> str:
    pkg = CACHE / "node_modules" / "node-red" / "package.json"
    if not pkg.exists():
        return ""
    import json

    return json.loads(pkg.read_text()).get("version", "")
