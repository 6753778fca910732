"""
C{rawsvc jobs}, C{rawsvc job ID}, C{rawsvc retry ID}, C{rawsvc cancel ID}:
the spool from the command line, safe while the service runs (the reading
and the requests are L{rawsvc.spool.browse}).

C{retry} and C{cancel} leave a request that the running service applies
within a second (or at its next start); the command waits C{--wait}
seconds for the answer and prints it.

Each names the absolute state directory it reads: C{jobs} in its heading
line, the others (and C{jobs --json}, whose stdout is data) on stderr.

With C{[service] spool = "postgresql://..."} in the config (C{-c}), each
reads that database instead (L{rawsvc.spool.pg_browse}), from any node of
a cluster, and names it (without its password); C{retry} and C{cancel}
leave a request row that the node owning the job answers.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rawsvc.cli._common import say, state_dir_options, with_spool
from rawsvc.spool import browse, check
from rawsvc.spool.lock import try_lock, unlock
from rawsvc.spool.model import SpoolError
from rawsvc.spool.schema import COLUMNS
from rawsvc.states import JOB_STATES, FilterError, parse_states, split_list


def register(sub) -> None:
    p = sub.add_parser("jobs", help="list the jobs in the spool, newest first")
    state_dir_options(p)
    p.add_argument("--state", type=_states, default=[], metavar="STATE[,STATE...]",
                   help=f"only jobs in these states ({', '.join(JOB_STATES)})")
    p.add_argument("--trigger", type=split_list, default=[], metavar="NAME[,NAME...]",
                   help="only jobs from these triggers")
    p.add_argument("--limit", type=_limit, default=50, help="at most this many (0: all; default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("job", help="show one job of the spool")
    state_dir_options(p)
    p.add_argument("job_id", metavar="ID", help="a job id (or a unique prefix)")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.add_argument("--payload", action="store_true", help="write the job's payload to stdout, nothing else")
    p.set_defaults(func=cmd_job)

    for name, what in (("retry", "run a failed, cancelled or done job again"),
                       ("cancel", "cancel a queued or running job")):
        p = sub.add_parser(name, help=what)
        state_dir_options(p)
        p.add_argument("job_id", metavar="ID", help="a job id (or a unique prefix)")
        p.add_argument("--wait", type=float, default=5.0, metavar="S",
                       help="seconds to wait for the running service to answer (default 5)")
        p.set_defaults(func=cmd_request, action=name)


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


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _run(func: Callable[[argparse.Namespace, str], int], args: argparse.Namespace,
         pg: Callable[[argparse.Namespace, str, Any], int] | None = None) -> int:
    def run(args: argparse.Namespace, state_dir: str, uri: str | None) -> int:
        if uri is not None and pg is not None:
            return _pg_guarded(pg, args, uri)
        return _guarded(func, args, state_dir)

    return with_spool(args, run)


def _guarded(func: Callable[[argparse.Namespace, str], int], args: argparse.Namespace, state_dir: str) -> int:
    try:
        return func(args, state_dir)
    except browse.SpoolError as e:
        say(args, str(e))
        return 1
    except sqlite3.DatabaseError as e:
        say(args, f"cannot read the spool in {state_dir}: {e} (see rawsvc spool check --state-dir {state_dir})")
        return 1
    except BrokenPipeError:
        return 0


def _pg_guarded(func: Callable[[argparse.Namespace, str, Any], int], args: argparse.Namespace, uri: str) -> int:
    """C{func(args, where, conn)} on a connection to the PostgreSQL spool; its errors as one line naming it."""
    import psycopg

    from rawsvc.spool import pg_browse
    from rawsvc.spool.pg_schema import describe, reason

    where = describe(uri)
    conn = None
    try:
        conn = pg_browse.connect(uri)
        return func(args, where, conn)
    except SpoolError as e:
        say(args, str(e))
        return 1
    except psycopg.Error as e:
        say(args, f"cannot read the spool at {where}: {reason(e)}")
        return 1
    except BrokenPipeError:
        return 0
    finally:
        if conn is not None:
            conn.close()


def cmd_jobs(args: argparse.Namespace) -> int:
    return _run(_jobs, args, _pg_jobs)


def _jobs(args: argparse.Namespace, state_dir: str) -> int:
    conn = browse.open_spool(state_dir)
    rows = browse.list_jobs(conn, args.state, args.trigger, args.limit)
    return _print_jobs(args, state_dir, rows, browse.job_record)


def _pg_jobs(args: argparse.Namespace, where: str, conn: Any) -> int:
    from rawsvc.spool import pg_browse

    rows = pg_browse.list_jobs(conn, args.state, args.trigger, args.limit)
    return _print_jobs(args, where, rows, pg_browse.job_record)


def _print_jobs(args: argparse.Namespace, where: str, rows: Sequence[Any], record: Callable[[Any], dict]) -> int:
    out = sys.stdout
    if args.json:
        say(args, f"spool {where}: {len(rows)} job(s)")
        for row in rows:
            out.write(json.dumps(record(row)) + "\n")
        return 0
    out.write(f"spool {where}: {len(rows)} job(s) shown\n")
    out.write(f"{'JOB ID':24} {'STATE':9} {'TRIGGER':12} {'FLOW':12} {'ACT':>3} {'TRY':>3} "
              f"{'SIZE':>9} {'RECEIVED':19}  ERROR\n")
    for r in rows:
        out.write(
            f"{r['job_id']:24} {r['state']:9} {r['trigger'][:12]:12} {r['flow'][:12]:12} {r['action_index']:>3} "
            f"{r['attempt']:>3} {r['size']:>9} {_when(r['received_at']):19}  {_error(r)}\n"
        )
    return 0


def _error(row: Any) -> str:
    """
    The ERROR column; for a waiting job, its delivery attempt and next try
    first; for a held one (its printer not ready), when the printer is
    asked again, then why it holds.
    """
    error = row["last_error"] or ""
    if row["state"] == "waiting" and row["next_try"]:
        return f"attempt {row['delivery_attempt']}, next try {_when(row['next_try'])}: {error}"
    if row["state"] == "held" and row["next_try"]:
        return f"next check {_when(row['next_try'])}: {error}"
    return error


def cmd_job(args: argparse.Namespace) -> int:
    return _run(_job, args, _pg_job)


def _job(args: argparse.Namespace, state_dir: str) -> int:
    conn = browse.open_spool(state_dir)
    row = browse.find_job(conn, args.job_id)
    return _print_job(args, state_dir, row, browse.job_record(row),
                      lambda: browse.payload_chunks(conn, state_dir, row))


def _pg_job(args: argparse.Namespace, where: str, conn: Any) -> int:
    from rawsvc.spool import pg_browse

    row = pg_browse.find_job(conn, args.job_id)
    return _print_job(args, where, row, pg_browse.job_record(row),
                      lambda: pg_browse.payload_chunks(conn, row["job_id"]))


def _print_job(args: argparse.Namespace, where: str, row: Any, record: dict[str, Any],
               chunks: Callable[[], Iterable[bytes]]) -> int:
    say(args, f"spool {where}: job {row['job_id']}")
    if args.payload:
        for chunk in chunks():
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return 0
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    from rawsvc.errors import quoted

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


def cmd_request(args: argparse.Namespace) -> int:
    return _run(_request, args, _pg_request)


def _request(args: argparse.Namespace, state_dir: str) -> int:
    say(args, f"spool {state_dir}")
    # While the service is down, hold its lock: our close then checkpoints
    # the WAL into the spool and deletes it, so mark the spool clean.
    held = try_lock(state_dir)
    try:
        conn = browse.open_spool(state_dir, readonly=False)
        try:
            return _ask(args, conn, alone=held is not None)
        finally:
            if held is not None:
                check.mark_clean(conn)
            conn.close()
    finally:
        if held is not None:
            unlock(held)


def _ask(args: argparse.Namespace, conn: sqlite3.Connection, alone: bool) -> int:
    job_id = browse.find_job(conn, args.job_id)["job_id"]
    request_id = browse.add_request(conn, job_id, args.action)
    deadline = time.monotonic() + (0 if alone else max(args.wait, 0))
    while True:
        answer = browse.request_answer(conn, request_id)
        if answer is not None:
            ok, result = answer
            print(result, file=sys.stdout if ok else sys.stderr)
            return 0 if ok else 1
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


def _pg_request(args: argparse.Namespace, where: str, conn: Any) -> int:
    """A request row for the cluster: the node owning the job (any node, for one without a live owner) answers."""
    from rawsvc.spool import pg_browse

    say(args, f"spool {where}")
    job_id = pg_browse.find_job(conn, args.job_id)["job_id"]
    request_id = pg_browse.add_request(conn, job_id, args.action)
    deadline = time.monotonic() + max(args.wait, 0)
    while True:
        answer = pg_browse.request_answer(conn, request_id)
        if answer is not None:
            ok, result = answer
            print(result, file=sys.stdout if ok else sys.stderr)
            return 0 if ok else 1
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if not pg_browse.live_nodes(conn):
        print(f"{args.action} {job_id}: requested (#{request_id}); no node of {where} is running: "
              "the first to start applies the request")
        return 0
    print(f"{args.action} {job_id}: requested (#{request_id}); no answer from the cluster within {args.wait:g} s: "
          "the node running the job applies it within a second, else the next node to start")
    return 0
