"""
Trigger C{folder} (a hot folder): a file that appears in C{path} becomes
a job; once its flow ends the file moves to C{path/done/} or
C{path/failed/}.  Written only against the public plugin API.

B{When a file is complete.}  Every C{poll_interval} seconds (a
C{LoopingCall} on the reactor's clock) the folder is listed on a thread.
A file matching C{pattern} is taken once its size and modification time
are the same in two listings in a row and it was last modified at least
C{settle} seconds ago: a file still being written (slowly, or copied in)
is left alone; one renamed in whole is taken at the next poll but one.
Names beginning with C{.} and folders are never taken.

B{Never lost, never run twice.}  The file's path is its only record
until the spool has stored the job, so:

  1. on a thread, the file is renamed (atomic, same folder tree) to
     C{path/.taken/<job_id>~<name>} and hard-linked as
     C{path/.taken/<job_id>.payload};
  2. the job (that C{job_id}, its payload streamed from the link by
     L{Payload.from_file}, never read into memory here) goes to the sink;
     the spool stores it durably (hard-linking or copying the payload)
     and drops the link;
  3. when the flow ends, C{.taken/<job_id>~<name>} moves to C{done/<name>}
     (or C{failed/<name>}; an existing name there gets the job id added).

  At start, before the first poll, every C{.taken/<job_id>~<name>} left
  by a run that was killed is settled with the spool
  (L{rawsvc.interfaces.IJobStore.query} by job id): a job the spool does
  not hold (the kill came before its commit) is submitted again, with the
  same job id; a finished one moves to C{done/} or C{failed/}; an
  unfinished one is resumed by the spool itself, and the trigger moves
  its file once the spool says it finished.  Without a spool
  (C{spool = false}) there is nothing durable to ask, and such files are
  submitted again: at least once, not exactly once.

  A job the sink refuses (the spool cannot store it) goes back into
  C{path} under its name and is tried again at a later poll.  A job
  interrupted by a stop stays in C{.taken/}: the spool resumes it.
"""

from __future__ import annotations

import fnmatch
import os
import time
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.context import config_relative
from rawsvc.errors import ConfigIssue
from rawsvc.interfaces import IJobSink, IJobStore, ITrigger, ITriggerType
from rawsvc.job import Job, Payload, new_job_id
from rawsvc.metrics import TriggerCounters
from rawsvc.triggers.api import LISTENER_OPTIONS

log = Logger(namespace="rawsvc.trigger")

TAKEN, DONE, FAILED = ".taken", "done", "failed"
#: The final job states whose file moves to C{failed/}.
_FAILED_STATES = ("failed", "cancelled")
_UNFINISHED = ("received", "queued", "running", "waiting", "held", "interrupted")


def _pattern(value: str) -> str:
    if not value or "/" in value:
        raise ConfigIssue(f"must be a file name pattern such as '*.zpl', not {value!r}")
    return value


FOLDER_OPTIONS = o.Schema(*(LISTENER_OPTIONS.options[k] for k in ("name",))) + o.Schema(
    o.Option("type", str, doc="the trigger type: `folder`"),
    o.Option("path", str, doc="the watched folder (relative to the config file's folder; created with mode 0700); `done/`, `failed/` and `.taken/` "
                              "are made inside it"),
) + o.Schema(*(LISTENER_OPTIONS.options[k] for k in ("flow", "description", "encoding"))) + o.Schema(
    o.Option("pattern", str, "*", _pattern, doc="only files whose name matches this glob become jobs (`*.zpl`)"),
    o.Option("poll_interval", (int, float), 1.0, o.positive, doc="seconds between two listings of the folder"),
    o.Option("settle", (int, float), 1.0, o.non_negative,
             doc="a file is taken once unchanged for two listings and not modified for this long (s)"),
    o.Option("max_in_flight", int, 16, o.positive, doc="files taken at once: the next wait until their jobs end"),
)


def split_taken(entry: str) -> tuple[str, str] | None:
    """C{(job_id, name)} of a C{.taken/} entry C{<job_id>~<name>}, or None for another file."""
    job_id, sep, name = entry.partition("~")
    if not sep or not job_id or not name:
        return None
    return job_id, name


def _free_name(folder: str, name: str, job_id: str) -> str:
    target = os.path.join(folder, name)
    if os.path.exists(target):
        target = os.path.join(folder, f"{job_id}~{name}")
    return target


class Folder:
    """The file system side, run on a thread: listing, taking and moving files."""

    def __init__(self, path: str, pattern: str) -> None:
        self.path = path
        self.pattern = pattern
        self.taken = os.path.join(path, TAKEN)

    def prepare(self) -> None:
        for sub in ("", TAKEN, DONE, FAILED):
            os.makedirs(os.path.join(self.path, sub), mode=0o700, exist_ok=True)

    def listing(self) -> dict[str, tuple[int, int, float]]:
        """C{name -> (size, mtime_ns, age in s)} of the candidate files."""
        out = {}
        now = time.time()
        with os.scandir(self.path) as it:
            for entry in it:
                if entry.name.startswith(".") or not fnmatch.fnmatchcase(entry.name, self.pattern):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                out[entry.name] = (st.st_size, st.st_mtime_ns, now - st.st_mtime)
        return out

    def take(self, name: str, job_id: str) -> str | None:
        """Move C{name} into C{.taken/} and link its payload; the link's path, or None when it went away."""
        kept = os.path.join(self.taken, f"{job_id}~{name}")
        try:
            os.rename(os.path.join(self.path, name), kept)
        except FileNotFoundError:
            return None
        return self.link(job_id, name)

    def link(self, job_id: str, name: str) -> str:
        link = os.path.join(self.taken, f"{job_id}.payload")
        try:
            os.unlink(link)
        except FileNotFoundError:
            pass
        os.link(os.path.join(self.taken, f"{job_id}~{name}"), link)
        return link

    def left_over(self) -> list[tuple[str, str]]:
        """The C{(job_id, name)} of the files in C{.taken/} (a killed run's); stray links are removed."""
        found, links = [], []
        for entry in sorted(os.listdir(self.taken)):
            parts = split_taken(entry)
            if parts is not None:
                found.append(parts)
            elif entry.endswith(".payload"):
                links.append(entry)
        ids = {j for j, _ in found}
        for entry in links:
            if entry[: -len(".payload")] not in ids:
                os.unlink(os.path.join(self.taken, entry))
        return found

    def finish(self, job_id: str, name: str, where: str | None) -> str:
        """Move the taken file to C{where} (C{done}, C{failed}; None: back into the folder). Its new path."""
        link = os.path.join(self.taken, f"{job_id}.payload")
        try:
            os.unlink(link)
        except FileNotFoundError:
            pass
        folder = self.path if where is None else os.path.join(self.path, where)
        target = _free_name(folder, name, job_id)
        os.rename(os.path.join(self.taken, f"{job_id}~{name}"), target)
        return target


@provider(ITriggerType)
@implementer(ITrigger)
class FolderTrigger(Service):
    """The C{folder} trigger: one job per complete file dropped into a folder."""

    type_name = "folder"
    options = FOLDER_OPTIONS

    def __init__(self, options: dict[str, Any], context: Any) -> None:
        self.name = options["name"]
        self.trigger_name: str = options["name"]
        self.opts = options
        self.reactor = context.reactor
        self.flow = options["flow"]
        self.encoding = options["encoding"]
        self.folder = Folder(config_relative(context.config_path, options["path"]), options["pattern"])
        self.poll_interval = float(options["poll_interval"])
        self.settle = float(options["settle"])
        self.max_in_flight = options["max_in_flight"]
        self.sink: IJobSink = context.sink
        self.store: IJobStore | None = context.store
        self.counters = TriggerCounters()
        self.paused = False
        self.in_flight: dict[str, str] = {}  # job_id -> name, submitted by this run
        self.adopted: dict[str, str] = {}  # job_id -> name, the spool runs them (from a killed run)
        self._seen: dict[str, tuple[int, int]] = {}
        self._loop: LoopingCall | None = None
        self._polling: Deferred | None = None
        self._started: Deferred | None = None
        self.files_taken = 0
        self.last_error = ""

    @classmethod
    def from_config(cls, options: dict[str, Any], context: Any) -> "FolderTrigger":
        return cls(options, context)

    def _thread(self, fn: Any, *args: Any) -> Deferred:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    # Lifetime ---------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """True while the folder is watched."""
        return self._loop is not None and self._loop.running

    def startService(self) -> None:
        super().startService()
        self._started = self._thread(self._prepare).addCallback(self._recover)
        self._started.addCallback(lambda _: self._start_loop()).addErrback(self._broken)

    def _prepare(self) -> list[tuple[str, str]]:
        self.folder.prepare()
        return self.folder.left_over()

    def _broken(self, failure: Failure) -> None:
        self.last_error = failure.getErrorMessage()
        log.failure("trigger {trigger}: cannot watch {path}", failure, trigger=self.name, path=self.folder.path)

    def _start_loop(self) -> None:
        if not self.running or self.paused or self._loop is not None:
            return
        self._loop = LoopingCall(self._poll)
        self._loop.clock = self.reactor
        self._loop.start(self.poll_interval, now=True).addErrback(self._broken)
        log.info("trigger {trigger} (folder) watching {path} for {pattern}, flow {flow}", trigger=self.name,
                 path=self.folder.path, pattern=self.folder.pattern, flow=self.flow)

    def _stop_loop(self) -> Deferred:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        polling = self._polling
        return polling if polling is not None else succeed(None)

    def stopService(self) -> Deferred:
        """Stop polling; the jobs in flight end (or are interrupted) with the sink's drain."""
        super().stopService()
        return self._stop_loop()

    def pause(self) -> Deferred:
        self.paused = True
        return self._stop_loop()

    def resume(self) -> Deferred:
        self.paused = False
        if self.running and self._started is not None and self._started.called:
            self._start_loop()
        return succeed(None)

    # Recovery ---------------------------------------------------------------

    def _recover(self, left: list[tuple[str, str]]) -> Deferred:
        """Settle the files a killed run left in C{.taken/} with the spool (see the module docstring)."""
        if left:
            log.info("trigger {trigger}: {n} file(s) taken by the last run; asking the spool about them",
                     trigger=self.name, n=len(left))
        ds = [self._settle_left(job_id, name) for job_id, name in left]
        return DeferredList(ds, consumeErrors=True)

    def _spool_state(self, job_id: str) -> Deferred:
        """Fires with the job's state in the spool, or None when it does not hold it (or there is no spool)."""
        if self.store is None:
            return succeed(None)
        d = self.store.query(prefix=job_id, limit=0)
        return d.addCallback(lambda records: next((str(r.state) for r in records if r.job_id == job_id), None))

    def _settle_left(self, job_id: str, name: str) -> Deferred:
        def known(state: str | None) -> Any:
            if state is None:
                return self._thread(self.folder.link, job_id, name).addCallback(
                    lambda link: self._submit(job_id, name, link))
            if state in _UNFINISHED:
                self.adopted[job_id] = name
                return None
            return self._move(job_id, name, state)

        d = self._spool_state(job_id).addCallback(known)
        return d.addErrback(self._log_failure, f"cannot recover {name}")

    def _check_adopted(self) -> Deferred:
        ds = []
        for job_id, name in list(self.adopted.items()):
            def known(state: str | None, job_id: str = job_id, name: str = name) -> Any:
                if state is None or state not in _UNFINISHED:
                    del self.adopted[job_id]
                    return self._move(job_id, name, state or "failed")
                return None
            ds.append(self._spool_state(job_id).addCallback(known))
        return DeferredList(ds, consumeErrors=True)

    # Polling ----------------------------------------------------------------

    def _poll(self) -> Deferred | None:
        if self._polling is not None:
            return None  # the last listing is still running (a slow disk)
        d = self._thread(self.folder.listing).addCallback(self._listed)
        if self.adopted:
            d.addCallback(lambda _: self._check_adopted())
        d.addErrback(self._log_failure, f"cannot list {self.folder.path}")
        self._polling = d

        def done(_: Any) -> None:
            self._polling = None
        d.addBoth(done)
        return None

    def _listed(self, files: dict[str, tuple[int, int, float]]) -> Deferred:
        seen, self._seen = self._seen, {name: (size, mtime) for name, (size, mtime, _) in files.items()}
        ready = sorted(name for name, (size, mtime, age) in files.items()
                       if seen.get(name) == (size, mtime) and age >= self.settle)
        room = self.max_in_flight - len(self.in_flight)
        ds = [self._take(name) for name in ready[:max(0, room)] if self.running and not self.paused]
        return DeferredList(ds, consumeErrors=True)

    def _take(self, name: str) -> Deferred:
        job_id = new_job_id()
        self.in_flight[job_id] = name  # counted now, so the room is right while it moves

        def taken(link: str | None) -> None:
            if link is None:  # gone between the listing and now
                self.in_flight.pop(job_id, None)
                return
            self._seen.pop(name, None)
            self.files_taken += 1
            self._submit(job_id, name, link)

        def failed(f: Failure) -> None:
            self.in_flight.pop(job_id, None)
            self._log_failure(f, f"cannot take {name}")
        return self._thread(self.folder.take, name, job_id).addCallbacks(taken, failed)

    def _submit(self, job_id: str, name: str, link: str) -> None:
        self.in_flight[job_id] = name
        full = os.path.join(self.folder.path, name)
        job = Job(trigger=self.trigger_name, payload=Payload.from_file(link), job_id=job_id, encoding=self.encoding,
                  peer_host="localhost", meta={"file_name": name, "file_path": full})
        try:
            d = self.sink.submit(job, self.flow, self.counters)
        except Exception:
            d = Deferred()
            d.errback()
        d.addCallback(lambda finished: self._ended(job_id, name, str(finished.state)))
        d.addErrback(self._log_failure, f"the job of {name} failed in the sink")

    def _ended(self, job_id: str, name: str, state: str) -> Deferred | None:
        self.in_flight.pop(job_id, None)
        if state == "interrupted":
            return None  # the spool resumes it at the next start; the file stays taken
        return self._move(job_id, name, state)

    def _move(self, job_id: str, name: str, state: str) -> Deferred:
        where = DONE if state == "done" else FAILED if state in _FAILED_STATES else None
        if where is None:
            log.warn("trigger {trigger}: the job of {name} was {state}; the file goes back to be tried again",
                     trigger=self.name, name=name, state=state)
        return self._thread(self.folder.finish, job_id, name, where).addErrback(
            self._log_failure, f"cannot move {name} out of {TAKEN}/")

    def _log_failure(self, failure: Failure, what: str) -> None:
        self.last_error = f"{what}: {failure.getErrorMessage()}"
        log.failure("trigger {trigger}: {what}", failure, trigger=self.name, what=what)

    # Status -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type_name,
            "path": self.folder.path,
            "pattern": self.folder.pattern,
            "listening": self.listening,
            "paused": self.paused,
            "flow": self.flow,
            "files_taken": self.files_taken,
            "jobs_running": len(self.in_flight) + len(self.adopted),
            "last_error": self.last_error,
            "counters": self.counters.as_dict(),
        }

    def connection_list(self) -> list[dict[str, Any]]:
        return []

    def receiving(self) -> int:
        """A file is whole before it is taken: nothing is ever half received."""
        return 0

    def abort_receiving(self) -> int:
        return 0
