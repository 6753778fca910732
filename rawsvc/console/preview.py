"""
Label previews for the console, bounded so that a huge or hostile label
cannot stall or exhaust the service:

  - B{off the reactor}: each render runs in a worker process
    (L{rawsvc.console.render_worker}) that the reactor talks to through
    pipes;
  - B{time}: a worker still drawing after C{timeout} seconds is killed and
    the preview says so;
  - B{size}: a payload over C{max_bytes} is refused before any work;
  - B{concurrency}: at most C{concurrency} workers at once
    (C{DeferredSemaphore}); more requests wait their turn;
  - B{cache}: the last C{cache_size} results, by job id; requests for a
    job being drawn share its one render.

A worker process takes a while to start (an interpreter, the renderer's
import): once someone looks at the console (L{Previewer.warm}), one spare
worker waits, started and idle, for the next render, and a new spare is
started as it is taken.  Each render still has a process of its own; a
spare nobody takes exits by itself after L{SPARE_IDLE} seconds.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections import OrderedDict
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from rawsvc.console import zpl
from rawsvc.console.zpl import Rendered

log = Logger(namespace="rawsvc.console")

#: Seconds a spare worker waits for a payload before it exits.
SPARE_IDLE = 300.0
#: A spare older than this is not fed (it may be exiting): a new worker is started instead.
SPARE_USE = SPARE_IDLE - 30.0


class _Worker(ProcessProtocol):
    """Feeds one payload to a worker process and fires C{done} with its L{Rendered}."""

    def __init__(self, data: bytes | None, timeout: float, reactor: Any) -> None:
        #: The payload; None for a spare until L{feed}.
        self.data = data
        self.timeout = timeout
        self.reactor = reactor
        self.out = bytearray()
        self.err = bytearray()
        self.done: Deferred[Rendered] = Deferred()
        self.timed_out = False
        self.timer: Any = None
        self.connected = False
        self.ended = False
        self.started = reactor.seconds()

    def connectionMade(self) -> None:
        self.connected = True
        if self.data is not None:
            self._start()

    def feed(self, data: bytes) -> None:
        """Give a spare its payload."""
        self.data = data
        if self.connected:
            self._start()

    def _start(self) -> None:
        assert self.data is not None
        self.transport.write(self.data)  # type: ignore[union-attr]
        self.transport.closeStdin()  # type: ignore[union-attr]
        self.timer = self.reactor.callLater(self.timeout, self._kill)

    def _kill(self) -> None:
        self.timed_out = True
        try:
            self.transport.signalProcess("KILL")  # type: ignore[union-attr]
        except Exception:  # it has just ended
            pass

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        if len(self.err) < 4096:
            self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.data is None:  # a spare that was never fed: nothing to answer
            return
        language = zpl.detect_language(self.data[:65536])
        if self.timed_out:
            self.done.callback(Rendered(language, error=f"drawing the label took longer than {self.timeout:g} s; stopped"))
            return
        if not reason.check(ProcessDone):
            code = reason.value.exitCode if isinstance(reason.value, ProcessTerminated) else None
            log.warn("preview worker failed (exit {code}): {stderr}", code=code,
                     stderr=self.err.decode("utf-8", "replace")[-500:])
            self.done.callback(Rendered(language, error="the preview worker failed; see the service log"))
            return
        try:
            answer = json.loads(self.out)
            result = Rendered(answer["language"], [base64.b64decode(p) for p in answer["pngs"]],
                              list(answer["warnings"]), answer["error"])
        except (ValueError, KeyError, TypeError):
            result = Rendered(language, error="the preview worker gave an answer that could not be read")
        self.done.callback(result)


class Previewer:
    """Draws job payloads as PNGs within the bounds above; C{preview(key, data)} fires with a L{Rendered}."""

    #: The worker process's argv.
    COMMAND = (sys.executable, "-m", "rawsvc.console.render_worker")

    def __init__(self, reactor: Any, timeout: float = 10.0, concurrency: int = 2, cache_size: int = 64,
                 max_bytes: int = zpl.MAX_BYTES, command: tuple[str, ...] = COMMAND,
                 spare: bool | None = None) -> None:
        self.reactor = reactor
        self.command = command
        #: Keep a spare worker (L{warm}); by default only for the real worker, which knows C{--spare}.
        self.spare = command == self.COMMAND if spare is None else spare
        self._spare: _Worker | None = None
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.cache_size = cache_size
        self.semaphore = DeferredSemaphore(concurrency)
        self.cache: OrderedDict[str, Rendered] = OrderedDict()
        self.pending: dict[str, list[Deferred[Rendered]]] = {}
        #: Workers started (tests read it to see the cache work).
        self.renders = 0

    def cached(self, key: str) -> Rendered | None:
        """The cached result for C{key}, if any."""
        return self.cache.get(key)

    def preview(self, key: str, data: bytes, size: int | None = None) -> Deferred[Rendered]:
        """
        The preview of C{data} (the payload of job C{key}, C{size} bytes in
        all when C{data} is only its head): from the cache, or drawn now.
        """
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            return _fired(hit)
        total = len(data) if size is None else size
        language = zpl.detect_language(data[:65536])
        if language != "zpl":
            return self._store(key, Rendered(language))
        if total > self.max_bytes:
            return self._store(key, Rendered(
                language, error=f"the job is {total} bytes; previews are drawn up to {self.max_bytes} bytes"))
        waiter: Deferred[Rendered] = Deferred()
        if key in self.pending:
            self.pending[key].append(waiter)
            return waiter
        self.pending[key] = [waiter]
        d = self.semaphore.run(self._spawn, data)
        d.addCallback(self._finished, key)
        d.addErrback(self._failed, key, language)
        return waiter

    def warm(self) -> None:
        """Have a spare worker waiting (someone looks at the console: a render may follow)."""
        if not self.spare:
            return
        spare = self._spare
        if spare is not None and not spare.ended and self.reactor.seconds() - spare.started < SPARE_USE:
            return
        self._spare = worker = _Worker(None, self.timeout, self.reactor)
        argv = [*self.command, "--spare", f"{SPARE_IDLE:g}"]
        try:
            self.reactor.spawnProcess(worker, argv[0], argv, env=dict(os.environ))
        except OSError as e:
            log.warn("cannot start a spare preview worker: {error}", error=str(e))
            self._spare = None

    def stop(self) -> None:
        """The console stops: end the spare worker (renders in progress end by their own bounds)."""
        self.spare = False
        spare, self._spare = self._spare, None
        if spare is not None and not spare.ended and spare.data is None:
            try:
                spare.transport.signalProcess("KILL")  # type: ignore[union-attr]
            except Exception:  # it has just ended
                pass

    def _spawn(self, data: bytes) -> Deferred[Rendered]:
        self.renders += 1
        spare, self._spare = self._spare, None
        if spare is not None and not spare.ended and self.reactor.seconds() - spare.started < SPARE_USE:
            spare.feed(data)
            self.warm()  # the next one
            return spare.done
        worker = _Worker(data, self.timeout, self.reactor)
        self.reactor.spawnProcess(worker, self.command[0], list(self.command), env=dict(os.environ))
        if spare is not None:
            self.warm()
        return worker.done

    def _finished(self, result: Rendered, key: str) -> None:
        self._store(key, result)
        for waiter in self.pending.pop(key, []):
            waiter.callback(result)

    def _failed(self, failure: Failure, key: str, language: str) -> None:
        log.failure("preview of job {job_id} failed", failure, job_id=key)
        result = Rendered(language, error="the preview could not be drawn; see the service log")
        for waiter in self.pending.pop(key, []):
            waiter.callback(result)

    def _store(self, key: str, result: Rendered) -> Deferred[Rendered]:
        self.cache[key] = result
        self.cache.move_to_end(key)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return _fired(result)


def _fired(result: Rendered) -> Deferred[Rendered]:
    d: Deferred[Rendered] = Deferred()
    d.callback(result)
    return d
