"""Loading and validating the TOML config (rawsvc.config, rawsvc.options)."""

from __future__ import annotations

import os
import re
import textwrap

import pytest
from zope.interface.verify import verifyObject

from rawsvc import options as o
from rawsvc.config import Config, load, loads
from rawsvc.errors import ConfigError, ConfigIssue
from rawsvc.interfaces import IAction

# A trigger type and odd action types, loaded by the config as 'module:Name'
# from a module written to tmp_path, so that these tests do not depend on
# the real triggers (written elsewhere) and nothing listens.
PLUGIN_MODULE = '''
from zope.interface import implementer, provider
from rawsvc import options as o
from rawsvc.errors import ConfigIssue
from twisted.application.service import Service
from rawsvc.interfaces import IAction, IActionType, ITrigger, ITriggerType


@provider(ITriggerType)
@implementer(ITrigger)
class FakeTrigger(Service):
    """A trigger that listens nowhere, written to rawsvc.interfaces.ITrigger."""

    type_name = "fake"
    listening = False
    counters = None

    def pause(self):
        pass

    def resume(self):
        pass

    def status(self):
        return {"name": self.name, "type": self.type_name, "listening": False, "paused": False, "counters": {}}

    def connection_list(self):
        return []

    def receiving(self):
        return 0

    def abort_receiving(self):
        return 0

    options = o.Schema(
        o.Option("name", str),
        o.Option("type", str),
        o.Option("listen", str, "tcp:0:interface=127.0.0.1", o.server_endpoint),
        o.Option("flow", str),
        o.Option("error_flow", str, ""),
        o.Option("pattern", str, "x", o.regex),
    )

    @classmethod
    def from_config(cls, options, context):
        t = cls()
        t.name = options["name"]
        t.options = options
        t.flow = options["flow"]
        t.built_flow = context.flows[options["flow"]]
        return t


@provider(IActionType)
class Crashes:
    type_name = "crashes"
    options = o.Schema()

    @classmethod
    def from_config(cls, options, context):
        raise RuntimeError("plugin bug")


@provider(IActionType)
class NotAnAction:
    type_name = "not-an-action"
    options = o.Schema()

    @classmethod
    def from_config(cls, options, context):
        return object()
'''


@pytest.fixture(autouse=True)
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "cfgplugins.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    import sys

    sys.modules.pop("cfgplugins", None)


FAKE = 'type = "cfgplugins:FakeTrigger"'


def config_text(text: str) -> str:
    return textwrap.dedent(text)


def errors_of(text: str, path: str = "rawsvc.toml") -> list[str]:
    with pytest.raises(ConfigError) as e:
        loads(config_text(text), path)
    return e.value.errors


def one_error(text: str) -> str:
    errors = errors_of(text)
    assert len(errors) == 1, errors
    return errors[0]


GOOD = f"""
[service]
state_dir = "var/test"

[[trigger]]
name = "orders"
{FAKE}
flow = "label"

[[flow]]
name = "label"

[[flow.actions]]
type = "parse"
regex = '^(?P<sku>\\w+);(?P<qty>\\d+)$'

[[flow.actions]]
type = "log"
message = "sku ${{sku}}"

[[flow.on_error]]
type = "log"
message = "ERR ${{error}}"
level = "warn"

[[flow]]
name = "archive"
actions = [ {{ type = "file", folder = "var/jobs", name = "${{job_id}}.prn" }}, {{ type = "log" }} ]
"""


# A valid config ---------------------------------------------------------------


def test_valid_config_builds_flows_and_triggers():
    config = loads(config_text(GOOD), "good.toml")
    assert isinstance(config, Config)
    assert list(config.flows) == ["label", "archive"]
    assert list(config.triggers) == ["orders"]
    assert config.triggers["orders"].built_flow is config.flows["label"]
    assert config.service["state_dir"] == "var/test"
    assert config.context.state_dir == os.path.join(os.getcwd(), "var/test")  # good.toml is in the cwd


def test_a_relative_state_dir_is_taken_from_the_config_files_folder(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    config = loads(config_text(GOOD).replace('"var/test"', '"../var/x"'), str(tmp_path / "etc" / "x.toml"))
    assert config.context.state_dir == str(tmp_path / "var" / "x")
    assert config.service["state_dir"] == "../var/x"  # the value as written


def test_array_of_tables_actions_are_built_in_order():
    flow = loads(config_text(GOOD)).flows["label"]
    assert [a.type_name for a in flow.actions] == ["parse", "log"]
    assert [a.type_name for a in flow.on_error] == ["log"]


def test_inline_table_actions_are_built_in_order():
    flow = loads(config_text(GOOD)).flows["archive"]
    assert [a.type_name for a in flow.actions] == ["file", "log"]
    assert flow.on_error == []


def test_inline_and_array_of_tables_forms_are_equivalent():
    inline = loads('[[flow]]\nname = "f"\nactions = [ { type = "log", message = "m" } ]\n'
                   'on_error = [ { type = "log", message = "e" } ]\n')
    tables = loads('[[flow]]\nname = "f"\n[[flow.actions]]\ntype = "log"\nmessage = "m"\n'
                   '[[flow.on_error]]\ntype = "log"\nmessage = "e"\n')
    for a, b in [(inline.flows["f"].actions[0], tables.flows["f"].actions[0]),
                 (inline.flows["f"].on_error[0], tables.flows["f"].on_error[0])]:
        assert a.message.source == b.message.source


def test_built_actions_provide_iaction():
    config = loads(config_text(GOOD))
    for flow in config.flows.values():
        for action in [*flow.actions, *flow.on_error]:
            assert verifyObject(IAction, action)


def test_service_defaults_are_filled_in():
    config = loads("")
    assert config.service["state_dir"] == "var/rawsvc"
    assert config.service["spool"] is True
    assert config.flows == {} and config.triggers == {} and config.admin == {}


def test_summary_names_triggers_and_flows():
    summary = loads(config_text(GOOD), "good.toml").summary()
    assert summary.startswith("good.toml: OK")
    assert "1 trigger(s) [orders (fake)]" in summary
    assert "2 flow(s) [label, archive]" in summary


def test_load_reads_a_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(config_text(GOOD))
    assert load(str(path)).path == str(path)


# Every error names the file, the table and the key -----------------------------


def test_missing_file_is_an_error_naming_it(tmp_path):
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as e:
        load(path)
    assert e.value.errors == [f"{path}: cannot read config: No such file or directory"]


def test_toml_syntax_error_gives_the_line():
    error = one_error('[service]\nstate_dir = "x"\nhistory = \n')
    assert error.startswith("rawsvc.toml: TOML syntax error:")
    assert "line 3" in error


def test_inline_table_across_lines_is_a_syntax_error_with_line():
    error = one_error('[[flow]]\nname = "f"\nactions = [ { type = "log",\n  message = "x" } ]\n')
    assert "TOML syntax error" in error and "line 3" in error


def test_non_utf8_file_is_an_error():
    with pytest.raises(ConfigError, match="not UTF-8"):
        loads(b"[service]\nstate_dir = '\xff'\n", "x.toml")


def test_unknown_top_level_table():
    assert one_error("[servce]\n") == (
        "rawsvc.toml: top level: key 'servce': unknown table or key "
        "(expected one of: service, cluster, trigger, flow, admin)"
    )


def test_unknown_service_key_suggests_the_right_one():
    assert one_error("[service]\nstate_dri = 'x'\n") == (
        "rawsvc.toml: [service]: key 'state_dri': unknown key (did you mean 'state_dir'?)"
    )


def test_wrong_type_names_the_key_and_the_value():
    assert one_error("[service]\nhistory = '10'\n") == (
        "rawsvc.toml: [service]: key 'history': must be an integer, not the string '10'"
    )


def test_boolean_is_not_an_integer():
    assert "must be an integer, not true (a boolean)" in one_error("[service]\nhistory = true\n")


def test_out_of_range_value():
    assert one_error("[service]\nhistory = 0\n") == (
        "rawsvc.toml: [service]: key 'history': must be greater than 0, not 0"
    )


def test_service_must_be_a_table():
    assert "[service]: must be a table" in one_error("service = 3\n")


def test_flow_written_as_a_single_table():
    assert one_error("[flow]\nname = 'f'\n") == (
        "rawsvc.toml: [flow]: must be written [[flow]] (a list of tables)"
    )


def test_flow_without_name():
    assert one_error("[[flow]]\nactions = [ { type = 'log' } ]\n") == (
        "rawsvc.toml: [[flow]] #1: key 'name': is required"
    )


def test_flow_with_empty_name():
    assert one_error("[[flow]]\nname = ''\nactions = [ { type = 'log' } ]\n") == (
        "rawsvc.toml: [[flow]] #1: key 'name': must not be empty"
    )


def test_duplicate_flow_name():
    error = one_error("[[flow]]\nname = 'f'\nactions = [ { type = 'log' } ]\n" * 2)
    assert error == "rawsvc.toml: [[flow]] 'f': key 'name': duplicate flow name 'f'"


def test_flow_without_actions():
    assert one_error("[[flow]]\nname = 'f'\n") == "rawsvc.toml: [[flow]] 'f': key 'actions': is required"


def test_flow_with_empty_actions():
    assert one_error("[[flow]]\nname = 'f'\nactions = []\n") == (
        "rawsvc.toml: [[flow]] 'f': key 'actions': must list at least one action"
    )


def test_action_without_type():
    assert one_error("[[flow]]\nname = 'f'\nactions = [ { message = 'x' } ]\n") == (
        "rawsvc.toml: [[flow]] 'f' actions[0]: key 'type': is required (a string naming the action type)"
    )


def test_action_that_is_not_a_table():
    assert "[[flow]] 'f' actions[0]: must be a table" in one_error("[[flow]]\nname = 'f'\nactions = [ 'log' ]\n")


def test_unknown_action_type_lists_the_known_ones():
    error = one_error("[[flow]]\nname = 'f'\nactions = [ { type = 'lgo' } ]\n")
    assert error.startswith("rawsvc.toml: [[flow]] 'f' actions[0] (lgo): key 'type': unknown action type 'lgo'")
    assert "log" in error and "parse" in error and "module:Name" in error


def test_unknown_action_key():
    assert one_error("[[flow]]\nname = 'f'\nactions = [ { type = 'log', mesage = 'x' } ]\n") == (
        "rawsvc.toml: [[flow]] 'f' actions[0] (log): key 'mesage': unknown key (did you mean 'message'?)"
    )


def test_bad_template_in_an_action():
    error = one_error("[[flow]]\nname = 'f'\nactions = [ { type = 'log', message = 'cost $5' } ]\n")
    assert error.startswith("rawsvc.toml: [[flow]] 'f' actions[0] (log): key 'message': bad template")


def test_bad_regex():
    error = one_error("[[flow]]\nname = 'f'\nactions = [ { type = 'parse', regex = '(?P<a' } ]\n")
    assert error.startswith("rawsvc.toml: [[flow]] 'f' actions[0] (parse): key 'regex': bad regular expression")


def test_unknown_encoding():
    error = one_error("[[flow]]\nname = 'f'\nactions = [ { type = 'file', folder = 'x', encoding = 'ebcdic' } ]\n")
    assert error.startswith("rawsvc.toml: [[flow]] 'f' actions[0] (file): key 'encoding': unknown encoding 'ebcdic'")


def test_errors_in_on_error_are_labelled_on_error():
    error = one_error("[[flow]]\nname = 'f'\nactions = [ { type = 'log' } ]\n"
                      "on_error = [ { type = 'log', level = 'loud' } ]\n")
    assert error.startswith("rawsvc.toml: [[flow]] 'f' on_error[0] (log): key 'level': must be one of")


def test_action_type_whose_from_config_crashes_is_an_error_not_a_traceback():
    error = one_error("[[flow]]\nname = 'f'\nactions = [ { type = 'cfgplugins:Crashes' } ]\n")
    assert error.startswith("rawsvc.toml: [[flow]] 'f' actions[0] (cfgplugins:Crashes):")
    assert "RuntimeError: plugin bug" in error


def test_action_type_building_a_non_action_is_an_error():
    error = one_error("[[flow]]\nname = 'f'\nactions = [ { type = 'cfgplugins:NotAnAction' } ]\n")
    assert "does not provide IAction" in error


def test_trigger_naming_a_missing_flow():
    error = one_error(f"[[trigger]]\nname = 't'\n{FAKE}\nflow = 'nope'\n")
    assert error == "rawsvc.toml: [[trigger]] 't': key 'flow': names flow 'nope', which is not defined"


def test_trigger_naming_a_missing_error_flow():
    error = one_error(
        f"[[trigger]]\nname = 't'\n{FAKE}\nflow = 'f'\nerror_flow = 'gone'\n"
        "[[flow]]\nname = 'f'\nactions = [ { type = 'log' } ]\n"
    )
    assert error == "rawsvc.toml: [[trigger]] 't': key 'error_flow': names flow 'gone', which is not defined"


def test_trigger_without_name():
    assert one_error(f"[[trigger]]\n{FAKE}\nflow = 'f'\n[[flow]]\nname = 'f'\nactions = [{{type='log'}}]\n") == (
        "rawsvc.toml: [[trigger]] #1: key 'name': is required (a non-empty string)"
    )


def test_trigger_without_type():
    assert one_error("[[trigger]]\nname = 't'\n").startswith(
        "rawsvc.toml: [[trigger]] 't': key 'type': is required"
    )


def test_unknown_trigger_type():
    error = one_error("[[trigger]]\nname = 't'\ntype = 'tpc'\n")
    assert error.startswith("rawsvc.toml: [[trigger]] 't': key 'type': unknown trigger type 'tpc'")


def test_duplicate_trigger_name():
    block = f"[[trigger]]\nname = 't'\n{FAKE}\nflow = 'f'\n"
    error = one_error(block * 2 + "[[flow]]\nname = 'f'\nactions = [{type='log'}]\n")
    assert error == "rawsvc.toml: [[trigger]] 't': key 'name': duplicate trigger name 't'"


@pytest.mark.parametrize("listen", ["9100", "tcp:notaport", "bogus:9100", "tcp:9100:nosuchoption=1"])
def test_bad_endpoint_string(listen):
    error = one_error(
        f"[[trigger]]\nname = 't'\n{FAKE}\nflow = 'f'\nlisten = '{listen}'\n"
        "[[flow]]\nname = 'f'\nactions = [{type='log'}]\n"
    )
    assert error.startswith("rawsvc.toml: [[trigger]] 't': key 'listen': ")
    assert "endpoint string" in error


def test_bad_regex_in_a_trigger():
    error = one_error(
        f"[[trigger]]\nname = 't'\n{FAKE}\nflow = 'f'\npattern = '['\n"
        "[[flow]]\nname = 'f'\nactions = [{type='log'}]\n"
    )
    assert error.startswith("rawsvc.toml: [[trigger]] 't': key 'pattern': bad regular expression")


def test_unknown_admin_section():
    assert one_error("[admin.telnet]\nlisten = 'tcp:23'\n") == (
        "rawsvc.toml: [admin]: key 'telnet': unknown section (expected one of: manhole, http)"
    )


def test_every_error_is_reported_at_once():
    text = """
    [service]
    state_dri = "x"
    history = "many"

    [[trigger]]
    name = "t"
    type = "cfgplugins:FakeTrigger"
    flow = "missing"
    listen = "9100"

    [[flow]]
    name = "f"
    actions = [ { type = "parse", regex = "(" }, { type = "frobnicate" }, { type = "file", folder = "x", encoding = "ebcdic" } ]

    [[flow]]
    name = "f"
    actions = [ { type = "log", mesage = "hi" } ]
    """
    errors = errors_of(text, "/etc/rawsvc.toml")
    assert len(errors) == 9, "\n".join(errors)
    keys = [re.search(r"key '([^']+)'", e).group(1) for e in errors]
    assert sorted(keys) == sorted(["state_dri", "history", "regex", "type", "encoding", "name", "mesage",
                                   "listen", "flow"])
    assert all(e.startswith("/etc/rawsvc.toml: ") for e in errors)


def test_config_error_message_holds_every_line():
    with pytest.raises(ConfigError) as e:
        loads("[service]\nx = 1\ny = 2\n", "c.toml")
    assert str(e.value).splitlines() == e.value.errors and len(e.value.errors) == 2


# Option and Schema ------------------------------------------------------------


def test_schema_fills_defaults_and_runs_checks_on_them():
    schema = o.Schema(o.Option("t", str, "${a}", o.template), o.Option("n", int, 3))
    values, issues = schema.validate({})
    assert issues == [] and values["t"].source == "${a}" and values["n"] == 3


def test_integer_is_accepted_where_a_number_is_wanted():
    assert o.Option("x", float).convert(2) == 2.0


def test_boolean_is_not_accepted_where_a_number_is_wanted():
    with pytest.raises(ConfigIssue, match="must be a number, not true"):
        o.Option("x", float).convert(True)


def test_schemas_add():
    assert [opt.name for opt in o.Schema(o.Option("a", int)) + o.Schema(o.Option("b", int))] == ["a", "b"]


def test_string_list_checks_items():
    with pytest.raises(ConfigIssue, match="item 1 must be a string"):
        o.string_list(["a", 2])


def test_byte_string_turns_escapes_into_bytes():
    assert o.byte_string("\r\n") == b"\r\n"
    assert o.byte_string("\x1b") == b"\x1b"
    with pytest.raises(ConfigIssue):
        o.byte_string("")


@pytest.mark.parametrize("value", ["tcp:9100:interface=127.0.0.1", "unix:/tmp/x.sock", "tcp:0"])
def test_good_server_endpoints(value):
    assert o.server_endpoint(value) == value


@pytest.mark.parametrize(
    "value,expected",
    [("udp:9101", (9101, "127.0.0.1")), ("udp:9101:interface=0.0.0.0", (9101, "0.0.0.0")),
     ("udp:9101:interface=\\:\\:1", (9101, "::1"))],
)
def test_udp_endpoints(value, expected):
    assert o.udp_endpoint(value) == expected


@pytest.mark.parametrize("value", ["tcp:9101", "udp:x", "udp:70000", "udp:9101:iface=x", "udp"])
def test_bad_udp_endpoints(value):
    with pytest.raises(ConfigIssue):
        o.udp_endpoint(value)


def test_variable_names():
    assert o.variable_name("order.id-2") == "order.id-2"
    with pytest.raises(ConfigIssue):
        o.variable_name("2x")


# [admin.*] ---------------------------------------------------------------------


def test_admin_http_section_is_validated():
    pytest.importorskip("rawsvc.admin.web")
    config = loads("[admin.http]\nlisten = 'tcp:0:interface=127.0.0.1'\n")
    assert config.admin["http"]["listen"] == "tcp:0:interface=127.0.0.1"


def test_admin_http_unknown_key_and_bad_endpoint_are_named():
    pytest.importorskip("rawsvc.admin.web")
    errors = errors_of("[admin.http]\nlisen = 'x'\nlisten = 'nope'\n")
    assert errors[0] == "rawsvc.toml: [admin.http]: key 'lisen': unknown key (did you mean 'listen'?)"
    assert errors[1].startswith("rawsvc.toml: [admin.http]: key 'listen': ")
    assert len(errors) == 2


def test_admin_manhole_bad_endpoint_is_named():
    pytest.importorskip("rawsvc.admin.manhole")
    errors = errors_of("[admin.manhole]\nlisten = 'tcp:x'\n")
    assert any(e.startswith("rawsvc.toml: [admin.manhole]: key 'listen': ") for e in errors), errors


def test_admin_must_be_a_table():
    assert one_error("admin = 1\n").startswith("rawsvc.toml: [admin]: must be a table")
