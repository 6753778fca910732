"""
Security properties: job data cannot steer send_tcp outside
allowed_destinations; file names cannot escape their folder; the manhole
admits only listed keys; state files are 0600 and folders 0700.
"""

from __future__ import annotations

import os
import socket
import stat

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread

from rawsvc.actions.file import safe_path
from rawsvc.client.address import AddressError, AllowList, Destination
from rawsvc.errors import ActionError

from support import port_of, recv_all

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)


def send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s, timeout=10)


class _Counting(Protocol):
    """Counts connections; takes what is sent, as a printer does (closed when the sender closes)."""

    def connectionMade(self):
        self.factory.connections += 1


class CountingListener(Factory):
    protocol = _Counting

    def __init__(self):
        self.connections = 0


@pytest.fixture
def listeners(reactor):
    made = []

    def make() -> tuple[CountingListener, int]:
        f = CountingListener()
        port = reactor.listenTCP(0, f, interface="127.0.0.1")
        made.append(port)
        return f, port.getHost().port

    yield make
    for port in made:
        pytest_twisted.blockon(port.stopListening())


# send_tcp and allowed_destinations ----------------------------------------------------

STEER = """
[[trigger]]
name = "in"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "steer"

[[flow]]
name = "steer"
actions = [ { type = "send_tcp", destination = "${data}", data = "x", retries = 0, connect_timeout = 2 },
            { type = "reply", data = "SENT" } ]
on_error = [ { type = "reply", data = "FAIL ${error}" } ]
"""


@pytest_twisted.inlineCallbacks
def test_job_data_cannot_steer_send_tcp_outside_allowed_destinations(service_factory, listeners):
    allowed, allowed_port = listeners()
    forbidden, forbidden_port = listeners()
    svc = service_factory(f'allowed_destinations = ["127.0.0.1:{allowed_port}"]\n' + STEER)
    port = port_of(svc, "in")
    attempts = [
        f"127.0.0.1:{forbidden_port}",  # another port on an allowed host
        f"localhost:{forbidden_port}",  # a name resolving to loopback
        f"[::ffff:127.0.0.1]:{forbidden_port}",  # IPv4-mapped IPv6
        f"[::1]:{allowed_port}",
        f"127.1:{forbidden_port}",  # short forms are names, not addresses
        f"2130706433:{forbidden_port}",  # 127.0.0.1 as an integer
        f"127.0.0.1:{allowed_port}@127.0.0.1:{forbidden_port}",
        f"127.0.0.1:{forbidden_port}\n",  # trailing newline (stripped, still checked)
        f"127.0.0.1:0{forbidden_port}",
        "10.0.0.1:9100",
        "169.254.169.254:80",  # cloud metadata
        f"127.0.0.1:{allowed_port}:{forbidden_port}",
    ]
    replies = []
    for text in attempts:
        replies.append((yield deferToThread(send, port, text.encode())))
    ok = yield deferToThread(send, port, f"127.0.0.1:{allowed_port}".encode())
    # A name is resolved and only the listed address is connected to.
    by_name = yield deferToThread(send, port, f"localhost:{allowed_port}".encode())
    print(f"\n[steer] {len(attempts)} hostile destinations: {forbidden.connections} reached the forbidden port; "
          f"{allowed.connections} connections to the allowed one (the control job)")
    for text, reply in zip(attempts, replies):
        assert reply.startswith(b"FAIL "), (text, reply)
        assert b"allowed_destinations" in reply or b"bad destination" in reply or b"cannot resolve" in reply, (text, reply)
    assert forbidden.connections == 0
    assert ok == b"SENT"
    assert by_name in (b"SENT", b"FAIL destination localhost:%d resolves to ::1, which [service] "
                       b"allowed_destinations does not allow" % allowed_port)
    assert allowed.connections == (2 if by_name == b"SENT" else 1)  # the control jobs only


DEST_TEXT = st.text(st.sampled_from("0123456789.:[]abcfl-*/ \t\n@%x"), max_size=30) | st.text(max_size=30)


@FUZZ
@given(DEST_TEXT, st.lists(st.sampled_from(["10.0.0.1"] + [f"127.0.0.{i}" for i in range(1, 4)] + ["::1"]), max_size=3))
def test_allow_list_never_passes_an_address_it_does_not_list(text, resolved):
    allow = AllowList.parse(["127.0.0.1:9100", "printer.example.com:9100", "10.1.0.0/16"])
    try:
        dest = Destination.parse(text)
    except AddressError as e:
        assert str(e)  # a reason people can read
        return
    for address in allow.filter(dest, resolved):
        if dest.host == "printer.example.com" and dest.port == 9100:
            continue  # a listed name: whatever it resolves to
        assert (address == "127.0.0.1" and dest.port == 9100) or address.startswith("10.1."), (text, address)


# file names ------------------------------------------------------------------------------

NAME_PARTS = st.sampled_from(["..", ".", "", "a", "b.prn", "/", "\\", "\x00", "~", "link", "..\\..", "%2e%2e", " "])
NAMES = st.lists(NAME_PARTS, max_size=6).map("/".join) | st.text(max_size=20)


@FUZZ
@given(NAMES)
def test_file_names_never_resolve_outside_the_folder(tmp_path_factory, name):
    base = tmp_path_factory.getbasetemp() / "jail"
    folder = base / "out"
    if not folder.exists():
        folder.mkdir(parents=True)
        (base / "outside").mkdir()
        (folder / "link").symlink_to(base / "outside")  # a symlink that leaves the folder
    try:
        path = safe_path(str(folder), name)
    except ActionError as e:
        assert name[:20] in str(e) or repr(name)[1:-1][:20] in str(e) or "empty" in str(e)
        return
    real = os.path.realpath(folder)
    assert os.path.commonpath([real, path]) == real and path != real, (name, path)


@pytest_twisted.inlineCallbacks
def test_job_data_naming_a_file_outside_the_folder_fails_and_writes_nothing(service_factory, tmp_path):
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    out.mkdir()
    (out / "link").symlink_to(outside)
    svc = service_factory(
        f"""
[[trigger]]
name = "in"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "store"

[[flow]]
name = "store"
actions = [ {{ type = "file", folder = "{out}", name = "${{data}}" }}, {{ type = "reply", data = "STORED" }} ]
on_error = [ {{ type = "reply", data = "FAIL ${{error}}" }} ]
"""
    )
    port = port_of(svc, "in")
    names = ["../escaped", "/tmp/abs", "a/../../escaped", "link/escaped", "link/../../escaped", "..",
             "sub/\x00x", "ok/../../../escaped", "..\\escaped"]
    replies = []
    for name in names:
        replies.append((yield deferToThread(send, port, name.encode())))
    for name, reply in zip(names, replies):
        assert reply.startswith(b"FAIL "), (name, reply)
    assert not list(outside.iterdir())
    assert not (tmp_path / "escaped").exists()
    assert sorted(p.name for p in out.iterdir()) == ["link"]  # nothing created, not even a folder
    assert (yield deferToThread(send, port, b"sub/fine.prn")) == b"STORED"


# The manhole -----------------------------------------------------------------------------


def test_manhole_refuses_keys_not_listed_and_offers_public_keys_only(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from twisted.conch.error import ValidPublicKey
    from twisted.conch.ssh import keys
    from twisted.cred.credentials import ISSHPrivateKey, SSHPrivateKey
    from twisted.cred.error import UnauthorizedLogin

    from rawsvc.admin.manhole import load_or_create_host_key, make_factory

    admin = keys.Key(Ed25519PrivateKey.generate())
    stranger = keys.Key(Ed25519PrivateKey.generate())
    authorized = tmp_path / "authorized_keys"
    authorized.write_bytes(admin.public().toString("openssh") + b"\n")
    host = load_or_create_host_key(str(tmp_path / "host_key"))
    factory = make_factory(str(authorized), host, dict)
    assert factory.portal.listCredentialsInterfaces() == [ISSHPrivateKey]  # no passwords

    def login(key, signed=True):
        data = b"session data"
        sig = key.sign(data) if signed else None
        creds = SSHPrivateKey(b"root", b"ssh-ed25519", key.public().blob(), data, sig)
        results = []
        factory.portal.login(creds, None, __import__("twisted.conch.interfaces", fromlist=["x"]).IConchUser).addBoth(results.append)
        return results[0]

    assert not hasattr(login(admin), "check")  # an avatar tuple, not a Failure
    refused = login(stranger)
    assert refused.check(UnauthorizedLogin)
    # A listed key without a signature is only "valid", not a login.
    assert login(admin, signed=False).check(ValidPublicKey)
    # Removing the line takes effect at the next login.
    authorized.write_bytes(b"# nobody\n")
    assert login(admin).check(UnauthorizedLogin)


# Modes of state files and folders -----------------------------------------------------


def _modes(root) -> dict[str, str]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, root)] = oct(stat.S_IMODE(os.lstat(path).st_mode))
    return found


def _loose(modes: dict[str, str], root) -> list[str]:
    bad = []
    for rel, mode in modes.items():
        path = os.path.join(root, rel)
        want = "0o700" if os.path.isdir(path) else "0o600"
        if mode != want:
            bad.append(f"{rel}: {mode} (want {want[2:]})")
    return bad


@pytest.fixture
def permissive_umask():
    old = os.umask(0o022)  # the usual default: anything not set explicitly ends up 0644/0755
    yield
    os.umask(old)


@pytest_twisted.inlineCallbacks
def test_state_dir_spill_files_and_file_output_are_private(service_factory, tmp_path, permissive_umask):
    out = tmp_path / "out"
    svc = service_factory(
        f"""spill_threshold = 1024
[[trigger]]
name = "in"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "store"

[[flow]]
name = "store"
actions = [ {{ type = "support:SleepAction", seconds = "0.5" }}, {{ type = "file", folder = "{out}/deep/er" }},
            {{ type = "reply", data = "STORED" }} ]
"""
    )
    state = tmp_path / "state"
    port = port_of(svc, "in")
    seen = {}

    def during():
        import time

        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(os.urandom(64 << 10))  # past spill_threshold: a file in state/tmp
        s.shutdown(socket.SHUT_WR)
        time.sleep(0.2)  # the flow sleeps 0.5 s: the spill file exists now
        seen.update(_modes(state))
        return recv_all(s, timeout=10)

    assert (yield deferToThread(during)) == b"STORED"
    print(f"\n[modes] state dir while a spilled job runs: {seen}; output: {_modes(out)}")
    assert oct(stat.S_IMODE(os.stat(state).st_mode)) == "0o700"
    assert any(k.startswith("tmp/") for k in seen), seen
    assert _loose(seen, state) == []
    assert _loose(_modes(out), out) == []


def test_manhole_host_key_is_private(tmp_path, permissive_umask):
    from rawsvc.admin.manhole import load_or_create_host_key

    path = tmp_path / "keys" / "host"
    load_or_create_host_key(str(path))
    assert oct(stat.S_IMODE(os.stat(path).st_mode)) == "0o600"
    assert oct(stat.S_IMODE(os.stat(path.parent).st_mode)) == "0o700"
    os.chmod(path, 0o644)
    load_or_create_host_key(str(path))  # made private again
    assert oct(stat.S_IMODE(os.stat(path).st_mode)) == "0o600"


@pytest_twisted.inlineCallbacks
def test_spool_files_are_private(tmp_path, permissive_umask):
    pytest.importorskip("rawsvc.spool.store")
    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from rawsvc.service import RawService

    state = tmp_path / "state"
    text = f"""
[service]
state_dir = "{state}"
spill_threshold = 1024

[[trigger]]
name = "in"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "f"

[[flow]]
name = "f"
actions = [ {{ type = "support:SleepAction", seconds = "0.5" }}, {{ type = "reply", data = "OK" }} ]
"""
    svc = RawService(loads(text, str(tmp_path / "rawsvc.toml"), BuildContext()))
    svc.startService()
    try:
        port = port_of(svc, "in")
        seen = {}

        def during():
            import time

            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(os.urandom(64 << 10))  # a spooled payload file, not a blob
            s.shutdown(socket.SHUT_WR)
            time.sleep(0.25)
            seen.update(_modes(state))
            return recv_all(s, timeout=10)

        assert (yield deferToThread(during)) == b"OK"
    finally:
        yield svc.stopService()
    print(f"\n[modes] spool state dir while a job runs: {seen}")
    assert any("wal" in k or k.endswith(".db") or k.endswith(".sqlite") for k in seen), seen
    assert _loose(seen, state) == []
