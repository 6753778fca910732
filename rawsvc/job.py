"""
Jobs: one unit of received data plus its metadata and variables.

A payload is held in memory while small and spills to a temporary file in
the state directory (mode 0600) past a threshold, so that memory does not
grow with job size.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, MutableMapping
from types import MappingProxyType
from typing import Any, BinaryIO

import attrs

from twisted.logger import Logger

from rawsvc.errors import TemplateError
from rawsvc.states import MEMBERS, TRANSITIONS, JobState, transition

log = Logger(namespace="rawsvc.job")

#: Past this size a payload lives in a file rather than in memory.
SPILL_THRESHOLD = 1 << 20

#: Largest payload that may be used as the ${data} text variable.
MAX_DATA_VARIABLE = 16 << 20


_id_sequence = itertools.count()
#: Random per process, so two processes never collide; per-job os.urandom
#: calls release the GIL and cost ~17 us each while the spool's writer runs.
_PROCESS_TAG = os.urandom(2).hex()


def new_job_id() -> str:
    """
    A unique job id that sorts in arrival order: time in ms, then a
    per-process sequence (so jobs within one millisecond keep their order),
    then a random tag of this process (so two processes never collide).
    """
    return f"{int(time.time() * 1000):013x}-{next(_id_sequence) & 0xFFFF:04x}{_PROCESS_TAG}"


_second: list = [None, ""]


def _utc_second(t: float) -> str:
    """C{YYYY-MM-DDTHH:MM:SS} (UTC) of C{t}; the last second is remembered."""
    whole = int(t // 1)  # gmtime floors
    if _second[0] != whole:
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second[0] = whole
    return _second[1]


class PayloadError(Exception):
    """A payload could not be stored (disk full, I/O error, spill budget); the text is for people."""


class SpillBudget:
    """
    Bytes of spill files one trigger may hold at once (C{limit} None: no
    limit).  A payload takes its size when it spills and as it grows, and
    gives it all back when it is discarded.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.limit is not None and self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


class Payload:
    """
    The bytes of a job, written once by a trigger and then read.

    C{write} appends; past C{threshold} the bytes move to a temporary file
    under C{spool_dir}.  C{close} finishes writing; C{discard} removes any
    file.  File writes are small sequential appends to the page cache; the
    durable spool (not this class) does fsyncs, off the reactor thread.

    A write that cannot be stored (the disk is full, an I/O error, the
    trigger's L{SpillBudget} is spent) raises L{PayloadError} after removing
    the file: a payload that failed holds no file and no budget.
    """

    def __init__(
        self,
        data: bytes = b"",
        spool_dir: str | None = None,
        threshold: int = SPILL_THRESHOLD,
        budget: SpillBudget | None = None,
    ) -> None:
        self._chunks: list[bytes] = [data] if data else []
        self._size = len(data)
        self._spool_dir = spool_dir
        self._threshold = threshold
        self._file: BinaryIO | None = None
        self._budget = budget
        self._charged = 0
        self.path: str | None = None
        self.closed = False

    @classmethod
    def from_file(cls, path: str) -> "Payload":
        p = cls()
        p.path = path
        p._size = os.path.getsize(path)
        p.closed = True
        return p

    @property
    def size(self) -> int:
        return self._size

    @property
    def in_memory(self) -> bool:
        return self.path is None

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ValueError("payload is closed")
        self._size += len(data)
        if self._file is not None:
            self._charge(len(data))
            self._guarded(self._file.write, data)
            return
        self._chunks.append(data)
        if self._size > self._threshold and self._spool_dir is not None:
            self._spill()

    def _charge(self, n: int) -> None:
        if self._budget is None:
            return
        if not self._budget.take(n):
            limit = self._budget.limit
            self.discard()
            raise PayloadError(f"the trigger's spill budget ({limit} bytes of concurrent large jobs) is spent")
        self._charged += n

    def _guarded(self, fn: Any, *args: Any) -> Any:
        """Run a file operation; on an OS error, remove the file and raise L{PayloadError}."""
        try:
            return fn(*args)
        except OSError as e:
            self.discard()
            raise PayloadError(f"cannot write the job to {self._spool_dir}: {e.strerror or e}") from None

    def _spill(self) -> None:
        assert self._spool_dir is not None  # write() spills only with a spool directory
        self._charge(self._size)
        self._guarded(self._open_spill)
        assert self._file is not None
        self._guarded(self._file.write, b"".join(self._chunks))
        self._chunks = []

    def _open_spill(self) -> None:
        assert self._spool_dir is not None
        os.makedirs(self._spool_dir, mode=0o700, exist_ok=True)
        fd, self.path = tempfile.mkstemp(prefix="job-", suffix=".part", dir=self._spool_dir)
        self._file = os.fdopen(fd, "wb", buffering=1 << 16)

    def close(self) -> None:
        """Finish writing (flushes a spill file: may raise L{PayloadError})."""
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except OSError as e:
                self._file = None
                self.discard()
                raise PayloadError(f"cannot write the job to {self._spool_dir}: {e.strerror or e}") from None
        self.closed = True

    def discard(self) -> None:
        """Drop the bytes and any file; never raises."""
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except OSError:
                pass  # a full disk: the bytes are being thrown away anyway
        self.closed = True
        self._chunks = []
        if self._budget is not None and self._charged:
            self._budget.give(self._charged)
            self._charged = 0
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def bytes(self) -> bytes:
        """All the bytes; reads the file when spilled (use for small jobs)."""
        if self.path is None:
            if len(self._chunks) > 1:
                self._chunks = [b"".join(self._chunks)]
            return self._chunks[0] if self._chunks else b""
        if self._file is not None:
            self._file.flush()
        with open(self.path, "rb") as f:
            return f.read()

    def open(self) -> BinaryIO:
        """A binary file object reading the payload from the start."""
        if self.path is None:
            import io

            return io.BytesIO(self.bytes())
        if self._file is not None:
            self._file.flush()
        return open(self.path, "rb")


class Variables(MutableMapping[str, Any]):
    """
    A job's variables: a flat string map.  C{data} is the payload, decoded
    lazily with the job's source encoding; templates rendered with encoding
    C{auto} receive the raw bytes instead (see L{raw}).
    """

    __slots__ = ("_job", "_values")

    def __init__(self, job: "Job", values: dict[str, str]) -> None:
        # A view: the values live on the job (C{values} is its dict, not a
        # copy), so a job and its variables make no reference cycle and a
        # finished job is freed by its last reference, not by the collector.
        self._job = job
        self._values = values

    def raw(self, name: str) -> Any:
        if name == "data" and "data" not in self._values:
            return self._payload_bytes()
        return self[name]

    def _payload_bytes(self) -> bytes:
        if self._job.payload.size > MAX_DATA_VARIABLE:
            raise TemplateError(
                f"payload of {self._job.payload.size} bytes is too large for ${{data}} "
                f"(limit {MAX_DATA_VARIABLE}); leave 'data' unset to stream the payload"
            )
        return self._job.payload.bytes()

    def __getitem__(self, name: str) -> Any:
        if name == "data" and "data" not in self._values:
            raw = self._payload_bytes()
            codec = "utf-8" if self._job.encoding == "auto" else self._job.encoding
            return raw.decode(codec, "surrogateescape" if codec == "utf-8" else "replace")
        if name == "size" and "size" not in self._values:
            # Live: triggers usually write the payload after making the job.
            return str(self._job.payload.size)
        if name in _DETECTED and name not in self._values:
            self._detect(labels=True)
        return self._values[name]

    def _detect(self, labels: bool) -> None:
        """
        ${language} (from the payload's first bytes) and, with C{labels} or a
        payload in memory (at most spill_threshold), ${labels}: counting the
        labels of a job spilled to a file reads all of it, so that happens
        only when a flow asks for ${labels}.
        """
        from rawsvc.languages import PREFIX, detect, job_variables

        payload = self._job.payload
        try:
            if labels or payload.in_memory:
                self._values.update(job_variables(payload, self._job.meta))
            else:
                with payload.open() as f:
                    self._values["language"] = detect(f.read(PREFIX), self._job.meta.get("pjl_language", ""))
        except (OSError, ValueError) as e:  # a payload that cannot be read back (gone, discarded)
            log.warn("job {job_id}: cannot read its first bytes to tell its language: {why}",
                     job_id=self._job.job_id, why=getattr(e, "strerror", None) or str(e))
            self._values.setdefault("language", "")
            self._values.setdefault("labels", "0")

    def __setitem__(self, name: str, value: Any) -> None:
        if isinstance(value, (bytes, bytearray)):
            # str(b"OK") would be "b'OK'"; keep undecodable bytes recoverable.
            value = bytes(value).decode("utf-8", "surrogateescape")
        self._values[name] = value if isinstance(value, str) else str(value)

    def __delitem__(self, name: str) -> None:
        del self._values[name]

    def __iter__(self) -> Iterator[str]:
        yield "data"
        yield "size"
        yield from (k for k in self._values if k not in _COMPUTED)

    def __len__(self) -> int:
        return len(self._values) + sum(1 for k in _COMPUTED if k not in self._values)

    def peek(self, name: str, default: str = "") -> str:
        """A variable's value as set (nothing computed), or C{default}."""
        return self._values.get(name, default)

    def snapshot(self) -> dict[str, str]:
        """Every variable except the payload, for records and logs."""
        if "language" not in self._values:
            self._detect(labels=False)  # recorded with the job (the spool's writer thread calls this)
        values = {k: v for k, v in self._values.items() if k != "data"}
        values.setdefault("size", self["size"])
        return values


#: Variables computed from the payload unless a flow sets them.
_COMPUTED = ("data", "size")
#: Set when a job is received (L{rawsvc.languages.job_variables}), else detected on first use.
_DETECTED = ("language", "labels")


_counter = itertools.count(1)


def _frozen_meta(meta: Mapping[str, Any]) -> Mapping[str, str]:
    """A job's C{meta}: a read-only copy, every value a string."""
    return MappingProxyType({str(k): v if isinstance(v, str) else str(v) for k, v in meta.items()})


_NO_META: Mapping[str, str] = MappingProxyType({})


@attrs.define(eq=False)
class Job:
    """One unit of received data, with its metadata and variables."""

    trigger: str
    payload: Payload = attrs.field(factory=Payload)
    peer_host: str = ""
    peer_port: int = 0
    job_id: str = attrs.field(factory=new_job_id)
    received_at: float = attrs.field(factory=time.time)
    encoding: str = "utf-8"
    reply_channel: Any = None
    #: See L{state}; set it only through that property, which checks the transition.
    _state: JobState = JobState.RECEIVED
    error: str | None = None
    seq: int = attrs.field(factory=_counter.__next__)
    finished_at: float | None = None
    _values: dict[str, str] = attrs.field(init=False, repr=False)
    extra: dict[str, str] = attrs.field(factory=dict, repr=False)
    #: Set by a trigger that must hold the job's flow (a virtual printer out
    #: of paper): the sink stores the job as usual, then its flow starts only
    #: once this fires.  Not stored: a resumed job starts at once.
    gate: Any = attrs.field(default=None, repr=False)
    #: What the trigger's framer learnt about the job (the printer's
    #: C{pjl_job_name}, C{pjl_language}, C{eoj}; a plugin's frame number):
    #: read-only, and also set as variables (a built-in variable of the same
    #: name wins), so flows and the spool see it.
    meta: Mapping[str, str] = attrs.field(default=_NO_META, repr=False)  # read-only: one shared empty one
    #: How often an operator ran the job again (the spool's C{run}): with the action's index, the key
    #: of its cluster deliveries.  Not a variable.
    run: int = attrs.field(default=0, repr=False)
    #: While the flow's C{on_error} action N runs: N (its deliveries are keyed apart from the actions').
    on_error_index: int | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        # Not an attrs converter: one would route every attribute set of a
        # job through a setattr hook (job.state, job.error ...).
        self.meta = _frozen_meta(self.meta) if self.meta else _NO_META
        base = {
            **({k: v for k, v in self.meta.items() if k not in _COMPUTED} if self.meta else {}),
            "job_id": self.job_id,
            "trigger": self.trigger,
            "peer_host": self.peer_host,
            "peer_port": str(self.peer_port),
            "received_at": f"{_utc_second(self.received_at)}.{int(self.received_at * 1000) % 1000:03d}Z",
        }
        base.update(self.extra)
        self._values = base

    @property
    def variables(self) -> Variables:
        """The job's variables (L{Variables}: a view of values kept on the job)."""
        return Variables(self, self._values)

    @property
    def state(self) -> JobState:
        """Where the job is in its life (L{rawsvc.states.JobState}); moves only along L{rawsvc.states.TRANSITIONS}."""
        return self._state

    @state.setter
    def state(self, new: str) -> None:
        target = MEMBERS.get(new)
        if target is not None and (target is self._state or target in TRANSITIONS[self._state]):
            self._state = target  # the allowed moves, without a call per job
        else:
            self._state = transition(self.job_id, self._state, new)

    @property
    def size(self) -> int:
        return self.payload.size

    def summary(self) -> dict[str, Any]:
        """A JSON-able record of the job (no payload)."""
        return {
            "job_id": self.job_id,
            "trigger": self.trigger,
            "peer": f"{self.peer_host}:{self.peer_port}" if self.peer_host else "",
            "received_at": self.received_at,
            "finished_at": self.finished_at,
            "size": self.size,
            "state": self.state.value,
            "error": self.error,
            "language": self.variables.peek("language"),
        }
