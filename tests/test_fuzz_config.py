"""
The config loader on random TOML documents (property-based, hypothesis):
the result is always a valid Config or a ConfigError listing clear lines
(file, table, key), never a traceback.

Documents are built from the real vocabulary (tables, trigger and action
types, their keys) with random and plausible-but-wrong values, so most
examples get deep into validation rather than stopping at the first key.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rawsvc.config import SERVICE_OPTIONS, loads
from rawsvc.context import BuildContext
from rawsvc.errors import ConfigError
from rawsvc.plugins import BUILTIN_ACTIONS, find_action_type
from rawsvc.triggers.tcp import TCP_OPTIONS

FUZZ = settings(
    max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
PATH = "fuzz.toml"


# A small TOML writer (inline tables only: one document, one key per line) --------


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON strings are TOML basic strings
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def toml_doc(doc: dict) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in doc.items())


# Strategies ---------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
PLAUSIBLE = st.sampled_from(
    [
        "", "0", "-1", "tcp:0:interface=127.0.0.1", "tcp:abc", "unix:/nonexistent/x.sock", "udp:9101",
        "127.0.0.1:9100", "[::1]:9100", "host", "${data}", "${nope}", "$", "${", "\r\n", "\u0003",
        "0600", "0999", "delimiter", "length", "idle", "disconnect", "utf-8", "auto", "latin-1", "\u0000",
        "process", "discard", "f", "g", "regex", "json", "csv", "keyvalue", "(?P<a>.)", "(", "a.b.0",
        "10.0.0.0/8", "::/0", "*.example.com", "not a cidr", "info", "error", "POST", "http://127.0.0.1:1/",
    ]
)
SCALARS = st.one_of(
    PLAUSIBLE, TEXT, st.booleans(), st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, 1, -1, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


def table(keys: list[str], extra_keys=TEXT):
    """A table whose keys mostly come from a schema, with random values."""
    return st.dictionaries(st.sampled_from(keys) | extra_keys, VALUES, max_size=len(keys) + 1)


ACTION_KEYS = {name: ["type", *find_action_type(name).options.options] for name in BUILTIN_ACTIONS}


@st.composite
def actions(draw):
    type_name = draw(st.sampled_from([*BUILTIN_ACTIONS, "nope", "no.such.module:X", ""]) | TEXT)
    keys = ACTION_KEYS.get(type_name, ["type"])
    body = draw(table(keys))
    if draw(st.booleans()):
        body["type"] = type_name
    return body


@st.composite
def flows(draw):
    body = draw(table(["name", "actions", "on_error", "description"]))
    if draw(st.booleans()):
        body["name"] = draw(st.sampled_from(["f", "g", ""]))
    if draw(st.booleans()):
        body["actions"] = draw(st.lists(actions(), max_size=3))
    if draw(st.booleans()):
        body["on_error"] = draw(st.lists(actions(), max_size=2))
    return body


@st.composite
def triggers(draw):
    body = draw(table([*TCP_OPTIONS.options]))
    for key, value in (("name", st.sampled_from(["t", "u", ""])), ("type", st.sampled_from(["tcp", "tcp", "nope"])),
                       ("listen", st.just("tcp:0:interface=127.0.0.1")), ("flow", st.sampled_from(["f", "g"]))):
        if draw(st.integers(0, 3)):
            body[key] = draw(value)
    return body


@st.composite
def documents(draw):
    doc = {}
    if draw(st.booleans()):
        doc["service"] = draw(table([*SERVICE_OPTIONS.options]) | VALUES)
    if draw(st.integers(0, 3)):
        doc["flow"] = draw(st.lists(flows(), max_size=3) | VALUES)
    if draw(st.integers(0, 3)):
        doc["trigger"] = draw(st.lists(triggers(), max_size=3) | VALUES)
    if draw(st.integers(0, 4)) == 0:
        doc["admin"] = draw(st.dictionaries(st.sampled_from(["http", "manhole", "x"]), VALUES, max_size=2) | VALUES)
    if draw(st.integers(0, 4)) == 0:
        doc[draw(TEXT)] = draw(VALUES)
    return doc


def check(text) -> str:
    """Load; return 'ok' or 'errors', asserting every error line is a clear one."""
    try:
        config = loads(text, PATH, BuildContext())
    except ConfigError as e:
        assert e.errors, "a ConfigError with no lines"
        for line in e.errors:
            assert line.startswith(f"{PATH}: "), line
            assert "Traceback" not in line
            # A built-in that crashed while being built is a bug, not a config error.
            assert "cannot be built" not in line, line
        return "errors"
    assert config.summary().startswith(f"{PATH}: OK")
    return "ok"


@FUZZ
@given(documents())
def test_random_documents_give_a_config_or_clear_errors(doc):
    check(toml_doc(doc))


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_random_text_gives_clear_errors(text):
    check(text)


VALID = """
[[trigger]]
name = "t"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "f"
execute_on = "delimiter"
delimiter = "\\r\\n"

[[flow]]
name = "f"
actions = [ { type = "reply" }, { type = "file", folder = "out" } ]
"""


@FUZZ
@given(st.integers(0, len(VALID)), st.integers(0, 8), TEXT)
def test_a_valid_config_damaged_anywhere_gives_clear_errors(at, cut, insert):
    assert check(VALID) == "ok"
    check(VALID[:at] + insert + VALID[at + cut :])


def test_the_generators_reach_valid_configs():
    """The strategies are not all noise: a plain valid config is in their range."""
    doc = {
        "trigger": [{"name": "t", "type": "tcp", "listen": "tcp:0:interface=127.0.0.1", "flow": "f"}],
        "flow": [{"name": "f", "actions": [{"type": "log"}]}],
    }
    assert check(toml_doc(doc)) == "ok"
