"""
Copy what can be read out of a (damaged) spool into a fresh one.

Rows are read with a scan and, where the scan breaks off, one C{seq} at a
time, then from the pages themselves (L{rawsvc.spool.recover}), so a
damaged page costs only the jobs on it.  Payload files are
copied into the new C{spool/}; the journal's records the database lacks
(L{rawsvc.spool.journal}) are written into the new one; payload files no
saved row names go to
C{lost+found/}, to be sent again by hand.  The new spool is closed clean,
with the old spool's id and its marker, ready to be put in place of the
old state_dir (payload paths are found again by name wherever the folder
ends up).  The old state_dir is only read.
"""

from __future__ import annotations

import os
import shutil
import sqlite3

import attrs

from rawsvc.spool import check, journal
from rawsvc.spool.recover import recover_jobs
from rawsvc.spool.schema import DB_NAME, FILES_DIR, connect, migrate

LOST_FOUND = "lost+found"
#: Files of the state_dir that are the spool's or the service's own, not copied as they are.
OWN = frozenset({DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", check.MARKER_NAME, "lock", journal.JOURNAL_NAME})
#: Past the last row found, how many seqs are tried when the table's counter is unreadable.
PROBE_PAST = 10_000


class SalvageError(Exception):
    """The salvage cannot be done (target not empty, unwritable)."""


@attrs.define
class Salvaged:
    jobs: int = 0
    unfinished: int = 0
    payload_files: int = 0
    #: Saved jobs whose payload file could not be found.
    payload_missing: int = 0
    #: Payload files without a saved row, copied to lost+found/.
    lost_found: int = 0
    #: Journal records the old database lacked, written into the new one.
    journal_records: int = 0
    #: Why rows could not be read, if they could not all be.
    read_errors: list[str] = attrs.field(factory=list)


def read_rows(db: str, errors: list[str]) -> tuple[list[dict], str | None]:
    """Every row of C{jobs} that can be read, by seq, and the spool's id."""
    if not os.path.exists(db) or os.path.getsize(db) == 0:
        if not check.wal_has_frames(db):
            return [], None
        errors.append(f"{db} is empty: reading its WAL's pages")
        return recover_jobs(db), None
    rows: dict[int, dict] = {}
    spool_id = None
    for immutable in (False, True):  # with the WAL's frames first, then the main file alone
        try:
            conn = _open(db, immutable)
        except sqlite3.Error as e:
            errors.append(f"cannot open {db}: {e}")
            continue
        try:
            spool_id = spool_id or _spool_id(conn)
            _scan(conn, rows, errors)
        finally:
            conn.close()
        if rows and not errors:
            break
    if errors:  # SQLite could not reach every row: read the pages themselves
        try:
            recovered = recover_jobs(db)
        except (OSError, ValueError) as e:
            errors.append(f"reading the pages failed: {e}")
            recovered = []
        ids = {r["job_id"] for r in rows.values()}
        added = [r for r in recovered if r["seq"] not in rows and r["job_id"] not in ids]
        for r in added:
            rows[r["seq"]] = r
        errors.append(f"{len(added)} more row(s) read from the pages themselves")
    return [rows[k] for k in sorted(rows)], spool_id


def _open(db: str, immutable: bool) -> sqlite3.Connection:
    conn = check.reader(db) if not immutable else sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def _spool_id(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'spool_id'").fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None


def _scan(conn: sqlite3.Connection, rows: dict[int, dict], errors: list[str]) -> None:
    try:
        cur = conn.execute("SELECT * FROM jobs ORDER BY seq")
        while True:
            row = cur.fetchone()
            if row is None:
                return
            rows[row["seq"]] = dict(row)
    except sqlite3.Error as e:
        errors.append(f"the scan of the jobs stopped after {len(rows)} row(s): {e}")
    try:
        top = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()[0]
    except (sqlite3.Error, TypeError):
        top = max(rows, default=0) + PROBE_PAST
    lost = 0
    for seq in range(1, top + 1):
        if seq in rows:
            continue
        try:
            row = conn.execute("SELECT * FROM jobs WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.Error:
            lost += 1
            continue
        if row is not None:
            rows[seq] = dict(row)
    if lost:
        errors.append(f"{lost} row(s) could not be read")


def salvage(state_dir: str, target: str) -> Salvaged:
    """Everything readable of the spool in C{state_dir}, into a new spool in C{target}."""
    state_dir, target = os.path.abspath(state_dir), os.path.abspath(target)
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise SalvageError(f"{target} exists and is not an empty folder; name a new one")
    try:
        os.makedirs(os.path.join(target, FILES_DIR), mode=0o700, exist_ok=True)
        os.chmod(target, 0o700)
    except OSError as e:
        raise SalvageError(f"cannot make {target}: {e.strerror}") from None
    result = Salvaged()
    rows, spool_id = read_rows(os.path.join(state_dir, DB_NAME), result.read_errors)
    files_dir = os.path.join(state_dir, FILES_DIR)
    new_files = os.path.join(target, FILES_DIR)
    named: set[str] = set()
    for row in rows:
        path = row.get("payload_path")
        if not path:
            continue
        name = os.path.basename(path)
        named.add(name)
        source = path if os.path.exists(path) else os.path.join(files_dir, name)
        row["payload_path"] = os.path.join(new_files, name)
        try:
            _copy(source, row["payload_path"])
            result.payload_files += 1
        except OSError:
            result.payload_missing += 1
    todo = _journal_records(state_dir, result)
    for record in todo:
        for i, insert in enumerate(record.inserts):
            path = insert[journal.PATH]
            if not path:
                continue
            name = os.path.basename(path)
            named.add(name)
            moved = os.path.join(new_files, name)
            try:
                _copy(path if os.path.exists(path) else os.path.join(files_dir, name), moved)
                result.payload_files += 1
            except OSError:
                result.payload_missing += 1
            record.inserts[i] = insert[:journal.PATH] + (moved,) + insert[journal.PATH + 1:]
    conn = connect(os.path.join(target, DB_NAME))
    try:
        migrate(conn)
        columns = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
        conn.execute("BEGIN")
        for row in rows:
            keys = [k for k in row if k in columns]
            conn.execute(f"INSERT INTO jobs ({', '.join(keys)}) VALUES ({', '.join('?' for _ in keys)})",
                         [row[k] for k in keys])
        journal.apply(conn, todo)
        spool_id = spool_id or check.new_spool_id()
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         [("spool_id", spool_id), ("clean", "1")])
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    check.write_marker(target, spool_id)
    conn = connect(os.path.join(target, DB_NAME))
    try:
        result.jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        result.unfinished = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE state NOT IN ('done', 'failed', 'cancelled')").fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for name in check.payload_files(state_dir):
        if name not in named:
            os.makedirs(os.path.join(target, LOST_FOUND), mode=0o700, exist_ok=True)
            _copy(os.path.join(files_dir, name), os.path.join(target, LOST_FOUND, name))
            result.lost_found += 1
    _copy_own_files(state_dir, target)
    return result


def _journal_records(state_dir: str, result: Salvaged) -> list[journal.Record]:
    """The journal's records the old database lacks (all of them when it cannot say)."""
    records, _ = journal.read(journal.journal_path(state_dir))
    if not records:
        return []
    db = os.path.join(state_dir, DB_NAME)
    done = 0
    try:
        conn = check.reader(db)
        try:
            done = journal.applied_seq(conn)
        finally:
            conn.close()
    except (sqlite3.Error, OSError, ValueError):
        pass
    todo = [r for r in records if r.seq > done]
    result.journal_records = len(todo)
    return todo


def _copy(source: str, target: str) -> None:
    shutil.copyfile(source, target)
    os.chmod(target, 0o600)


def _copy_own_files(state_dir: str, target: str) -> None:
    """The service's other files (host keys): the new state_dir replaces the old one."""
    for name in os.listdir(state_dir):
        path = os.path.join(state_dir, name)
        if name not in OWN and os.path.isfile(path) and not os.path.islink(path):
            shutil.copy2(path, os.path.join(target, name))
