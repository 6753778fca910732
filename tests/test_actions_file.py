"""The file action: atomic writes into a folder, names that must stay inside it."""

from __future__ import annotations

import os
import stat

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from rawsvc.actions.file import FileAction, safe_path
from rawsvc.context import BuildContext
from rawsvc.errors import ActionError, ConfigIssue
from rawsvc.flow import Flow, run_job
from rawsvc.interfaces import IAction, IActionType
from rawsvc.job import Job, Payload


def build(**table) -> FileAction:
    values, issues = FileAction.options.validate(table)
    if issues:
        raise issues[0]
    return FileAction.from_config(values, BuildContext())


def job_with(payload: bytes = b"PAYLOAD", **variables) -> Job:
    job = Job("t", payload=Payload(payload), job_id="J1")
    job.variables.update(variables)
    return job


def test_file_provides_the_interfaces(tmp_path):
    assert verifyObject(IActionType, FileAction)
    assert verifyObject(IAction, build(folder=str(tmp_path)))


@pytest_twisted.inlineCallbacks
def test_writes_the_payload_under_the_default_name(tmp_path):
    yield build(folder=str(tmp_path)).run(job_with(b"\x00\xffraw"))
    assert (tmp_path / "J1.prn").read_bytes() == b"\x00\xffraw"


@pytest_twisted.inlineCallbacks
def test_name_is_a_template(tmp_path):
    yield build(folder=str(tmp_path), name="${trigger}-${sku}.txt").run(job_with(sku="A1"))
    assert (tmp_path / "t-A1.txt").read_bytes() == b"PAYLOAD"


@pytest_twisted.inlineCallbacks
def test_data_template_replaces_the_payload(tmp_path):
    yield build(folder=str(tmp_path), data="SKU=${sku}\n", encoding="latin-1").run(job_with(sku="Grüße"))
    assert (tmp_path / "J1.prn").read_bytes() == "SKU=Grüße\n".encode("latin-1")


@pytest_twisted.inlineCallbacks
def test_spilled_payload_is_streamed_from_its_file(tmp_path):
    payload = Payload(spool_dir=str(tmp_path / "spool"), threshold=4)
    payload.write(b"0123456789" * 1000)
    payload.close()
    assert not payload.in_memory
    job = Job("t", payload=payload, job_id="big")
    yield build(folder=str(tmp_path / "out")).run(job)
    assert (tmp_path / "out" / "big.prn").read_bytes() == b"0123456789" * 1000


@pytest_twisted.inlineCallbacks
def test_folder_and_subfolders_are_created(tmp_path):
    yield build(folder=str(tmp_path / "a" / "b"), name="${sku}/x.prn").run(job_with(sku="d"))
    assert (tmp_path / "a" / "b" / "d" / "x.prn").read_bytes() == b"PAYLOAD"


@pytest_twisted.inlineCallbacks
def test_file_gets_the_configured_mode(tmp_path):
    yield build(folder=str(tmp_path), mode="0640").run(job_with())
    assert stat.S_IMODE(os.stat(tmp_path / "J1.prn").st_mode) == 0o640


@pytest_twisted.inlineCallbacks
def test_default_mode_is_0600(tmp_path):
    yield build(folder=str(tmp_path)).run(job_with())
    assert stat.S_IMODE(os.stat(tmp_path / "J1.prn").st_mode) == 0o600


@pytest_twisted.inlineCallbacks
def test_write_is_atomic_temp_fsync_rename(tmp_path, monkeypatch):
    """The content goes to a temp file in the same folder, is fsynced, then renamed."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", fd))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.path.dirname(src), os.path.basename(src), dst))
        assert open(src, "rb").read() == b"PAYLOAD"
        assert not os.path.exists(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    yield build(folder=str(tmp_path)).run(job_with())
    kinds = [c[0] for c in calls]
    assert kinds == ["fsync", "replace", "fsync"]  # file, rename, directory
    _, directory, temp_name, dst = calls[1]
    assert directory == str(tmp_path) and temp_name.startswith(".part-")
    assert dst == str(tmp_path / "J1.prn")
    assert sorted(os.listdir(tmp_path)) == ["J1.prn"]


@pytest_twisted.inlineCallbacks
def test_overwrite_replaces_an_existing_file(tmp_path):
    (tmp_path / "J1.prn").write_bytes(b"old")
    yield build(folder=str(tmp_path)).run(job_with(b"new"))
    assert (tmp_path / "J1.prn").read_bytes() == b"new"


@pytest_twisted.inlineCallbacks
def test_no_overwrite_fails_when_the_file_exists(tmp_path):
    (tmp_path / "J1.prn").write_bytes(b"old")
    with pytest.raises(ActionError, match="already exists"):
        yield build(folder=str(tmp_path), overwrite=False).run(job_with(b"new"))
    assert (tmp_path / "J1.prn").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["J1.prn"]  # no temp file left behind


@pytest_twisted.inlineCallbacks
def test_save_path_receives_the_written_path(tmp_path):
    job = job_with()
    yield build(folder=str(tmp_path), save_path="archived").run(job)
    assert job.variables["archived"] == str(tmp_path / "J1.prn")


@pytest.mark.parametrize(
    "name,why",
    [
        ("../escape.prn", "would leave the folder"),
        ("a/../../escape.prn", "would leave the folder"),
        ("..", "would leave the folder"),
        ("/etc/passwd", "is absolute"),
        ("\\\\server\\share", "is absolute"),
        ("a\x00b", "NUL"),
        ("", "empty"),
        ("a//b", "would leave the folder"),
        (".", "would leave the folder"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_name_that_would_leave_the_folder_fails_the_action(tmp_path, name, why):
    folder = tmp_path / "jobs"
    job = job_with(n=name)
    yield run_job(Flow("f", [build(folder=str(folder), name="${n}")]), job)
    assert job.state == "failed"
    assert why in job.error
    assert not (tmp_path / "escape.prn").exists()
    assert not folder.exists()  # nothing created for a refused name


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "jobs"
    folder.mkdir()
    (folder / "link").symlink_to(outside)
    with pytest.raises(ActionError, match="resolves outside"):
        safe_path(str(folder), "link/x.prn")


def test_safe_path_accepts_names_inside(tmp_path):
    assert safe_path(str(tmp_path), "a/b.prn") == str(tmp_path / "a" / "b.prn")


@pytest_twisted.inlineCallbacks
def test_unknown_variable_in_name_fails_naming_it(tmp_path):
    job = job_with()
    yield run_job(Flow("f", [build(folder=str(tmp_path), name="${nope}.prn")]), job)
    assert job.state == "failed" and job.error == "unknown variable ${nope}"


@pytest_twisted.inlineCallbacks
def test_unwritable_folder_fails_the_action(tmp_path):
    blocker = tmp_path / "file-not-folder"
    blocker.write_bytes(b"")
    job = job_with()
    yield run_job(Flow("f", [build(folder=str(blocker))]), job)
    assert job.state == "failed"
    assert "cannot write" in job.error or "Error" in job.error


def test_bad_mode_is_a_config_issue():
    values, issues = FileAction.options.validate({"folder": "x", "mode": "rw"})
    assert [i.key for i in issues] == ["mode"]


def test_missing_folder_is_a_config_issue():
    values, issues = FileAction.options.validate({})
    assert [(i.key, i.message) for i in issues] == [("folder", "is required")]


def test_bad_save_path_is_a_config_issue_on_its_key():
    with pytest.raises(ConfigIssue) as e:
        build(folder="x", save_path="1bad")
    assert e.value.key == "save_path"


def test_relative_folder_is_resolved_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert build(folder="var/jobs").folder == str(tmp_path / "var" / "jobs")
