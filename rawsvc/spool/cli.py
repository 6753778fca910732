"""
C{rawsvc jobs}, C{rawsvc job ID}, C{rawsvc retry ID}, C{rawsvc cancel ID}:
the spool from the command line, safe while the service runs.

Listing reads the database through a read-only connection (WAL: readers
never block the service, nor it them).  C{retry} and C{cancel} do not touch
a job themselves: they add a row to the C{requests} table, which the
running service reads every second (and at its next start when it is not
running), applies, and answers; the command waits C{--wait} seconds for the
answer and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
import tomllib
from typing import Any

from rawsvc.config import DEFAULT_CONFIG
from rawsvc.context import DEFAULT_STATE_DIR, config_relative
from rawsvc.spool import check
from rawsvc.spool.lock import try_lock, unlock
from rawsvc.spool.files import payload_file
from rawsvc.spool.records import full_variables
from rawsvc.spool.schema import COLUMNS, FILES_DIR, connect, db_path, migrate
from rawsvc.states import JOB_STATES, FilterError, parse_states, split_list


def register(sub) -> None:
    def common(p) -> None:
        p.add_argument("--state-dir", metavar="DIR", help="the service's state directory (default: from --config)")
        p.add_argument("-c", "--config", metavar="FILE", default=None,
                       help=f"read [service] state_dir from this config (default {DEFAULT_CONFIG} if present, "
                            f"else {DEFAULT_STATE_DIR})")

    p = sub.add_parser("jobs", help="list the jobs in the spool, newest first")
    common(p)
    p.add_argument("--state", type=_states, default=[], metavar="STATE[,STATE...]",
                   help=f"only jobs in these states ({', '.join(JOB_STATES)})")
    p.add_argument("--trigger", type=split_list, default=[], metavar="NAME[,NAME...]",
                   help="only jobs from these triggers")
    p.add_argument("--limit", type=_limit, default=50, help="at most this many (0: all; default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("job", help="show one job of the spool")
    common(p)
    p.add_argument("job_id", metavar="ID", help="a job id (or a unique prefix)")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.add_argument("--payload", action="store_true", help="write the job's payload to stdout, nothing else")
    p.set_defaults(func=cmd_job)

    for name, what in (("retry", "run a failed, cancelled or done job again"),
                       ("cancel", "cancel a queued or running job")):
        p = sub.add_parser(name, help=what)
        common(p)
        p.add_argument("job_id", metavar="ID", help="a job id (or a unique prefix)")
        p.add_argument("--wait", type=float, default=5.0, metavar="S",
                       help="seconds to wait for the running service to answer (default 5)")
        p.set_defaults(func=cmd_request, action=name)


class CliError(Exception):
    pass


def _states(value: str) -> list[str]:
    try:
        return parse_states(value)
    except FilterError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _limit(value: str) -> int:
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if limit < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 for all, not {value!r}")
    return limit


def state_dir_of(args) -> str:
    """
    The absolute state directory: C{--state-dir} (from the working
    directory), else C{[service] state_dir} of the config, resolved as the
    service resolves it (from the config file's folder).
    """
    if args.state_dir:
        return os.path.abspath(args.state_dir)
    path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if path is None:
        return os.path.abspath(DEFAULT_STATE_DIR)
    try:
        with open(path, "rb") as f:
            service = tomllib.load(f).get("service", {})
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise CliError(f"{path}: cannot read the config: {e}") from None
    value = service.get("state_dir") if isinstance(service, dict) else None
    return config_relative(path, value if isinstance(value, str) and value else DEFAULT_STATE_DIR)


def _open(args, readonly: bool = True) -> sqlite3.Connection:
    state_dir = state_dir_of(args)
    path = db_path(state_dir)
    if not os.path.exists(path):
        raise CliError(f"no spool at {path} (has the service run with [service] spool = true?)")
    report = check.inspect(state_dir, deep=False)  # what the first pages tell, at once
    if report.problems:
        raise CliError(f"the spool in {state_dir} is damaged: {report.problems[0]} "
                       f"(see rawsvc spool check --state-dir {state_dir})")
    try:
        if readonly:
            return check.reader(path)  # leaves no -wal or -shm behind
        conn = connect(path)
        migrate(conn)  # an older spool: add what is missing
        return conn
    except sqlite3.Error as e:
        raise CliError(f"{path}: {e}") from None


def _find(conn: sqlite3.Connection, job_id: str) -> sqlite3.Row:
    rows = conn.execute(
        f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE job_id >= ? AND job_id < ? ORDER BY seq LIMIT 2",
        (job_id, job_id + "\U0010ffff"),
    ).fetchall()
    exact = [r for r in rows if r["job_id"] == job_id]
    if exact:
        return exact[0]
    if not rows:
        raise CliError(f"no job {job_id} in the spool")
    if len(rows) > 1:
        raise CliError(f"{job_id!r} matches more than one job; give more of the id")
    return rows[0]


def _record(row: sqlite3.Row) -> dict[str, Any]:
    d = {k: row[k] for k in row.keys()}
    d["variables"] = full_variables(row)
    return d


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _run(func, args) -> int:
    try:
        return func(args)
    except CliError as e:
        print(f"rawsvc {args.command}: {e}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as e:
        state_dir = state_dir_of(args)
        print(f"rawsvc {args.command}: cannot read the spool in {state_dir}: {e} "
              f"(see rawsvc spool check --state-dir {state_dir})", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


def cmd_jobs(args) -> int:
    return _run(_jobs, args)


def _jobs(args) -> int:
    conn = _open(args)
    where, params = [], []
    for column, values in (("state", args.state), ("trigger", args.trigger)):
        if values:
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            params.extend(values)
    sql = f"SELECT {', '.join(COLUMNS)} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq DESC"
    if args.limit > 0:
        sql += f" LIMIT {int(args.limit)}"
    rows = conn.execute(sql, params).fetchall()
    out = sys.stdout
    if args.json:
        for row in rows:
            out.write(json.dumps(_record(row)) + "\n")
        return 0
    out.write(f"spool {state_dir_of(args)}: {len(rows)} job(s) shown\n")
    out.write(f"{'JOB ID':24} {'STATE':9} {'TRIGGER':12} {'FLOW':12} {'ACT':>3} {'TRY':>3} "
              f"{'SIZE':>9} {'RECEIVED':19}  ERROR\n")
    for r in rows:
        out.write(
            f"{r['job_id']:24} {r['state']:9} {r['trigger'][:12]:12} {r['flow'][:12]:12} {r['action_index']:>3} "
            f"{r['attempt']:>3} {r['size']:>9} {_when(r['received_at']):19}  {_error(r)}\n"
        )
    return 0


def _error(row: sqlite3.Row) -> str:
    """The ERROR column; for a waiting job, its delivery attempt and next try first."""
    error = row["last_error"] or ""
    if row["state"] == "waiting" and row["next_try"]:
        return f"attempt {row['delivery_attempt']}, next try {_when(row['next_try'])}: {error}"
    return error


def cmd_job(args) -> int:
    return _run(_job, args)


def _job(args) -> int:
    conn = _open(args)
    row = _find(conn, args.job_id)
    if args.payload:
        if row["payload_path"]:
            path = payload_file(os.path.join(state_dir_of(args), FILES_DIR), row["payload_path"])
            with open(path, "rb") as f:
                while chunk := f.read(1 << 16):
                    sys.stdout.buffer.write(chunk)
        else:
            blob = conn.execute("SELECT payload FROM jobs WHERE seq = ?", (row["seq"],)).fetchone()[0]
            sys.stdout.buffer.write(blob or b"")
        sys.stdout.buffer.flush()
        return 0
    record = _record(row)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    from rawsvc.errors import quoted  # here, not at the top: keeps this edit inside _job

    variables = record.pop("variables")
    for key in COLUMNS:
        if key == "variables":
            continue
        value = record.get(key)
        if key.endswith("_at") or key == "next_try":
            value = f"{_when(value)}" + (f" ({value:.3f})" if value else "")
        print(f"{key:16} {value if value is not None else '-'}")
    print("variables:")
    for name, value in sorted(variables.items()):
        print(f"  {name} = {quoted(value) if isinstance(value, str) else json.dumps(value)}")
    return 0


def cmd_request(args) -> int:
    return _run(_request, args)


def _request(args) -> int:
    state_dir = state_dir_of(args)
    # While the service is down, hold its lock: our close then checkpoints
    # the WAL into the spool and deletes it, so mark the spool clean.
    held = try_lock(state_dir)
    try:
        conn = _open(args, readonly=False)
        try:
            return _ask(args, conn, alone=held is not None)
        finally:
            if held is not None:
                check.mark_clean(conn)
            conn.close()
    finally:
        if held is not None:
            unlock(held)


def _ask(args, conn: sqlite3.Connection, alone: bool) -> int:
    job_id = _find(conn, args.job_id)["job_id"]
    cur = conn.execute(
        "INSERT INTO requests (job_id, action, requested_at) VALUES (?, ?, ?)", (job_id, args.action, time.time())
    )
    request_id = cur.lastrowid
    deadline = time.monotonic() + (0 if alone else max(args.wait, 0))
    while True:
        row = conn.execute("SELECT done_at, ok, result FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row["done_at"] is not None:
            print(row["result"], file=sys.stdout if row["ok"] else sys.stderr)
            return 0 if row["ok"] else 1
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if alone:
        print(f"{args.action} {job_id}: requested (#{request_id}); the service is not running: "
              "it applies the request at its next start")
        return 0
    print(f"{args.action} {job_id}: requested (#{request_id}); no answer from the service within {args.wait:g} s: "
          "it applies the request within a second while it runs, else at its next start")
    return 0
