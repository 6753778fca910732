"""
Who may do what on the admin HTTP listener (C{[admin.http]}).

On loopback (or a unix socket) with nothing configured, anyone who can
connect may look and act, as before.  A listener anywhere else refuses to
start unless authentication is configured:

  - C{users_file}: lines C{name:role:bcrypt-hash} (C{rawsvc passwd} writes
    them), mode 0600; the credentials come as HTTP Basic;
  - C{tokens}: C{"name:role:token"} strings; the token comes as
    C{Authorization: Bearer <token>}.

A role is C{viewer} (GET and HEAD) or C{operator} (everything, e.g. the
console's retry and cancel POSTs, which also need its CSRF token).  HTTP
Basic sends the password with every request: put such a listener on an
C{ssl:} endpoint.  Failed logins are logged and, past L{MAX_FAILURES} in
L{FAILURE_WINDOW} seconds from one address, answered 429 without checking.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import stat
from collections import deque
from typing import Any

import attrs
import bcrypt
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.util import DeferredResource

from rawsvc.addresses import _ip, address_of
from rawsvc.errors import ConfigIssue

log = Logger(namespace="rawsvc.console.auth")

ROLES = ("viewer", "operator")
#: Methods a viewer may use.
READ_METHODS = (b"GET", b"HEAD")
#: Failed logins from one address within FAILURE_WINDOW seconds before it is refused outright.
MAX_FAILURES = 5
FAILURE_WINDOW = 60.0
#: Addresses whose failures are remembered at once.
MAX_HOSTS = 10_000
#: Verified Basic credentials remembered (bcrypt is slow on purpose).
CACHE_SIZE = 256
#: Checked for unknown users, so that they take as long as known ones.
_DUMMY_HASH = b"$2b$12$NuCyMWNr093tSIwabTMGwOE0g1M6C12XZ0TWLjWTKOEGuZuI9lz/q"


class AuthError(Exception):
    """A users file or token that cannot be used: a message for people."""


@attrs.frozen
class Principal:
    """Who a request comes from, and their role."""

    name: str
    role: str

    def may(self, method: bytes) -> bool:
        return self.role == "operator" or method in READ_METHODS


def _role(role: str, where: str) -> str:
    if role not in ROLES:
        raise AuthError(f"{where}: role must be viewer or operator, not {role!r}")
    return role


def read_users(path: str) -> dict[str, tuple[str, bytes]]:
    """C{name -> (role, hash)} from a users file; L{AuthError} when it is unsafe or malformed."""
    try:
        mode = os.stat(path).st_mode
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise AuthError(f"cannot read {path}: {e.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise AuthError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    users: dict[str, tuple[str, bytes]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(":", 2)
        where = f"{path} line {number}"
        if len(parts) != 3 or not parts[0] or not parts[2].startswith("$2"):
            raise AuthError(f"{where}: expected name:role:bcrypt-hash (rawsvc passwd writes them)")
        users[parts[0]] = (_role(parts[1], where), parts[2].encode())
    return users


def parse_tokens(values: list[str]) -> dict[str, Principal]:
    """C{token -> Principal} from C{"name:role:token"} strings."""
    tokens: dict[str, Principal] = {}
    for i, value in enumerate(values, 1):
        parts = value.split(":", 2)
        where = f"token {i}"
        if len(parts) != 3 or not parts[0] or len(parts[2]) < 16:
            raise AuthError(f"{where}: expected \"name:role:token\" with a token of at least 16 characters")
        tokens[parts[2]] = Principal(parts[0], _role(parts[1], f"token {parts[0]!r}"))
    return tokens


def is_local(listen: str) -> bool:
    """Whether C{listen} (an endpoint string) takes connections from this host only."""
    address = address_of(listen)
    if address is None:
        return False
    if address.proto == "unix":
        return True
    ip = _ip(address.interface)
    return ip is not None and ip.is_loopback


def check_options(values: dict[str, Any]) -> list[ConfigIssue]:
    """The C{[admin.http]} problems about authentication, each naming its key."""
    issues = []
    configured = False
    if values.get("users_file"):
        try:
            read_users(values["users_file"])
            configured = True
        except AuthError as e:
            issues.append(ConfigIssue(str(e), "users_file"))
    if values.get("tokens"):
        try:
            parse_tokens(values["tokens"])
            configured = True
        except AuthError as e:
            issues.append(ConfigIssue(str(e), "tokens"))
    if not configured and not issues and not is_local(values["listen"]):
        issues.append(ConfigIssue(
            f"{values['listen']!r} is not loopback: configure users_file and/or tokens to let people in, "
            "or listen on 127.0.0.1", "listen"))
    return issues


class RateLimit:
    """Failed logins per source address within a sliding window (times from C{clock})."""

    def __init__(self, clock: Any, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, host: str) -> deque[float]:
        times = self._failures.get(host, deque())
        horizon = self.clock.seconds() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            self._failures.pop(host, None)
        return times

    def blocked(self, host: str) -> bool:
        return len(self._recent(host)) >= self.limit

    def failed(self, host: str) -> None:
        self._recent(host)
        if host not in self._failures and len(self._failures) >= MAX_HOSTS:
            self._failures.pop(next(iter(self._failures)))  # the longest-known address goes first
        self._failures.setdefault(host, deque()).append(self.clock.seconds())


class Refusal(Resource):
    """A refused request: C{code} and a JSON C{{"error": ...}} for people (a 401 also asks for Basic credentials)."""

    isLeaf = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self.code = code
        self.message = message

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if self.code == 401:
            request.setHeader(b"www-authenticate", b'Basic realm="rawsvc", charset="UTF-8"')
        body = json.dumps({"error": self.message}).encode() + b"\n"
        request.setHeader(b"content-length", b"%d" % len(body))
        return b"" if request.method == b"HEAD" else body


def _host(request: Any) -> str:
    peer = request.getClientAddress()
    return peer.host if isinstance(peer, (IPv4Address, IPv6Address)) else str(peer)


class Guard(Resource):
    """
    Wraps the admin site's root: each request is let through to it only with
    credentials whose role allows its method (see the module docstring).
    """

    def __init__(self, wrapped: Resource, users: dict[str, tuple[str, bytes]], tokens: dict[str, Principal],
                 reactor: Any, threadpool: Any = None) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.users = users
        self.tokens = tokens
        self.reactor = reactor
        self.threadpool = threadpool if threadpool is not None else reactor.getThreadPool()
        self.limit = RateLimit(reactor)
        self._verified: dict[bytes, Principal] = {}

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        host = _host(request)
        if self.limit.blocked(host):
            log.warn("console: login refused for {peer}: too many failed logins", peer=host)
            return Refusal(429, "too many failed logins from your address: wait a minute and try again")
        header = request.getHeader(b"authorization") or b""
        scheme, _, value = header.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer":
            principal = self._token(value.strip())
            return self._through(principal, "a bearer token", path, request, host)
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return self._through(None, "malformed Basic credentials", path, request, host)
            key = hashlib.sha256(f"{name}\0{password}".encode()).digest()
            if key in self._verified:
                return self._through(self._verified[key], name, path, request, host)
            d = self._check(name, password)
            d.addCallback(self._remember, key)
            d.addCallback(self._through, name, path, request, host)
            return DeferredResource(d)
        return Refusal(401, "log in as a console user (HTTP Basic) or send a bearer token")

    def _token(self, given: str) -> Principal | None:
        found = None
        for token, principal in self.tokens.items():
            if hmac.compare_digest(token.encode(), given.encode()):
                found = principal
        return found

    def _check(self, name: str, password: str) -> Deferred[Principal | None]:
        role, hashed = self.users.get(name, ("", _DUMMY_HASH))
        d: Deferred[Any] = deferToThreadPool(self.reactor, self.threadpool, bcrypt.checkpw, password.encode(), hashed)
        d.addCallback(lambda ok: Principal(name, role) if ok and role else None)
        d.addErrback(self._unusable, name)
        return d

    def _unusable(self, failure: Any, name: str) -> None:
        log.error("console: the password hash of {user} cannot be checked: {error}", user=name,
                  error=failure.getErrorMessage())
        return None

    def _remember(self, principal: Principal | None, key: bytes) -> Principal | None:
        if principal is not None:
            if len(self._verified) >= CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)))
            self._verified[key] = principal
        return principal

    def _through(self, principal: Principal | None, who: str, path: bytes, request: Any, host: str) -> Resource:
        if principal is None:
            self.limit.failed(host)
            log.warn("console: failed login ({who}) from {peer}", who=who, peer=host)
            return Refusal(401, "wrong name, password or token")
        method = request.method
        if not principal.may(method):
            log.warn("console: {user} ({role}) from {peer} may not {method} {path}", user=principal.name,
                     role=principal.role, peer=host, method=method.decode("ascii", "replace"),
                     path=request.uri.decode("utf-8", "replace"))
            return Refusal(403, f"{principal.name} is a {principal.role}: viewers may only look, operators act")
        request.console_user = principal.name  # the console logs who acted
        if method not in READ_METHODS:
            log.info("console: {user} ({role}) from {peer}: {method} {path}", user=principal.name,
                     role=principal.role, peer=host, method=method.decode("ascii", "replace"),
                     path=request.uri.decode("utf-8", "replace"))
        return self.wrapped.getChildWithDefault(path, request)


def guard(root: Resource, options: dict[str, Any], reactor: Any) -> Resource:
    """C{root} behind a L{Guard} when C{[admin.http]} configures users or tokens, else C{root} itself."""
    users = read_users(options["users_file"]) if options.get("users_file") else {}
    tokens = parse_tokens(options.get("tokens") or [])
    if not users and not tokens:
        return root
    return Guard(root, users, tokens, reactor)
