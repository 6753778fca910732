"""
The SSH manhole: a Python REPL over SSH whose namespace holds the live
service (see L{rawsvc.admin.namespace}).

Built by hand rather than with C{twistd manhole}, which offers passwords
and writes its host key world-readable:

- public-key authentication only, against an OpenSSH C{authorized_keys}
  file that is read again at each login (removing a line takes effect at
  once); password and keyboard-interactive are never offered;
- an ed25519 host key, generated on first start into the state directory
  with mode 0600 and reused after;
- a factory with its own key dicts (C{ConchFactory}'s are class-level and
  shared by every instance);
- a terminal session that needs a pty, says so to a client without one,
  and closes cleanly on EOF and follows window changes (conch's
  C{TerminalSession} raises on both).
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
from twisted.conch.interfaces import IConchUser
from twisted.conch.insults import insults
from twisted.conch.ssh import factory, keys
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION, SSHServerTransport
from twisted.cred.portal import IRealm, Portal
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rawsvc import options as o
from rawsvc.admin.namespace import repl_namespace
from rawsvc.admin.repl import OperatorManhole
from rawsvc.compat import pty_size, resize_terminal, terminal_glue
from rawsvc.errors import ConfigIssue
from rawsvc.listening import Listener

if TYPE_CHECKING:
    from rawsvc.service import RawService

log = Logger(namespace="rawsvc.admin.manhole")

HOST_KEY_NAME = "manhole_host_ed25519_key"


def read_authorized_keys(path: str) -> list[keys.Key]:
    """
    Parse an OpenSSH C{authorized_keys} file.  Raises L{ConfigIssue} when it
    is missing, unreadable, holds a line that is not a public key, or holds
    no key at all.
    """
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigIssue(f"cannot read {path}: {e.strerror}") from None
    found = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            key = keys.Key.fromString(line)
        except Exception:
            raise ConfigIssue(
                f"{path} line {number} is not an OpenSSH public key "
                "(options before the key type are not supported)"
            ) from None
        if not key.isPublic():
            raise ConfigIssue(f"{path} line {number} is a private key; list public keys only")
        found.append(key)
    if not found:
        raise ConfigIssue(f"{path} holds no public key; the manhole would admit nobody")
    return found


def _authorized_keys(value: str) -> str:
    if not value:
        raise ConfigIssue("must name an OpenSSH authorized_keys file")
    path = os.path.abspath(value)
    read_authorized_keys(path)
    return path


MANHOLE_OPTIONS = o.Schema(
    o.Option(
        "listen",
        str,
        "tcp:2222:interface=127.0.0.1",
        o.server_endpoint,
        doc="SSH endpoint; keep it on loopback",
    ),
    o.Option("authorized_keys", str, check=_authorized_keys,
             doc="OpenSSH `authorized_keys` file. Missing, empty or unparseable stops start-up; it is re-read at "
                 "each login, so removing a line takes effect at once. Any user name is accepted when the key "
                 "matches; option prefixes (`from=\"…\"`) are not supported."),
    o.Option(
        "host_key",
        str,
        "",
        doc="generated (ed25519, mode 0600) on first start, reused after",
        shown_default=f"`STATE_DIR/{HOST_KEY_NAME}`",
    ),
)


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """The keys of one file, for any user name, read at each login."""

    def __init__(self, path: str) -> None:
        self.path = path

    def getAuthorizedKeys(self, avatarId: bytes) -> list[keys.Key]:
        try:
            return read_authorized_keys(self.path)
        except ConfigIssue as e:
            log.error("manhole login refused: {problem}", problem=e.message)
            return []


def load_or_create_host_key(path: str) -> keys.Key:
    """
    The ed25519 host key at C{path}, created (mode 0600) when missing.  A
    key readable by others is made private again, with a warning.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = keys.Key(Ed25519PrivateKey.generate())
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.toString("openssh"))
        log.info(
            "manhole: generated host key {path} ({fingerprint})",
            path=path,
            fingerprint=key.fingerprint(keys.FingerprintFormats.SHA256_BASE64),
        )
        return key
    if mode & 0o077:
        log.warn("manhole: host key {path} had mode {mode:o}; setting 0600", path=path, mode=mode)
        os.chmod(path, 0o600)
    key = keys.Key.fromFile(path)
    if key.isPublic():
        raise ValueError(f"{path} holds a public key; the manhole needs the private host key")
    return key


class SessionTransport:
    """
    Joins the SSH channel to the terminal (as conch's
    C{TerminalSessionTransport}), but ends a finished REPL like a process
    that exited 0, so the client gets an exit status instead of 255.
    """

    def __init__(self, proto: Any, chainedProtocol: Any, avatar: Any, width: int, height: int) -> None:
        self.proto = proto
        self.chainedProtocol = chainedProtocol
        session = proto.session
        proto.makeConnection(
            terminal_glue("SSH Proto Transport", chainedProtocol.dataReceived,
                          lambda: avatar.conn.sendClose(session))
        )
        chainedProtocol.makeConnection(terminal_glue("Chained Proto Transport", proto.write, self._ended))
        resize_terminal(chainedProtocol, width, height)

    def _ended(self) -> None:
        self.proto.processEnded(Failure(ProcessDone(0)))


def _refuse(proto: Any, message: bytes) -> None:
    """Say why on the channel, ignore any input, end with exit status 1."""
    proto.makeConnection(terminal_glue("Refused", lambda data: None, lambda: None))
    proto.write(message)
    proto.processEnded(Failure(ProcessTerminated(exitCode=1)))


class ManholeSession(manhole_ssh.TerminalSession):
    """
    C{TerminalSession} that needs a pty, closes on EOF and follows window
    changes instead of raising.
    """

    # conch infers the factory's type from its untyped default class; any callable with that signature works.
    transportFactory = SessionTransport  # type: ignore[assignment]

    _proto: Any = None
    _transport: Any = None

    def openShell(self, proto: Any) -> None:
        size = pty_size(self)
        if size is None:
            _refuse(proto, b"rawsvc manhole: this is an interactive REPL and needs a terminal; "
                           b"connect with ssh -t\r\n")
            return
        self._proto = proto
        self._transport = self.transportFactory(
            proto,
            self.chainedProtocolFactory(),
            IConchUser(self.original),
            *size,
        )

    def execCommand(self, proto: Any, cmd: bytes) -> None:
        _refuse(proto, b"rawsvc manhole: commands are not supported; open a session with ssh -t\r\n")

    def windowChanged(self, newWindowSize: Any) -> None:
        self.height, self.width = newWindowSize[:2]
        if self._transport is not None:
            resize_terminal(self._transport.chainedProtocol, self.width, self.height)

    def eofReceived(self) -> None:
        if self._proto is not None:
            self._proto.loseConnection()

    def closed(self) -> None:
        self._proto = self._transport = None


@implementer(IRealm)  # conch's TerminalRealm implements IRealm without declaring it
class ManholeRealm(manhole_ssh.TerminalRealm):
    sessionFactory = ManholeSession
    # conch infers the factory's type from its untyped default class; any callable with that signature works.
    transportFactory = SessionTransport  # type: ignore[assignment]

    def __init__(self, namespace: Any) -> None:
        super().__init__()

        def chained_protocol() -> insults.ServerProtocol:
            return insults.ServerProtocol(OperatorManhole, namespace())

        # conch types chainedProtocolFactory as type[ServerProtocol] (its untyped default); it is any factory.
        self.chainedProtocolFactory = chained_protocol  # type: ignore[assignment]

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        log.info("manhole: {user} logged in", user=avatarId.decode("utf-8", "replace"))
        return super().requestAvatar(avatarId, mind, *interfaces)


class ManholeTransport(SSHServerTransport):
    """Logs a client's ordinary logout at info level, not as an error."""

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        if reasonCode == DISCONNECT_BY_APPLICATION:
            log.info("manhole: client logged out ({why})", why=description.decode("utf-8", "replace"))
            return
        super().receiveError(reasonCode, description)


class ManholeFactory(factory.SSHFactory):
    """An SSH server factory with its own host key dicts."""

    protocol = ManholeTransport

    def __init__(self, portal: Portal, host_key: keys.Key) -> None:
        self.portal = portal
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.privateKeys = {host_key.sshType(): host_key}


def make_factory(authorized_keys: str, host_key: keys.Key, namespace: Any) -> ManholeFactory:
    """C{namespace} is called once per session and returns a fresh dict."""
    checker = SSHPublicKeyChecker(AuthorizedKeysFile(authorized_keys))
    return ManholeFactory(Portal(ManholeRealm(namespace), [checker]), host_key)


def make_service(options: dict[str, Any], service: RawService) -> Listener:
    """The manhole listener for C{[admin.manhole]}."""
    host_key_path = options.get("host_key") or os.path.join(service.context.state_dir, HOST_KEY_NAME)
    host_key = load_or_create_host_key(os.path.abspath(host_key_path))
    factory_ = make_factory(options["authorized_keys"], host_key, lambda: repl_namespace(service))
    endpoint = serverFromString(service.context.reactor, options["listen"])
    listener = Listener(endpoint, factory_, "[admin.manhole]", options["listen"])
    listener.setName("admin-manhole")
    return listener
