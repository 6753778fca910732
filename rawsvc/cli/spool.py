"""
C{rawsvc spool check} and C{rawsvc spool salvage --to DIR}: is the spool
sound, and if not, save what can be read of it (the logic is
L{rawsvc.spool.check} and L{rawsvc.spool.salvage}).  Both name the absolute
state directory on stdout; a config that does not validate exits 2.
"""

from __future__ import annotations

import os
import sys

from rawsvc.cli._common import state_dir_options, with_state_dir
from rawsvc.spool import check
from rawsvc.spool.lock import holder_of, try_lock, unlock
from rawsvc.spool.salvage import LOST_FOUND, SalvageError, salvage


def register(sub) -> None:
    spool = sub.add_parser("spool", help="check the spool, or salvage a damaged one")
    actions = spool.add_subparsers(dest="spool_command", metavar="ACTION")

    p = actions.add_parser("check", help="check the spool: exit 0 sound (or none yet), 1 damaged")
    state_dir_options(p)
    p.set_defaults(func=cmd_check)
    p = actions.add_parser("salvage", help="copy everything readable of the spool into a new state_dir")
    state_dir_options(p)
    p.add_argument("--to", metavar="DIR", required=True, help="a new (or empty) folder for the salvaged spool")
    p.set_defaults(func=cmd_salvage)
    spool.set_defaults(func=lambda args: (spool.print_help(sys.stderr), 2)[1])


def cmd_check(args) -> int:
    return with_state_dir(args, _check)


def _check(args, state_dir: str) -> int:
    report = check.inspect(state_dir)
    out = sys.stdout
    if report.problems:
        out.write(f"spool {state_dir}: DAMAGED\n")
        for problem in report.problems:
            out.write(f"  {problem}\n")
        out.write(f"Save what can be read:  rawsvc spool salvage --state-dir {state_dir} --to {state_dir}.salvaged\n")
        return 1
    if report.fresh:
        out.write(f"spool {state_dir}: none yet (the service creates it at its first start)\n")
        return 0
    states = ", ".join(f"{n} {s}" for s, n in sorted(report.by_state.items()))
    out.write(f"spool {state_dir}: ok: {report.jobs} job(s){' (' + states + ')' if states else ''}\n")
    if report.missing_payloads:
        out.write(f"  warning: {len(report.missing_payloads)} unfinished job(s) have lost their payload file: "
                  f"{', '.join(report.missing_payloads[:5])}{' ...' if len(report.missing_payloads) > 5 else ''}\n")
    if report.orphans:
        out.write(f"  note: {len(report.orphans)} payload file(s) belong to no job (removed at the next start)\n")
    if report.journal_records:
        out.write(f"  note: {report.journal_records} journal record(s) ({report.journal_jobs} new job(s)) are not in "
                  "the database yet: the service writes them into it at its next start\n")
    if report.journal_torn:
        out.write(f"  note: the journal ends with a torn record ({report.journal_torn} byte(s), never acknowledged): "
                  "ignored\n")
    return 0


def cmd_salvage(args) -> int:
    return with_state_dir(args, _salvage)


def _salvage(args, state_dir: str) -> int:
    target = os.path.abspath(args.to)
    held = try_lock(state_dir)
    if held is None:
        print(f"rawsvc spool salvage: note: pid {holder_of(state_dir)} holds {state_dir}; "
              "copying what it has written so far", file=sys.stderr)
    try:
        saved = salvage(state_dir, target)
    except (SalvageError, OSError) as e:
        print(f"rawsvc spool salvage: {e}", file=sys.stderr)
        return 1
    finally:
        if held is not None:
            unlock(held)
    out = sys.stdout
    out.write(f"saved {saved.jobs} job(s) ({saved.unfinished} unfinished) and {saved.payload_files} payload file(s) "
              f"from {state_dir} into {target}\n")
    if saved.journal_records:
        out.write(f"  {saved.journal_records} journal record(s) the database lacked are in the saved one\n")
    for error in saved.read_errors:
        out.write(f"  could not read everything: {error}\n")
    if saved.payload_missing:
        out.write(f"  {saved.payload_missing} saved job(s) have no payload file (they fail when resumed)\n")
    if saved.lost_found:
        out.write(f"  {saved.lost_found} payload file(s) whose job row is lost are in {target}/{LOST_FOUND}/ "
                  "(send them again with rawsvc send)\n")
    out.write(f"Put it in place with the service stopped:  mv {state_dir} {state_dir}.damaged && "
              f"mv {target} {state_dir}\n")
    return 0
