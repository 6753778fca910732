"""The rawsvc configs the scenarios run (non-durable: C{spool = false})."""

from __future__ import annotations


def service(state_dir: str, spool: bool = False) -> str:
    return f'[service]\nstate_dir = "{state_dir}"\nspool = {"true" if spool else "false"}\n'


def reply_ok(state_dir: str, port: int, line: bool, spool: bool = False) -> str:
    """Round trip: each job answered with C{OK\\n} (disconnect or newline framing)."""
    framing = 'execute_on = "delimiter"\ndelimiter = "\\n"\n' if line else 'execute_on = "disconnect"\n'
    return service(state_dir, spool) + f"""
[[trigger]]
name = "rt"
type = "tcp"
listen = "tcp:{port}:interface=127.0.0.1"
{framing}flow = "ok"

[[flow]]
name = "ok"
actions = [ {{ type = "reply", data = "OK\\n" }} ]
"""


def relay(state_dir: str, port: int, sink_port: int) -> str:
    """Store and forward: the whole job, then send_tcp to the sink, then OK."""
    return service(state_dir) + f"""
[[trigger]]
name = "relay"
type = "tcp"
listen = "tcp:{port}:interface=127.0.0.1"
execute_on = "disconnect"
flow = "forward"

[[flow]]
name = "forward"
actions = [
  {{ type = "send_tcp", destination = "127.0.0.1:{sink_port}", retries = 0 }},
  {{ type = "reply", data = "OK\\n" }},
]
"""


def stream(state_dir: str, port: int) -> str:
    """Delimited stream: one job per line through a one-action flow."""
    return service(state_dir) + f"""
[[trigger]]
name = "lines"
type = "tcp"
listen = "tcp:{port}:interface=127.0.0.1"
execute_on = "delimiter"
delimiter = "\\n"
flow = "trivial"

[[flow]]
name = "trivial"
actions = [ {{ type = "set", vars = {{ seen = "1" }} }} ]
"""


def idle(state_dir: str, port: int, max_connections: int) -> str:
    """Idle connections: the limit raised to let them in (config, not tuning)."""
    return service(state_dir) + f"""
[[trigger]]
name = "idle"
type = "tcp"
listen = "tcp:{port}:interface=127.0.0.1:backlog=1024"
execute_on = "delimiter"
delimiter = "\\n"
flow = "ok"
max_connections = {max_connections}

[[flow]]
name = "ok"
actions = [ {{ type = "reply", data = "OK\\n" }} ]
"""
