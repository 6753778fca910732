"""
A throwaway PostgreSQL server for the tests: a copy of a data folder that
C{initdb} made once per test process, C{pg_ctl} on a free loopback port
with its unix socket in that folder and trust authentication, so a test
can also stop, kill and restart it.  Debian's C{postgresql} package provides the binaries (C{.ci/run}
installs it); without them the tests skip, and fail under C{CI=true}.

C{initdb} and the server refuse to run as root: as root they run as the
unprivileged user C{postgres} (made by the Debian package), which owns the
folder.  The server runs with C{fsync = off}: the tests kill the server,
never the machine, and a committed transaction survives a killed server
without an fsync (the store still asks for C{synchronous_commit = on}).

L{pg_server} is the session's shared server (tests that stop or kill a
server make one of their own with L{PgServer}); L{new_database} gives each
caller an empty database of its own.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from conftest import require_module, require_tool

_names = itertools.count(1)


def pg_bin(tool: str) -> str:
    """The path of a PostgreSQL server tool (skip, or fail under CI, when it is missing)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    return require_tool(found[-1] if found else tool)


_given: set[int] = set()


def free_port() -> int:
    """
    A loopback TCP port nobody listens on (now), and not one this process
    was given before: the kernel may hand out a port it just handed out
    (twice in 3,000 runs of nine calls here), and two services of one test
    would then collide.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port


def free_ports(count: int) -> list[int]:
    """
    C{count} different loopback TCP ports nobody listens on (now): each is
    held until all are chosen, since calls of L{free_port} one after the
    other may return the same port twice (a node's trigger and another
    node's admin port once did).
    """
    held = []
    try:
        while len(held) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] in _given:
                s.close()
                continue
            held.append(s)
        ports = [s.getsockname()[1] for s in held]
        _given.update(ports)
        return ports
    finally:
        for s in held:
            s.close()


_templates: dict[str, str] = {}


def _template(server: "PgServer") -> str:
    """A data folder made by C{initdb} once per process and user, never started (each server copies it)."""
    found = _templates.get(server.user)
    if found is None:
        base = tempfile.mkdtemp(prefix="rawsvc-pg-template-")
        if server._as:
            pw = pwd.getpwnam("postgres")
            os.chmod(base, 0o755)
            os.chown(base, pw.pw_uid, pw.pw_gid)
        found = os.path.join(base, "data")
        server._run([server.initdb, "-D", found, "-U", server.user, "--auth=trust", "-E", "UTF8",
                     "--locale=C.UTF-8", "--no-sync"])
        atexit.register(shutil.rmtree, base, True)
        _templates[server.user] = found
    return found


class PgServer:
    """One PostgreSQL server of the tests' own, in C{base} (a new folder when None)."""

    def __init__(self, base: str | None = None, port: int | None = None) -> None:
        require_module("psycopg")
        self.initdb, self.pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        self.base = base or tempfile.mkdtemp(prefix="rawsvc-pg-")
        self.data = os.path.join(self.base, "data")
        self.socket_dir = os.path.join(self.base, "run")
        self.log_path = os.path.join(self.base, "server.log")
        self.port = port or free_port()
        self.user = "postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = [require_tool("runuser"), "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            os.chmod(self.base, 0o755)
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name
        # One initdb per test process (~2 s on this machine); every server copies its data folder.
        self._run(["cp", "-a", _template(self), self.data])
        self._run(["mkdir", "-p", self.socket_dir])

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(self._as + argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stdout}{done.stderr}")

    # Lifetime ---------------------------------------------------------------

    def start(self) -> "PgServer":
        """Start the server (again) on the same port and data; returns once it takes connections."""
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
                   " -c full_page_writes=off -c max_connections=200")
        self._run([self.pg_ctl, "-D", self.data, "-l", self.log_path, "-o", options, "-w", "-t", "60", "start"])
        return self

    def stop(self, mode: str = "fast") -> None:
        """C{pg_ctl stop -m mode} (C{fast}, C{immediate}); nothing when it is not running."""
        if self.running():
            self._run([self.pg_ctl, "-D", self.data, "-m", mode, "-w", "stop"])

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends end with it)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.05)

    def pid(self) -> int | None:
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def destroy(self) -> None:
        """Stop the server at once and remove its folder."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    # Databases --------------------------------------------------------------

    def uri(self, database: str = "postgres") -> str:
        """A libpq URI of C{database} on this server over loopback TCP."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "t") -> str:
        """Create an empty database; its URI."""
        import psycopg

        name = f"{prefix}{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.uri(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def execute(self, uri: str, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one statement on C{uri}; its rows (empty for a statement without any)."""
        import psycopg

        with psycopg.connect(uri, autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []


_shared: PgServer | None = None
_users = 0


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """
    The session's PostgreSQL server (started on first use, removed at the
    end).  A module that imports this fixture makes a second session fixture
    of it (pytest keeps one per place it is defined): they share the one
    server, and the last of them to end removes it (a teardown that found
    the server gone failed the run).
    """
    global _shared, _users
    if _shared is None:
        _shared = PgServer().start()
    server = _shared
    _users += 1
    try:
        yield server
    finally:
        _users -= 1
        if _users == 0:
            _shared = None
            server.destroy()
