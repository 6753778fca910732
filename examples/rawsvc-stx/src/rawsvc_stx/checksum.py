"""
Action C{checksum}: the checksum of a job's payload into a variable, and,
with C{expect}, a clean failure when it is not the one expected.

    actions = [
      { type = "checksum", algorithm = "crc32", into = "crc" },
      { type = "file", folder = "var/frames", name = "${job_id}.txt", data = "${data} crc32=${crc}\\n" },
    ]

A mismatch raises L{rawsvc.errors.ActionError}: the job ends C{failed}
with that message as C{${error}}, the flow's C{on_error} actions run, and
the log shows one warning line.  Any other exception would fail the job the
same way but be logged as a crash, with a traceback: for bugs, not for bad
input.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.errors import ActionError
from rawsvc.interfaces import IAction, IActionType
from rawsvc.job import Job
from rawsvc.template import Template

ALGORITHMS = ("crc32", "adler32", "md5", "sha256")
_CHUNK = 1 << 20


def _running(algorithm: str) -> tuple[Callable[[bytes], None], Callable[[], str]]:
    """An (update, hexdigest) pair for C{algorithm}."""
    if algorithm in ("crc32", "adler32"):
        fn = zlib.crc32 if algorithm == "crc32" else zlib.adler32
        state = [fn(b"")]

        def update(data: bytes) -> None:
            state[0] = fn(data, state[0])

        return update, lambda: f"{state[0]:08x}"
    h = hashlib.new(algorithm)
    return h.update, h.hexdigest


def checksum_of_file(algorithm: str, open_file: Callable[[], BinaryIO]) -> str:
    """The checksum of a (large, spilled) payload, read in 1 MiB chunks (run in a thread)."""
    update, digest = _running(algorithm)
    with open_file() as f:
        while chunk := f.read(_CHUNK):
            update(chunk)
    return digest()


def checksum_of(algorithm: str, data: bytes) -> str:
    """The checksum of C{data} as lower-case hex (CRC-32 and Adler-32: 8 digits)."""
    update, digest = _running(algorithm)
    update(data)
    return digest()


@provider(IActionType)
@implementer(IAction)
class ChecksumAction:
    """Checksum the payload into C{into}; with C{expect}, fail the job unless they match."""

    type_name = "checksum"
    options = o.Schema(
        o.Option("algorithm", str, "crc32", o.one_of(*ALGORITHMS), doc="crc32, adler32, md5 or sha256"),
        o.Option("into", str, "checksum", o.variable_name, doc="the variable that receives the hex checksum"),
        o.Option("expect", str, "", o.optional_template,
                 doc="fail the job unless the checksum is this (a template; hex, any case)"),
    )

    def __init__(self, algorithm: str, into: str, expect: Template | None, reactor: Any) -> None:
        self.algorithm = algorithm
        self.into = into
        self.expect = expect
        self.reactor = reactor

    @classmethod
    def from_config(cls, options: dict[str, Any], context: Any) -> "ChecksumAction":
        return cls(options["algorithm"], options["into"], options["expect"], context.reactor)

    def run(self, job: Job) -> Deferred:
        payload = job.payload
        if payload.in_memory:
            d: Deferred = succeed(checksum_of(self.algorithm, payload.bytes()))
        else:  # a large job lives in a file: read it off the reactor thread
            d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                  checksum_of_file, self.algorithm, payload.open)
        return d.addCallback(self._got, job)

    def _got(self, digest: str, job: Job) -> None:
        job.variables[self.into] = digest
        if self.expect is None:
            return
        expected = self.expect.render_text(job.variables).strip().lower()
        if digest != expected:
            raise ActionError(
                f"checksum mismatch: the {self.algorithm} of the {job.size}-byte payload is {digest}, "
                f"expected {expected or 'an empty value'}"
            )
