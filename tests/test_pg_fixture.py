"""
The session PostgreSQL fixture (L{pg_support.pg_server}) when several test
modules import it: each import is a session fixture of its own, and all of
them share one server; the run ends without an error at teardown (the last
one removes the server).  Run as a pytest of its own in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import HERE, require_module
from pg_support import pg_bin

MODULE = '''
import conftest  # noqa: F401  (the suite's conftest first, as in a run of tests/)
from pg_support import pg_server  # noqa: F401


def test_{n}(pg_server):
    uri = pg_server.new_database("fx")
    assert pg_server.execute(uri, "SELECT 1") == [(1,)]
    with open({marker!r}, "a") as f:
        f.write(pg_server.base + "\\n")
'''


def test_two_modules_importing_the_session_server_share_it_and_tear_down_cleanly(tmp_path):
    require_module("psycopg")
    pg_bin("initdb")
    marker = str(tmp_path / "bases")
    for n in (1, 2):
        (tmp_path / f"test_m{n}.py").write_text(MODULE.format(n=n, marker=marker))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "2 passed" in out and "error" not in out.lower(), out
    bases = open(marker).read().split()
    assert len(bases) == 2 and bases[0] == bases[1], bases  # one server for both modules
    assert not os.path.exists(bases[0]), "the server's folder is left behind"
