"""The C{[cluster]} table: defaults, checks, and only with a PostgreSQL spool."""

from __future__ import annotations

import socket

import pytest

from rawsvc.config import loads
from rawsvc.errors import ConfigError

FLOW = """
[[flow]]
name = "f"
[[flow.actions]]
type = "log"
message = "x"
"""
PG = '[service]\nspool = "postgresql://rawsvc@127.0.0.1:5432/rawsvc"\n'


def _errors(text):
    with pytest.raises(ConfigError) as e:
        loads(text)
    return "\n".join(e.value.errors)


def test_defaults_with_a_postgresql_spool():
    config = loads(PG + FLOW)
    assert config.context.cluster_options == {"node": socket.gethostname(), "lease_ttl": 10.0, "lease_margin": 3.0,
                                              "reap_interval": 2.0}


def test_a_node_name_may_be_set_and_an_empty_one_is_the_host_name():
    assert loads(PG + '[cluster]\nnode = "line-3"\n' + FLOW).context.cluster_options["node"] == "line-3"
    assert loads(PG + '[cluster]\nnode = " "\n' + FLOW).context.cluster_options["node"] == socket.gethostname()


def test_no_cluster_without_postgresql():
    assert loads(FLOW).context.cluster_options is None
    assert "[cluster]: needs a PostgreSQL spool" in _errors('[cluster]\nnode = "a"\n' + FLOW)
    assert "[cluster]: needs a PostgreSQL spool" in _errors('[service]\nspool = false\n[cluster]\n' + FLOW)


@pytest.mark.parametrize("table, message", [
    ("lease_margin = 10", "[cluster]: key 'lease_margin': must be less than lease_ttl (10)"),
    ("lease_ttl = 4\nlease_margin = 1\nreap_interval = 3", "key 'reap_interval': must be less than lease_ttl - lease_margin (3)"),
    ("lease_ttl = 0", "key 'lease_ttl': must be"),
    ("lease_ttl = \"10\"", "key 'lease_ttl'"),
    ("reap_intervall = 1", "unknown key (did you mean 'reap_interval'?)"),
    ("node = \"a\\u0007b\"", "key 'node': must be a printable name"),
])
def test_bad_values_are_named(table, message):
    assert message in _errors(PG + "[cluster]\n" + table + "\n" + FLOW)


def test_a_printer_pool_is_refused_in_a_cluster_with_a_clear_error():
    pool = """
[[flow]]
name = "p"
[[flow.actions]]
type = "send_tcp"
destination = ["127.0.0.1:9100", "127.0.0.1:9101"]
"""
    assert "a pool of several printers is not shared across a cluster" in _errors(PG + pool)
    single = pool.replace('["127.0.0.1:9100", "127.0.0.1:9101"]', '["127.0.0.1:9100"]')
    assert loads(PG + single).flows["p"]
    assert loads(pool).flows["p"]  # SQLite: pools as before
