"""The tcp-client and http triggers are written as a third party would: from rawsvc.triggers, only the API."""

from __future__ import annotations

import ast
import os

import pytest

from conftest import ROOT

#: What a plugin may import from the rawsvc.triggers package.
PUBLIC = {"rawsvc.triggers.api", "rawsvc.triggers.framing"}


def _imports(path: str) -> set[str]:
    with open(path) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize("module", ["tcp_client", "http_trigger", "folder", "serial_trigger"])
def test_trigger_imports_nothing_private_from_rawsvc_triggers(module):
    imports = _imports(os.path.join(ROOT, "rawsvc", "triggers", f"{module}.py"))
    private = {m for m in imports if m.startswith("rawsvc.triggers") and m not in PUBLIC}
    assert not private, f"{module} imports {sorted(private)}"
