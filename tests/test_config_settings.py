"""Schema.settings: validated values as a frozen record, defaults from the declarations."""

from __future__ import annotations

import attrs
import pytest

from rawsvc import options as o
from rawsvc.config import SERVICE_OPTIONS, loads
from rawsvc.template import Template
from rawsvc.triggers.tcp import TCP_OPTIONS

SCHEMA = o.Schema(
    o.Option("name", str, doc="required"),
    o.Option("idle", (int, float), 300.0, o.non_negative, doc="seconds"),
    o.Option("data", str, "OK ${job_id}", o.template, doc="a template"),
    o.Option("cap", int, None, doc="no cap"),
)


def test_settings_read_as_attributes_and_as_a_mapping():
    values, issues = SCHEMA.validate({"name": "a", "idle": 5})
    assert issues == []
    settings = SCHEMA.settings(values)
    assert settings.name == "a" and settings["idle"] == 5.0 and settings.cap is None
    assert dict(settings) == values
    assert settings.get("idle", 1) == 5.0  # code written for the dict keeps working


def test_settings_are_frozen():
    settings = SCHEMA.settings(name="a")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.idle = 1
    with pytest.raises(TypeError):
        settings["idle"] = 1


def test_a_key_left_out_takes_its_declared_default_converted_by_its_check():
    settings = SCHEMA.settings(name="a")
    assert settings.idle == 300.0
    assert isinstance(settings.data, Template) and settings.data.render_text({"job_id": "7"}) == "OK 7"


def test_an_unknown_attribute_names_the_known_ones():
    with pytest.raises(AttributeError, match="no setting 'idel' \\(known: name, idle, data, cap\\)"):
        SCHEMA.settings(name="a").idel


def test_an_undeclared_or_missing_required_key_is_a_programming_error():
    with pytest.raises(ValueError, match="not declared in this schema: idel"):
        SCHEMA.settings(name="a", idel=3)
    with pytest.raises(ValueError, match="'name' is required"):
        SCHEMA.settings()


def test_service_settings_without_a_service_table_are_the_declared_defaults():
    settings = SERVICE_OPTIONS.settings()
    assert (settings.state_dir, settings.spool, settings.history, settings.stop_grace) == ("var/rawsvc", True, 1000, 30.0)


def test_a_loaded_config_carries_its_service_settings(tmp_path):
    config = loads('[service]\nhistory = 5\nlog_jobs = true\n', str(tmp_path / "x.toml"))
    assert config.settings.history == 5 and config.settings.log_jobs is True
    assert config.settings.stop_grace == 30.0
    assert dict(config.settings) == config.service


def test_an_empty_state_dir_still_means_the_default_one(tmp_path):
    config = loads('[service]\nstate_dir = ""\n', str(tmp_path / "etc" / "x.toml"))
    assert config.context.state_dir == str(tmp_path / "etc" / "var" / "rawsvc")


def test_trigger_settings_come_from_the_same_declarations():
    values, issues = TCP_OPTIONS.validate({"name": "t", "type": "tcp", "listen": "tcp:0", "flow": "f"})
    assert issues == []
    settings = TCP_OPTIONS.settings(values)
    assert settings.idle_timeout == 300.0 and settings.execute_on == "disconnect" and settings.backlog == 1024
