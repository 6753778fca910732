"""
Is the spool sound?  A damaged spool is never taken for an empty one.

Three signals, none of which needs the database to be readable:

- C{state_dir/spool.marker} is written the first time a spool is opened,
  with the spool's id, which the database holds too (table C{meta}); a
  missing, empty or foreign C{spool.db} beside it is damage, as is one
  beside payload files in C{spool/}.
- The database's C{meta.clean} is C{0} in the main file (checkpointed at
  open) while the service runs and C{1} only after a clean close, which
  moves the WAL into the main file and deletes it.  A missing (or empty)
  C{spool.db-wal} beside C{clean = 0} means the last transactions are
  gone.  A live or killed service always leaves a non-empty WAL (its frames
  stay after a checkpoint), and the main file is read here with
  C{immutable=1}, which creates no WAL of its own.
- C{PRAGMA quick_check} and our tables.

The journal (L{rawsvc.spool.journal}) is read too: its records the
database does not hold yet (the service writes them into it at its next
start) are reported, and their payload files are not orphans.

L{inspect} reports what it finds (read-only, creates no file);
L{verify} raises L{SpoolDamaged} with a message naming the way out.
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.parse
import uuid

import attrs

from rawsvc.spool import journal
from rawsvc.spool.schema import DB_NAME, FILES_DIR, SpoolError

MARKER_NAME = "spool.marker"
SQLITE_MAGIC = b"SQLite format 3\x00"
#: Columns that make a C{jobs} table ours (later versions add more).
CORE_COLUMNS = frozenset({"seq", "job_id", "trigger", "flow", "state", "payload", "payload_path"})
#: Problems listed from C{quick_check} at most.
SHOWN = 3


class SpoolDamaged(SpoolError):
    """The spool is damaged: C{problems} says how; the message says what to do."""

    def __init__(self, state_dir: str, problems: list[str]) -> None:
        self.state_dir = state_dir
        self.problems = problems
        super().__init__(f"the spool in {state_dir} is damaged: " + "; ".join(problems))

    def advice(self) -> str:
        """The multi-line message of a refused start."""
        d = self.state_dir
        lines = [f"the spool in {d} is damaged; not starting over acknowledged jobs:"]
        lines += [f"  {p}" for p in self.problems]
        lines += [
            "Save what can be read, then put it in place:",
            f"  rawsvc spool check --state-dir {d}",
            f"  rawsvc spool salvage --state-dir {d} --to {d}.salvaged",
            f"  mv {d} {d}.damaged && mv {d}.salvaged {d}",
            f"(to give up its jobs instead, move {d} aside and start with an empty one)",
        ]
        return "\n".join(lines)


@attrs.define
class Report:
    """What L{inspect} found."""

    state_dir: str
    problems: list[str] = attrs.field(factory=list)
    #: No spool yet (nothing to lose): the service may create one.
    fresh: bool = False
    jobs: int | None = None
    by_state: dict[str, int] = attrs.field(factory=dict)
    #: Unfinished jobs whose payload file is missing.
    missing_payloads: list[str] = attrs.field(factory=list)
    #: Payload files in spool/ no row names.
    orphans: list[str] = attrs.field(factory=list)
    #: Journal records the database lacks (written into it at the next start), and their new jobs.
    journal_records: int = 0
    journal_jobs: int = 0
    #: Bytes of a torn record at the journal's end (never acknowledged; ignored).
    journal_torn: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def marker_path(state_dir: str) -> str:
    return os.path.join(state_dir, MARKER_NAME)


def read_marker(state_dir: str) -> dict | None:
    """The marker's content; C{{}} when it exists but cannot be read; None when absent."""
    try:
        with open(marker_path(state_dir), "rb") as f:
            data = json.loads(f.read(4096) or b"{}")
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def write_marker(state_dir: str, spool_id: str) -> None:
    """The marker, atomically (0600)."""
    path = marker_path(state_dir)
    tmp = path + ".new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps({"spool_id": spool_id, "db": DB_NAME}).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def new_spool_id() -> str:
    return uuid.uuid4().hex


def payload_files(state_dir: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(os.path.join(state_dir, FILES_DIR)) if n.endswith(".job"))
    except OSError:
        return []


def wal_has_frames(db: str) -> bool:
    try:
        return os.path.getsize(db + "-wal") > 32
    except OSError:
        return False


def reader(db: str) -> sqlite3.Connection:
    """
    A read-only connection that leaves no trace: with the WAL's frames when
    there are some, else the main file alone (C{immutable=1}: no -wal, no -shm).
    """
    if wal_has_frames(db):
        uri = f"file:{urllib.parse.quote(db)}?mode=ro"
    else:
        uri = f"file:{urllib.parse.quote(db)}?immutable=1"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def _meta(conn: sqlite3.Connection) -> dict[str, str]:
    try:
        return {r[0]: r[1] for r in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as e:
        if "no such table" in str(e):
            return {}
        raise


def inspect(state_dir: str, deep: bool = True) -> Report:
    """
    Look at the spool in C{state_dir} without changing anything.  C{deep}:
    also C{quick_check} every page and count the jobs (seconds for a large
    spool); without it, only what is read from the first pages.
    """
    state_dir = os.path.abspath(state_dir)
    report = Report(state_dir)
    db = os.path.join(state_dir, DB_NAME)
    marker = read_marker(state_dir)
    files = payload_files(state_dir)
    try:
        size = os.path.getsize(db)
    except FileNotFoundError:
        size = None
    if not size:
        had = [f"{MARKER_NAME} says a spool was created here"] if marker is not None else []
        if files:
            had.append(f"{len(files)} payload file(s) are in {FILES_DIR}/")
        if wal_has_frames(db):
            had.append(f"{DB_NAME}-wal holds transactions")
        records, _ = journal.read(journal.journal_path(state_dir))
        if records:
            had.append(f"{journal.JOURNAL_NAME} holds {len(records)} record(s)")
        if had:
            what = "is missing" if size is None else "is empty (0 bytes)"
            report.problems.append(f"{db} {what}, but {' and '.join(had)}: its jobs are gone from the database")
        else:
            report.fresh = True
        report.orphans = files
        return report
    try:
        with open(db, "rb") as f:
            header = f.read(100)
    except OSError as e:
        report.problems.append(f"{db}: cannot read: {e.strerror}")
        return report
    if not header.startswith(SQLITE_MAGIC):
        report.problems.append(f"{db} is not a SQLite database (its first bytes are not SQLite's)")
        return report
    try:
        _inspect_db(db, report, marker, files, deep)
    except sqlite3.DatabaseError as e:
        report.problems.append(f"{db} cannot be read: {e}")
    return report


def _inspect_db(db: str, report: Report, marker: dict | None, files: list[str], deep: bool) -> None:
    wal = wal_has_frames(db)
    if not wal:
        # The main file alone: what the last run left when the WAL is gone.
        main = reader(db)
        try:
            if _meta(main).get("clean") == "0":
                report.problems.append(
                    f"{db}-wal is missing (or empty) but the last run did not stop cleanly: "
                    "the jobs of its last transactions were in it"
                )
        finally:
            main.close()
    conn = reader(db)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "jobs" not in tables:
            if marker is not None or files:
                report.problems.append(f"{db} has no jobs table, but this state_dir held a spool")
            else:
                report.fresh = True
            return
        columns = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
        if not CORE_COLUMNS <= columns:
            report.problems.append(f"{db} is not a rawsvc spool (its jobs table lacks "
                                   f"{', '.join(sorted(CORE_COLUMNS - columns))})")
            return
        spool_id = _meta(conn).get("spool_id")
        if marker is not None and marker.get("spool_id") != spool_id:
            report.problems.append(
                f"{db} is not the spool this state_dir had ({MARKER_NAME} names spool "
                f"{marker.get('spool_id') or '?'}, {DB_NAME} {'spool ' + spool_id if spool_id else 'none'})"
            )
        if "meta" in tables:
            todo, report.journal_torn = journal.pending(conn, journal.journal_path(os.path.dirname(db)))
        else:
            todo, report.journal_torn = journal.read(journal.journal_path(os.path.dirname(db)))
        report.journal_records = len(todo)
        report.journal_jobs = sum(len(r.inserts) for r in todo)
        if not deep:
            return
        found = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if found != ["ok"]:
            more = f" (and {len(found) - SHOWN} more)" if len(found) > SHOWN else ""
            report.problems.append(f"{db} fails its integrity check: {'; '.join(found[:SHOWN])}{more}")
            return
        report.by_state = {r[0]: r[1] for r in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
        report.jobs = sum(report.by_state.values())
        named = set()
        for r in conn.execute("SELECT job_id, state, payload_path FROM jobs WHERE payload_path IS NOT NULL"):
            name = os.path.basename(r["payload_path"])
            named.add(name)
            if r["state"] not in ("done", "failed", "cancelled") and name not in files:
                report.missing_payloads.append(r["job_id"])
        named.update(os.path.basename(row[journal.PATH]) for r in todo for row in r.inserts if row[journal.PATH])
        report.orphans = [f for f in files if f not in named]
    finally:
        conn.close()


#: The last deep look at each database: its files' identity and the report.
_looked: dict[str, tuple[tuple, Report]] = {}


def _identity(db: str) -> tuple:
    out: list = []
    for path in (db, db + "-wal", os.path.join(os.path.dirname(db), MARKER_NAME)):
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def verify(state_dir: str) -> Report:
    """
    L{inspect}, deep; L{SpoolDamaged} when it finds a problem.  A spool
    whose files have not changed since the last look is not read again (the
    service checks at start, then its store opens it; a damaged one is
    looked at again only once it changed).
    """
    db = os.path.join(os.path.abspath(state_dir), DB_NAME)
    identity = _identity(db)
    last = _looked.get(db)
    if last is not None and last[0] == identity:
        report = last[1]
    else:
        report = inspect(state_dir)
        _looked[db] = (identity, report)
    if report.problems:
        raise SpoolDamaged(report.state_dir, report.problems)
    return report


def mark_open(conn: sqlite3.Connection, state_dir: str) -> None:
    """
    (The service, once it has opened the spool) the spool's id in the
    database and the marker; C{clean = 0}, checkpointed into the main file,
    where it stays until L{mark_clean}.
    """
    meta = _meta(conn)
    marker = read_marker(state_dir)
    spool_id = meta.get("spool_id") or (marker or {}).get("spool_id") or new_spool_id()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         [("spool_id", spool_id), ("clean", "0")])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("PRAGMA wal_checkpoint(FULL)")
    if marker is None or marker.get("spool_id") != spool_id:
        write_marker(state_dir, spool_id)


def mark_clean(conn: sqlite3.Connection) -> None:
    """
    (The last writer, before it closes) every transaction is about to be
    checkpointed into the main file and the WAL deleted: a missing WAL is
    then no loss.
    """
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'clean'")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
