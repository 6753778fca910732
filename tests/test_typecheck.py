"""Type checking: ``mypy rawsvc`` (config in pyproject.toml, with the mypy_zope plugin) is clean."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, require_module


def test_mypy_reports_no_errors_in_rawsvc():
    require_module("mypy")
    require_module("mypy_zope")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "rawsvc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"mypy rawsvc exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )
