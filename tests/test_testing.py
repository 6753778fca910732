"""rawsvc.testing is public: its fake sender drives a real trigger."""

from __future__ import annotations

import pytest
import pytest_twisted

from rawsvc.testing import send_job
from support import port_of, start_service


@pytest_twisted.inlineCallbacks
def test_send_job_gets_the_triggers_reply(reactor, tmp_path):
    svc = start_service(
        tmp_path,
        '[[trigger]]\nname = "t"\ntype = "tcp"\nlisten = "tcp:0:interface=127.0.0.1"\nflow = "f"\n'
        '[[flow]]\nname = "f"\nactions = [ { type = "reply", data = "OK ${size}\\n" } ]\n',
    )
    try:
        reply = yield send_job(reactor, f"tcp:127.0.0.1:{port_of(svc, 't')}", b"hello")
        assert reply == b"OK 5\n"
    finally:
        yield svc.stopService()


@pytest_twisted.inlineCallbacks
def test_send_job_fails_when_nothing_listens(reactor):
    import socket

    from twisted.internet.error import ConnectionRefusedError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        yield send_job(reactor, f"tcp:127.0.0.1:{port}", b"x")
