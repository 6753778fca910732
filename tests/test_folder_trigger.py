"""The folder trigger (a hot folder), in process with a real spool and a real file action."""

from __future__ import annotations

import os

import pytest
import pytest_twisted

from rawsvc.config import loads
from rawsvc.context import BuildContext
from rawsvc.errors import ConfigError
from rawsvc.service import RawService
from support import wait_until


def config(tmp_path, spool: bool = True, flow: str = "save", **keys) -> str:
    trigger = {"path": str(tmp_path / "in"), "pattern": "*.txt", "poll_interval": 0.05, "settle": 0.1}
    trigger.update(keys)
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in trigger.items())
    return f"""
[service]
state_dir = "{tmp_path}/state"
spool = {"true" if spool else "false"}

[[trigger]]
name = "hot"
type = "folder"
flow = "{flow}"
{lines}
[[flow]]
name = "save"
actions = [ {{ type = "file", folder = "{tmp_path}/out", name = "${{job_id}}.out" }} ]

[[flow]]
name = "broken"
actions = [ {{ type = "file", folder = "/dev/null/nowhere" }} ]
"""


def start(tmp_path, **kw) -> RawService:
    text = config(tmp_path, **kw)
    service = RawService(loads(text, str(tmp_path / "rawsvc.toml"), BuildContext()))
    service.startService()
    return service


def outputs(tmp_path) -> list[bytes]:
    out = tmp_path / "out"
    if not out.exists():
        return []
    return sorted(p.read_bytes() for p in out.iterdir())


def names(folder) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest_twisted.inlineCallbacks
def test_dropped_files_become_jobs_and_move_to_done(tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir()
    service = start(tmp_path)
    try:
        for i in range(20):
            (inbox / f"f{i:02d}.txt").write_bytes(b"file %d\x00\xff" % i)
        (inbox / "notes.tmp").write_bytes(b"not mine")
        yield wait_until(lambda: len(names(inbox / "done")) == 20)
        assert outputs(tmp_path) == sorted(b"file %d\x00\xff" % i for i in range(20))
        assert names(inbox / "done") == [f"f{i:02d}.txt" for i in range(20)]
        assert (inbox / "done" / "f03.txt").read_bytes() == b"file 3\x00\xff"
        assert names(inbox / ".taken") == []
        assert names(inbox / "failed") == []
        assert (inbox / "notes.tmp").read_bytes() == b"not mine"  # the pattern leaves it alone
        status = service.triggers["hot"].status()
        assert status["files_taken"] == 20 and status["listening"]
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_a_failing_flow_moves_the_file_to_failed_and_a_name_taken_there_is_kept(tmp_path):
    inbox = tmp_path / "in"
    (inbox / "failed").mkdir(parents=True)
    (inbox / "failed" / "a.txt").write_bytes(b"an older a")
    service = start(tmp_path, flow="broken")
    try:
        (inbox / "a.txt").write_bytes(b"new a")
        yield wait_until(lambda: len(names(inbox / "failed")) == 2)
        failed = names(inbox / "failed")
        assert "a.txt" in failed and (inbox / "failed" / "a.txt").read_bytes() == b"an older a"
        other = [n for n in failed if n != "a.txt"][0]
        assert other.endswith("~a.txt") and (inbox / "failed" / other).read_bytes() == b"new a"
        assert names(inbox / "done") == []
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_a_file_still_being_written_is_taken_only_when_complete(tmp_path):
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    inbox = tmp_path / "in"
    inbox.mkdir()
    service = start(tmp_path, settle=0.4)
    try:
        with open(inbox / "slow.txt", "wb") as f:
            for i in range(8):
                f.write(b"part %d;" % i)
                f.flush()
                yield deferLater(reactor, 0.15, lambda: None)
        yield wait_until(lambda: names(inbox / "done") == ["slow.txt"])
        assert outputs(tmp_path) == [b"".join(b"part %d;" % i for i in range(8))]
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_a_large_file_streams_from_disk(tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir()
    big = os.urandom(1 << 16) * 64  # 4 MiB
    service = start(tmp_path)
    try:
        (inbox / "big.txt").write_bytes(big)
        yield wait_until(lambda: names(inbox / "done") == ["big.txt"])
        assert outputs(tmp_path) == [big]
    finally:
        yield service.stopService()


@pytest.mark.parametrize("spool", [True, False])
@pytest_twisted.inlineCallbacks
def test_a_taken_file_the_spool_does_not_hold_is_submitted_again_at_start(tmp_path, spool):
    """What a kill between the rename into .taken/ and the spool's commit leaves: it runs once, at start."""
    taken = tmp_path / "in" / ".taken"
    taken.mkdir(parents=True)
    (taken / "0123456789abcdef~left.txt").write_bytes(b"left over")
    (taken / "fedcba9876543210.payload").write_bytes(b"a stray link")
    service = start(tmp_path, spool=spool)
    try:
        yield wait_until(lambda: names(tmp_path / "in" / "done") == ["left.txt"])
        assert outputs(tmp_path) == [b"left over"]
        assert names(tmp_path / "out") == ["0123456789abcdef.out"]  # the same job id
        assert names(taken) == []
    finally:
        yield service.stopService()


@pytest.mark.parametrize("keys, key", [
    ({"pattern": "a/*.txt"}, "pattern"),
    ({"poll_interval": 0}, "poll_interval"),
    ({"settle": -1}, "settle"),
])
def test_bad_keys_are_config_errors_that_name_the_key(tmp_path, keys, key):
    with pytest.raises(ConfigError) as e:
        loads(config(tmp_path, **keys), str(tmp_path / "rawsvc.toml"), BuildContext())
    assert key in str(e.value)
