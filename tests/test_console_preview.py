"""The console's previewer: real worker processes, bounded in time, size and concurrency, cached by job id."""

from __future__ import annotations

import json
import sys

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

from rawsvc.console.preview import Previewer
from rawsvc.console.zpl import detect_language

LABEL = b"^XA^FO50,50^A0N,40,40^FDHello^FS^XZ"
#: A worker that answers after 0.3 s with no image.
SLOW_ANSWER = (sys.executable, "-c", "import sys, time, json; sys.stdin.buffer.read(); time.sleep(0.3); "
               "json.dump({'language': 'zpl', 'warnings': [], 'error': None, 'pngs': []}, sys.stdout)")
#: A worker that never answers.
HANGS = (sys.executable, "-c", "import time; time.sleep(60)")


@pytest.fixture
def reactor_():
    from twisted.internet import reactor

    return reactor


@pytest_twisted.inlineCallbacks
def test_a_zpl_label_is_drawn_in_a_worker_and_cached_by_job_id(reactor_):
    previewer = Previewer(reactor_)
    first = yield previewer.preview("job-1", LABEL)
    assert len(first.pngs) == 1 and first.pngs[0].startswith(b"\x89PNG") and first.error is None
    again = yield previewer.preview("job-1", LABEL)
    assert again is first and previewer.renders == 1


@pytest_twisted.inlineCallbacks
def test_requests_for_a_job_being_drawn_share_one_render(reactor_):
    previewer = Previewer(reactor_)
    results = yield gatherResults([previewer.preview("job-1", LABEL) for _ in range(3)])
    assert previewer.renders == 1 and results[0] is results[1] is results[2]


@pytest_twisted.inlineCallbacks
def test_a_render_past_its_time_is_killed_and_says_so(reactor_):
    previewer = Previewer(reactor_, timeout=0.5, command=HANGS)
    result = yield previewer.preview("job-1", LABEL)
    assert result.pngs == [] and result.error == "drawing the label took longer than 0.5 s; stopped"


@pytest_twisted.inlineCallbacks
def test_a_payload_over_the_limit_is_refused_without_a_worker(reactor_):
    previewer = Previewer(reactor_, max_bytes=1000)
    result = yield previewer.preview("job-1", LABEL[:20], size=50_000_000)
    assert result.error == "the job is 50000000 bytes; previews are drawn up to 1000 bytes"
    assert previewer.renders == 0


@pytest_twisted.inlineCallbacks
def test_at_most_concurrency_workers_run_at_once(reactor_):
    previewer = Previewer(reactor_, concurrency=2, command=SLOW_ANSWER)
    ds = [previewer.preview(f"job-{i}", LABEL) for i in range(5)]
    assert previewer.renders == 2 and len(previewer.semaphore.waiting) == 3
    yield gatherResults(ds)
    assert previewer.renders == 5


@pytest_twisted.inlineCallbacks
def test_a_non_zpl_job_has_its_language_and_no_image(reactor_):
    previewer = Previewer(reactor_)
    result = yield previewer.preview("job-1", b"%!PS-Adobe-3.0\n")
    assert (result.language, result.pngs, result.error) == ("postscript", [], None)
    assert previewer.renders == 0


@pytest_twisted.inlineCallbacks
def test_a_worker_that_crashes_gives_an_error_for_people(reactor_):
    previewer = Previewer(reactor_, command=(sys.executable, "-c", "import sys; sys.exit(3)"))
    result = yield previewer.preview("job-1", LABEL)
    assert result.error == "the preview worker failed; see the service log"


@pytest_twisted.inlineCallbacks
def test_the_cache_keeps_the_newest_results(reactor_):
    previewer = Previewer(reactor_, cache_size=2)
    for i in range(3):
        yield previewer.preview(f"job-{i}", b"plain text")
    assert list(previewer.cache) == ["job-1", "job-2"]


@pytest.mark.parametrize("head, language", [
    (b"^XA^XZ", "zpl"), (b"\x1b%-12345X@PJL ENTER LANGUAGE=ZPL\r\n^XA^XZ", "zpl"),
    (b"\x1b%-12345X@PJL JOB\r\n", "pjl"), (b"%PDF-1.7", "pdf"), (b"%!PS", "postscript"),
    (b"\x1bE\x1b&l0O", "pcl"), (b"hello\n", "text"), (b"\x00\xff\x10\x80", "binary"), (b"", "empty"),
])
def test_detect_language(head, language):
    assert detect_language(head) == language


def test_the_worker_answers_json(tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, "-m", "rawsvc.console.render_worker"], input=LABEL, capture_output=True,
                          timeout=60, check=True)
    answer = json.loads(done.stdout)
    assert answer["language"] == "zpl" and len(answer["pngs"]) == 1


@pytest_twisted.inlineCallbacks
def test_a_spare_worker_waits_started_draws_the_next_label_and_is_replaced(reactor_):
    from printer_support import wait_for

    previewer = Previewer(reactor_)
    try:
        previewer.warm()
        spare = previewer._spare
        assert spare is not None
        yield wait_for(lambda: spare.connected)
        previewer.warm()  # one spare at a time
        assert previewer._spare is spare
        result = yield previewer.preview("job-1", LABEL)
        assert result.pngs and result.pngs[0].startswith(b"\x89PNG") and spare.ended  # it drew this one
        assert previewer._spare is not None and previewer._spare is not spare  # the next one waits
        other = yield previewer.preview("job-2", LABEL.replace(b"Hello", b"Again"))
        assert other.pngs and other.pngs[0] != result.pngs[0] and previewer.renders == 2
    finally:
        last = previewer._spare
        previewer.stop()
    yield wait_for(lambda: last is None or last.ended)
    previewer.warm()  # stopped: no new spare
    assert previewer._spare is None


def test_a_spare_nobody_feeds_exits_by_itself():
    import subprocess
    import time

    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "rawsvc.console.render_worker", "--spare", "0.3"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.wait(30) == 0 and proc.stdout.read() == b""  # its stdin still open: it gave up waiting
        assert time.monotonic() - started >= 0.3
    finally:
        proc.stdin.close()
        proc.stdout.close()
