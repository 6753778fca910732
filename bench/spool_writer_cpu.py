"""
The spool writer's CPU per job, in one thread: no reactor, no queue, no disk wait.

    .venv/bin/python bench/spool_writer_cpu.py [--jobs 20000] [--group 16]
    PYTHONPATH=/path/to/other/tree .venv/bin/python bench/spool_writer_cpu.py   # another tree's writer

Groups of C{--group} new 1 KiB jobs, each with the final states of the group
before it (a reply flow at 32 clients), go through L{Writer._run_batch}
(journal record, acknowledgement) as the writer thread runs them; the index
behind is written every 25 groups (its L{INDEX_DELAY} at ~8,000 jobs/s).
C{os.fdatasync} is a no-op, so the figure is the CPU of the work alone, and
repeatable on a shared machine where C{bench/durable_rt.py}'s server CPU per
job is not (its spread is larger than the writer's part).  Prints CPU us per
job, and the part of it spent writing the index.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from twisted.internet.defer import Deferred

from rawsvc.job import Job, Payload
from rawsvc.spool.ops import ADD, FINISH, Op
from rawsvc.spool.store import Store


class _NoReactor:
    """The writer's results go nowhere."""

    def callFromThread(self, f, *args):
        pass

    def callLater(self, delay, f, *args):
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--group", type=int, default=16)
    args = p.parse_args()
    os.fdatasync = lambda fd: None  # the CPU of the work, not the disk's wait
    store = Store(tempfile.mkdtemp(prefix="spool-writer-cpu-"), _NoReactor())
    store._open()  # in this thread: it is the writer thread here
    writer = store.writer
    data = b"x" * 1024
    previous: list[Job] = []

    def group() -> None:
        nonlocal previous
        ops, jobs = [], []
        for _ in range(args.group):
            job = Job(trigger="bench", payload=Payload(data), peer_host="127.0.0.1", peer_port=1234)
            job.variables["language"], job.variables["labels"] = "raw", "0"  # as a trigger that detected them
            ops.append(Op(ADD, None, (job, "ack", None, time.time()), True, Deferred()))
            jobs.append(job)
        for job in previous:
            ops.append(Op(FINISH, None, (job.job_id, "done", None, 1, job.variables.snapshot(),
                                         ("127.0.0.1:9100", 1024), time.time()), True, None))
        previous = jobs
        writer._run_batch(ops)

    groups = args.jobs // args.group
    for i in range(200):  # warm up: statements compiled, the index not empty
        group()
        if i % 25 == 24:
            writer._write_index()
    index = 0.0
    start = time.process_time()
    for i in range(groups):
        group()
        if i % 25 == 24:
            t = time.process_time()
            writer._write_index()
            index += time.process_time() - t
    writer._write_index()
    n = groups * args.group
    print(f"writer CPU {(time.process_time() - start) / n * 1e6:.1f} us/job, of which the index behind "
          f"{index / n * 1e6:.1f} us/job ({n:,} jobs in groups of {args.group})")


if __name__ == "__main__":
    main()
