"""Custom action types: the rawsvc.actions entry-point group and 'module:Name' paths."""

from __future__ import annotations

import sys
import textwrap

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from rawsvc.config import loads
from rawsvc.errors import ConfigError, ConfigIssue
from rawsvc.flow import run_job
from rawsvc.interfaces import IAction, IActionType
from rawsvc.job import Job, Payload
from rawsvc.plugins import find_action_type, find_trigger_type, load_dotted

# A small plugin action, as a user would write it: upper-cases a template
# into a variable, asynchronously.
PLUGIN = '''
from twisted.internet.defer import succeed
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.interfaces import IAction, IActionType


@provider(IActionType)
@implementer(IAction)
class Shout:
    type_name = "shout"
    options = o.Schema(
        o.Option("text", str, "${data}", o.template),
        o.Option("into", str, "shouted"),
    )

    def __init__(self, text, into):
        self.text = text
        self.into = into

    @classmethod
    def from_config(cls, options, context):
        return cls(options["text"], options["into"])

    def run(self, job):
        job.variables[self.into] = self.text.render_text(job.variables).upper()
        return succeed(None)


class NotAType:
    """Has no options or from_config."""
'''


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A directory on sys.path holding the plugin module and a dist-info
    whose entry_points.txt registers it in the rawsvc.actions group."""
    (tmp_path / "shoutplugin.py").write_text(PLUGIN)
    dist = tmp_path / "shoutplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shoutplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [rawsvc.actions]
            shout = shoutplugin:Shout
            broken = shoutplugin_missing:Nothing
            notatype = shoutplugin:NotAType

            [rawsvc.triggers]
            shout-trigger = shoutplugin:Shout
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("shoutplugin", None)


def flow_config(action_type: str) -> str:
    return f'[[flow]]\nname = "f"\nactions = [ {{ type = "{action_type}", text = "hi ${{who}}" }} ]\n'


def test_entry_point_action_type_is_found(plugin_path):
    found = find_action_type("shout")
    assert found.type_name == "shout"
    assert verifyObject(IActionType, found)


def test_dotted_action_type_is_found(plugin_path):
    assert find_action_type("shoutplugin:Shout") is find_action_type("shout")


@pytest_twisted.inlineCallbacks
def test_entry_point_action_runs_in_a_flow(plugin_path):
    config = loads(flow_config("shout"))
    action = config.flows["f"].actions[0]
    assert verifyObject(IAction, action)
    job = Job("t")
    job.variables["who"] = "bob"
    yield run_job(config.flows["f"], job)
    assert job.state == "done"
    assert job.variables["shouted"] == "HI BOB"


@pytest_twisted.inlineCallbacks
def test_dotted_action_runs_in_a_flow(plugin_path):
    config = loads('[[flow]]\nname = "f"\n[[flow.actions]]\ntype = "shoutplugin:Shout"\ninto = "loud"\n')
    job = Job("t", payload=Payload(b"quiet"))
    yield run_job(config.flows["f"], job)
    assert job.state == "done" and job.variables["loud"] == "QUIET"


def test_plugin_options_are_validated_like_builtins(plugin_path):
    with pytest.raises(ConfigError) as e:
        loads('[[flow]]\nname = "f"\nactions = [ { type = "shout", txet = "x" } ]\n', "p.toml")
    assert e.value.errors == [
        "p.toml: [[flow]] 'f' actions[0] (shout): key 'txet': unknown key (did you mean 'text'?)"
    ]


def test_unknown_type_lists_entry_point_types(plugin_path):
    with pytest.raises(ConfigIssue, match="known types: .*shout") as e:
        find_action_type("whisper")
    assert "module:Name" in str(e.value)


def test_entry_point_that_fails_to_load_is_a_config_issue(plugin_path):
    with pytest.raises(ConfigIssue, match="entry point 'shoutplugin_missing:Nothing' failed to load"):
        find_action_type("broken")


def test_entry_point_that_is_not_an_action_type_is_a_config_issue(plugin_path):
    with pytest.raises(ConfigIssue, match="does not provide IActionType"):
        find_action_type("notatype")


def test_dotted_path_to_a_missing_module_is_a_config_issue(plugin_path):
    with pytest.raises(ConfigIssue, match="cannot import module 'nosuchmodule'"):
        find_action_type("nosuchmodule:Thing")


def test_dotted_path_to_a_missing_name_is_a_config_issue(plugin_path):
    with pytest.raises(ConfigIssue, match="module 'shoutplugin' has no 'Whisper'"):
        find_action_type("shoutplugin:Whisper")


def test_plugin_module_that_crashes_on_import_is_a_config_issue(tmp_path, monkeypatch):
    (tmp_path / "crashplugin.py").write_text("raise RuntimeError('import-time bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigIssue, match="importing 'crashplugin' failed: RuntimeError: import-time bug"):
        load_dotted("crashplugin:X")


def test_action_type_is_not_accepted_as_a_trigger_type(plugin_path):
    with pytest.raises(ConfigIssue, match="does not provide ITriggerType"):
        find_trigger_type("shout-trigger")


def test_load_dotted_accepts_dots_and_colons():
    from rawsvc.template import Template

    assert load_dotted("rawsvc.template:Template") is Template
    assert load_dotted("rawsvc.template.Template") is Template
    with pytest.raises(ConfigIssue, match="is not a 'module:Name' path"):
        load_dotted("Template")


def test_plugin_errors_in_a_config_name_file_table_and_key(plugin_path):
    with pytest.raises(ConfigError) as e:
        loads(flow_config("broken"), "p.toml")
    [error] = e.value.errors
    assert error.startswith("p.toml: [[flow]] 'f' actions[0] (broken): key 'type': action type 'broken'")
