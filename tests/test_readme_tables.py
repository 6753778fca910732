"""
README's configuration key tables are generated from the option
declarations (rawsvc.keytables); this fails while the two disagree.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from rawsvc import keytables
from rawsvc import options as o

README = os.path.join(ROOT, "README.md")
REGENERATE = "python -m rawsvc config-keys --update README.md"


def readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def test_readme_tables_agree_with_the_declarations():
    text = readme()
    new = keytables.update(text)
    if new != text:
        diff = "".join(difflib.unified_diff(text.splitlines(True), new.splitlines(True), "README.md", "declarations"))
        pytest.fail(f"README's key tables disagree with the option declarations:\n{diff}\nregenerate: {REGENERATE}",
                    pytrace=False)


def test_every_built_in_table_is_in_readme_once():
    found = keytables.blocks(readme())
    assert sorted(found) == sorted(keytables.table_names())


@pytest.mark.parametrize("name", keytables.table_names())
def test_every_declared_key_is_documented(name):
    undocumented = [opt.name for opt in keytables.schema_of(name) if not opt.doc.strip()]
    assert undocumented == [], f"{name}: give these keys a doc= in their declaration: {undocumented}"


def test_a_table_out_of_date_is_rewritten_from_its_declaration():
    stale = "intro\n<!-- keys: admin.http -->\n| key | default | meaning |\n| `refresh` | `9` | old |\n<!-- /keys -->\nend\n"
    new = keytables.update(stale)
    assert new.startswith("intro\n<!-- keys: admin.http -->\n| key | default | meaning |\n| --- | --- | --- |\n")
    assert "| `refresh` | `5` | seconds between reloads of the `/` page (0: off) |\n" in new
    assert new.endswith("| `recent_jobs` | `50` | jobs listed on `/` |\n<!-- /keys -->\nend\n")
    assert "old" not in new
    assert keytables.update(new) == new


def test_only_the_named_tables_are_rewritten():
    text = "<!-- keys: admin.http -->\nA\n<!-- /keys -->\n<!-- keys: flow -->\nB\n<!-- /keys -->\n"
    new = keytables.update(text, ["flow"])
    assert new.startswith("<!-- keys: admin.http -->\nA\n<!-- /keys -->\n<!-- keys: flow -->\n| key |")


def test_an_unknown_table_is_an_error_naming_the_known_ones():
    with pytest.raises(keytables.UnknownTable, match="unknown trigger type 'nope'"):
        keytables.update("<!-- keys: trigger.nope -->\n<!-- /keys -->\n")
    with pytest.raises(keytables.UnknownTable, match="built in: service, cluster, flow, trigger.tcp"):
        keytables.schema_of("servce")


def test_a_row_shows_required_toml_defaults_and_shown_defaults():
    schema = o.Schema(
        o.Option("a", str, doc="needed"),
        o.Option("b", str, "\r\n", doc="a delimiter"),
        o.Option("c", (int, float), 300.0, doc="seconds"),
        o.Option("d", (int, float), 0.5, doc="half"),
        o.Option("e", bool, False, doc="flag"),
        o.Option("f", list, ["x", "y"], doc="list"),
        o.Option("g", int, None, doc="unset"),
        o.Option("h", str, "", doc="what to send", shown_default="the payload, untouched"),
        o.Option("i", str, "", doc="one | two"),
    )
    assert keytables.markdown_table(schema).splitlines()[2:] == [
        "| `a` | required | needed |",
        '| `b` | `"\\r\\n"` | a delimiter |',
        "| `c` | `300` | seconds |",
        "| `d` | `0.5` | half |",
        "| `e` | `false` | flag |",
        '| `f` | `["x", "y"]` | list |',
        "| `g` | — | unset |",
        "| `h` | the payload, untouched | what to send |",
        '| `i` | `""` | one \\| two |',
    ]


def test_keys_inherited_unchanged_fold_into_one_row_and_overrides_keep_theirs():
    base = o.Schema(o.Option("name", str, doc="its name"), o.Option("idle", int, 300, doc="idle"))
    child = base + o.Schema(o.Option("idle", int, 90, doc="shorter"), o.Option("busy", str, "queue", doc="busy"))
    lines = keytables.markdown_table(child, common=base, common_label="(listener keys)",
                                     common_note="as for `tcp`").splitlines()[2:]
    assert lines == [
        "| (listener keys) | | `name`, as for `tcp` |",
        "| `idle` | `90` | shorter |",
        '| `busy` | `"queue"` | busy |',
    ]


def test_the_printer_table_folds_the_listener_keys_it_shares_with_tcp():
    table = keytables.render("trigger.printer")
    assert "| (listener keys) | | `name`, `type`, `listen`, `flow`," in table
    assert "| `idle_timeout` | `90` |" in table  # the printer's own default, its own row


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rawsvc", "config-keys", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))


def test_config_keys_prints_a_table_with_its_markers():
    result = run("admin.http")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<!-- keys: admin.http -->\n| key | default | meaning |\n")
    assert result.stdout.endswith("| `recent_jobs` | `50` | jobs listed on `/` |\n<!-- /keys -->\n")


def test_config_keys_check_shows_the_difference_and_the_command_then_update_fixes_it(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("x\n<!-- keys: admin.http -->\n| stale |\n<!-- /keys -->\n")
    result = run("--check", str(path))
    assert result.returncode == 1
    assert "-| stale |\n" in result.stdout and "+| `refresh` | `5` |" in result.stdout
    assert f"regenerate: rawsvc config-keys --update {path}" in result.stderr
    result = run("--update", str(path))
    assert result.returncode == 0 and result.stdout == f"{path}: 1 table(s), rewritten\n"
    assert run("--check", str(path)).returncode == 0


def test_config_keys_on_an_unknown_table_exits_2():
    result = run("action.teleport")
    assert result.returncode == 2
    assert result.stderr.startswith("rawsvc config-keys: action.teleport: unknown action type 'teleport'")


def test_config_keys_lists_the_built_in_tables():
    result = run("--list")
    assert result.returncode == 0
    assert result.stdout.splitlines() == keytables.table_names()


def test_a_plugins_table_is_rendered_from_its_own_declarations(tmp_path):
    (tmp_path / "shout.py").write_text(
        "from zope.interface import implementer, provider\n"
        "from rawsvc import options as o\n"
        "from rawsvc.interfaces import IAction, IActionType\n"
        "@provider(IActionType)\n@implementer(IAction)\nclass Shout:\n"
        "    type_name = 'shout'\n"
        "    options = o.Schema(o.Option('text', str, '${data}', o.template, doc='what to shout'))\n"
        "    @classmethod\n    def from_config(cls, options, context):\n        return cls()\n"
        "    def run(self, job):\n        pass\n"
    )
    result = subprocess.run([sys.executable, "-m", "rawsvc", "config-keys", "action.shout:Shout"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT])))
    assert result.returncode == 0, result.stderr
    assert '| `text` | `"${data}"` | what to shout |' in result.stdout
