"""rawsvc.spool.check: what makes a spool damaged rather than empty, read without changing anything."""

from __future__ import annotations

import os
import sqlite3

import pytest
import pytest_twisted

from rawsvc.cli import main
from rawsvc.spool import check
from rawsvc.spool.schema import connect, migrate
from rawsvc.spool.store import Store


@pytest.fixture(scope="module", autouse=True)
def reactor_running():
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    pytest_twisted.blockon(deferLater(reactor, 0, lambda: None))


@pytest_twisted.inlineCallbacks
def opened_once(state_dir, reactor):
    store = Store(str(state_dir), reactor)
    store.start()
    yield store.open()
    yield store.stop()


@pytest_twisted.inlineCallbacks
def test_a_new_state_dir_is_fresh_and_a_clean_spool_is_ok(tmp_path, reactor):
    assert check.inspect(str(tmp_path)).fresh
    yield opened_once(tmp_path, reactor)
    report = check.inspect(str(tmp_path))
    assert report.ok and not report.fresh and report.jobs == 0
    assert not os.path.exists(tmp_path / "spool.db-wal")  # a clean close folds it in
    assert os.stat(tmp_path / "spool.marker").st_mode & 0o777 == 0o600


@pytest_twisted.inlineCallbacks
def test_a_spool_db_from_elsewhere_is_not_this_spool(tmp_path, reactor):
    yield opened_once(tmp_path, reactor)
    os.unlink(tmp_path / "spool.db")
    migrate(connect(str(tmp_path / "spool.db")))  # a database with our tables but not our spool
    problems = check.inspect(str(tmp_path)).problems
    assert len(problems) == 1 and "is not the spool this state_dir had" in problems[0]


def test_a_file_that_is_not_sqlite_is_damage(tmp_path):
    (tmp_path / "spool.db").write_bytes(b"\x00" * 8192)
    assert "is not a SQLite database" in check.inspect(str(tmp_path)).problems[0]


@pytest_twisted.inlineCallbacks
def test_a_spool_from_before_the_marker_opens_and_gets_one(tmp_path, reactor):
    conn = sqlite3.connect(tmp_path / "spool.db")
    conn.executescript(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE, trigger TEXT,"
        " flow TEXT, state TEXT, payload BLOB, payload_path TEXT);"
    )
    conn.close()
    assert check.inspect(str(tmp_path)).ok
    yield opened_once(tmp_path, reactor)
    assert check.read_marker(str(tmp_path))["spool_id"]
    assert check.inspect(str(tmp_path)).ok


@pytest_twisted.inlineCallbacks
def test_a_damaged_spool_stops_the_store_from_opening(tmp_path, reactor):
    yield opened_once(tmp_path, reactor)
    (tmp_path / "spool.db").write_bytes(b"")
    store = Store(str(tmp_path), reactor)
    store.start()
    try:
        with pytest.raises(check.SpoolDamaged):
            yield store.open()
        assert "is empty (0 bytes), but spool.marker says a spool was created here" in store.error
    finally:
        yield store.stop()


def test_the_cli_takes_a_relative_state_dir_from_the_config_files_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "x.toml").write_text('[service]\nstate_dir = "../var/x"\n')
    monkeypatch.chdir("/")
    assert main(["spool", "check", "-c", str(tmp_path / "etc" / "x.toml")]) == 0
    assert capsys.readouterr().out.startswith(f"spool {tmp_path / 'var' / 'x'}: none yet")
