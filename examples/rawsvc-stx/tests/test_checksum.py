"""The checksum action in a flow: a variable, and a clean failure on a mismatch."""

from __future__ import annotations

import pytest_twisted
from rawsvc.config import loads
from rawsvc.job import Job, Payload

FLOW = '[[flow]]\nname = "f"\nactions = [ {{ type = "checksum", {keys} }} ]\n'


def run(keys: str, payload: bytes, **variables):
    flow = loads(FLOW.format(keys=keys)).flows["f"]
    job = Job("t", payload=Payload(payload))
    for name, value in variables.items():
        job.variables[name] = value
    return flow.run(job)


@pytest_twisted.inlineCallbacks
def test_crc32_of_hello_into_a_variable():
    job = yield run('into = "crc"', b"hello")
    assert job.state == "done" and job.variables["crc"] == "3610a686"


@pytest_twisted.inlineCallbacks
def test_sha256():
    job = yield run('algorithm = "sha256"', b"hello")
    assert job.variables["checksum"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


@pytest_twisted.inlineCallbacks
def test_a_mismatch_fails_the_job_with_a_message_for_people():
    job = yield run('expect = "${sent_crc}"', b"hello", sent_crc="DEADBEEF")
    assert job.state == "failed"
    assert job.error == "checksum mismatch: the crc32 of the 5-byte payload is 3610a686, expected deadbeef"


@pytest_twisted.inlineCallbacks
def test_the_expected_value_matches_in_any_case():
    job = yield run('expect = "${sent_crc}"', b"hello", sent_crc="3610A686")
    assert job.state == "done"


@pytest_twisted.inlineCallbacks
def test_a_large_payload_is_read_from_its_file(tmp_path):
    payload = Payload(spool_dir=str(tmp_path), threshold=1024)
    payload.write(b"hello" * 1000)
    payload.close()
    assert not payload.in_memory
    flow = loads(FLOW.format(keys='algorithm = "adler32"')).flows["f"]
    job = yield flow.run(Job("t", payload=payload))
    import zlib

    assert job.variables["checksum"] == f"{zlib.adler32(b'hello' * 1000):08x}"
