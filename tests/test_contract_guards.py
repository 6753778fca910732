"""
Guards on rawsvc's own source (AST scans), so the contracts of issue 13 stay kept:

- no C{getattr}/C{hasattr} feature probe on a sink, trigger, store, pool,
  service or build context: an optional capability is an interface, asked
  with C{IThing.providedBy(x)};
- no write to a private attribute of another object (C{x._name = ...},
  C{setattr(x, "_name", ...)}) outside the two compatibility modules, where
  the private Twisted details live;
- no component registry (C{context.components[...]}, C{context.component(...)}):
  parts are handed to constructors by L{rawsvc.wiring}.

Each scan names the file and line of what it found.  The allow-lists are
keyed by file and the expression's text (not by line, so they survive
edits) and say why each entry is fine.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = Path(ROOT) / "rawsvc"

#: A name part that makes an expression a seam object (the pool is also C{destinations}; the spool's sink C{spool}).
SEAM_WORDS = frozenset(
    {"sink", "trigger", "store", "pool", "service", "context", "destinations", "spool"}
)

#: (file, first argument) -> why this getattr/hasattr on a seam object is not a feature probe.
PROBE_ALLOWED: dict[tuple[str, str], str] = {}

#: Where private attributes of other objects may be written: the compatibility modules.
COMPAT_MODULES = frozenset({"rawsvc/compat.py", "rawsvc/client/_compat_http.py"})

#: (file, assignment target) -> why this write to another object's private attribute is fine.
PRIVATE_WRITE_ALLOWED: dict[tuple[str, str], str] = {
    ("rawsvc/job.py", "p._size"): (
        "Payload.from_file is an alternate constructor of Payload: it sets the private "
        "size of the Payload it has just made (rawsvc's own object, not Twisted's)"
    ),
}

#: Names that were the component registry (C{BuildContext.components} / C{.component(name, factory)}).
REGISTRY_NAMES = frozenset({"components", "component"})


# The scans, over any source text --------------------------------------------------------


def _names_in(node: ast.AST) -> Iterator[str]:
    """Every identifier an expression uses: names, attributes, and the attribute a call is made on."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            yield sub.id
        elif isinstance(sub, ast.Attribute):
            yield sub.attr


def _is_seam(identifier: str) -> bool:
    """True for C{sink}, C{self._sink}'s C{_sink}, C{triggers}, C{spool_sink}, C{job_store} ..."""
    for part in identifier.lower().strip("_").split("_"):
        if part in SEAM_WORDS or (part.endswith("s") and part[:-1] in SEAM_WORDS):
            return True
    return False


def feature_probes(source: str, filename: str) -> Iterator[tuple[int, str]]:
    """(line, first argument's text) of each getattr/hasattr whose first argument names a seam object."""
    for node in ast.walk(ast.parse(source, filename)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and node.args
            and any(_is_seam(name) for name in _names_in(node.args[0]))
        ):
            yield node.lineno, ast.unparse(node.args[0])


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own(target: ast.expr) -> bool:
    """True when the object written to is C{self} or C{cls}."""
    return isinstance(target, ast.Name) and target.id in ("self", "cls")


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        found = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        found = [node.target]
    else:
        return []
    flat: list[ast.expr] = []
    while found:
        t = found.pop()
        if isinstance(t, (ast.Tuple, ast.List)):
            found.extend(t.elts)
        elif isinstance(t, ast.Starred):
            found.append(t.value)
        else:
            flat.append(t)
    return flat


def private_writes(source: str, filename: str) -> Iterator[tuple[int, str]]:
    """(line, target's text) of each write to a private attribute of an object other than self/cls."""
    for node in ast.walk(ast.parse(source, filename)):
        for target in _targets(node):
            if isinstance(target, ast.Attribute) and _is_private(target.attr) and not _own(target.value):
                yield target.lineno, ast.unparse(target)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
            and not _own(node.args[0])
        ):
            yield node.lineno, f"{ast.unparse(node.args[0])}.{node.args[1].value}"


def registry_uses(source: str, filename: str) -> Iterator[tuple[int, str]]:
    """(line, text) of each C{x.components} / C{x.component}, C{component(...)} call, or such a definition."""
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Attribute) and node.attr in REGISTRY_NAMES:
            yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in REGISTRY_NAMES:
            yield node.lineno, ast.unparse(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in REGISTRY_NAMES:
            yield node.lineno, f"def {node.name}"
        elif isinstance(node, ast.ClassDef):
            for item in node.body:  # a class-level field: components: dict = ...
                for target in _targets(item):
                    if isinstance(target, ast.Name) and target.id in REGISTRY_NAMES:
                        yield target.lineno, f"{node.name}.{target.id}"


# The guards, over rawsvc/ ------------------------------------------------------------------


def _sources() -> Iterator[tuple[str, str]]:
    """(path relative to the repository, text) of every module of the rawsvc package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")


def _report(what: str, found: list[str]) -> str:
    return f"{what}:\n  " + "\n  ".join(found)


def test_the_scans_read_every_module_of_the_package():
    paths = [path for path, _ in _sources()]
    assert "rawsvc/service.py" in paths and "rawsvc/spool/sink.py" in paths and len(paths) > 50


def probe_findings(sources: Iterable[tuple[str, str]]) -> list[str]:
    """C{file:line: ...} for each feature probe on a seam object not in the allow-list."""
    return [
        f"{path}:{line}: getattr/hasattr on {arg}: ask an interface with providedBy"
        for path, source in sources
        for line, arg in feature_probes(source, path)
        if (path, arg) not in PROBE_ALLOWED
    ]


def private_write_findings(sources: Iterable[tuple[str, str]]) -> list[str]:
    """C{file:line: ...} for each private write outside the compat modules, not in the allow-list."""
    return [
        f"{path}:{line}: writes {target}: private details belong in rawsvc/compat.py"
        for path, source in sources
        if path not in COMPAT_MODULES
        for line, target in private_writes(source, path)
        if (path, target) not in PRIVATE_WRITE_ALLOWED
    ]


def registry_findings(sources: Iterable[tuple[str, str]]) -> list[str]:
    """C{file:line: ...} for each use of a component registry."""
    return [
        f"{path}:{line}: {text}: hand the part to its constructor (rawsvc.wiring)"
        for path, source in sources
        for line, text in registry_uses(source, path)
    ]


def test_no_getattr_or_hasattr_feature_probe_on_a_seam_object():
    found = probe_findings(_sources())
    assert not found, _report("feature probes on a sink, trigger, store, pool, service or context", found)


def test_no_write_to_another_objects_private_attribute_outside_the_compat_modules():
    found = private_write_findings(_sources())
    assert not found, _report("writes to private attributes of other objects", found)


def test_no_component_registry():
    found = registry_findings(_sources())
    assert not found, _report("a component registry", found)


@pytest.mark.parametrize(
    ("allowed", "scan"),
    [(PROBE_ALLOWED, feature_probes), (PRIVATE_WRITE_ALLOWED, private_writes)],
    ids=["probes", "private-writes"],
)
def test_every_allow_list_entry_is_still_needed(allowed, scan):
    sources = dict(_sources())
    stale = [
        f"{path}: {text}"
        for path, text in allowed
        if path not in sources or text not in {t for _, t in scan(sources[path], path)}
    ]
    assert not stale, _report("allow-list entries that match nothing any more (remove them)", stale)


# The scans find what they are for --------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        'getattr(self.sink, "recent", None)',
        'hasattr(sink, "retry")',
        'getattr(self.context.destinations, "status", None)',
        'getattr(service.triggers[name], "printer", None)',
        'hasattr(self._store, "purge")',
        'getattr(job_store, "flush")',
        'getattr(self.service, "jobs")',
    ],
)
def test_a_feature_probe_on_a_seam_object_is_found(line):
    assert list(feature_probes(f"x = 1\n{line}\n", "probe.py")) == [(2, line.split("(", 1)[1].split(",")[0])]


@pytest.mark.parametrize(
    "line",
    ['getattr(e, "osError", None)', 'getattr(t.counters, field)', 'getattr(self, name)', 'getattr(addr, "host", None)'],
)
def test_getattr_on_other_objects_is_not_a_seam_probe(line):
    assert list(feature_probes(line, "plain.py")) == []


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("port._realPortNumber = 0", "port._realPortNumber"),
        ("endpoint._backlog: int = 50", "endpoint._backlog"),
        ("a, transport._tempDataLen = 1, 0", "transport._tempDataLen"),
        ("self.port._connected += 1", "self.port._connected"),
        ('setattr(factory, "_noisy", False)', "factory._noisy"),
    ],
)
def test_a_write_to_a_private_attribute_is_found(source, target):
    assert list(private_writes(source, "write.py")) == [(1, target)]


@pytest.mark.parametrize(
    "source",
    ["self._size = 1", "cls._cache = {}", "obj.size = 1", "obj.__doc__ = 'x'", 'setattr(self, "_x", None)', "x = obj._y"],
)
def test_own_and_public_writes_are_not_flagged(source):
    assert list(private_writes(source, "fine.py")) == []


@pytest.mark.parametrize(
    "source",
    [
        'context.components["sink"] = sink',
        'sink = context.component("sink", make_sink)',
        "def component(name):\n    pass",
        "class BuildContext:\n    components: dict = {}",
    ],
)
def test_a_component_registry_is_found(source):
    found = list(registry_uses(source, "registry.py"))
    assert found and found[0][0] in (1, 2)


def test_a_local_list_of_services_is_not_a_registry():
    source = "components = self._components\nfor component in components:\n    component.stopService()\n"
    assert list(registry_uses(source, "service.py")) == []


def test_each_finding_names_its_file_and_line():
    sources = [("rawsvc/example.py", 'x = 1\ngetattr(self.sink, "recent")\nport._backlog = 5\nctx.components["a"] = 1\n')]
    assert probe_findings(sources) == [
        "rawsvc/example.py:2: getattr/hasattr on self.sink: ask an interface with providedBy"
    ]
    assert private_write_findings(sources) == [
        "rawsvc/example.py:3: writes port._backlog: private details belong in rawsvc/compat.py"
    ]
    assert registry_findings(sources) == [
        "rawsvc/example.py:4: ctx.components: hand the part to its constructor (rawsvc.wiring)"
    ]


def test_the_compat_modules_may_write_private_attributes_and_nothing_else_may():
    source = "pool._factory = quiet\n"
    assert private_write_findings([("rawsvc/client/_compat_http.py", source)]) == []
    assert private_write_findings([("rawsvc/compat.py", source)]) == []
    assert len(private_write_findings([("rawsvc/client/protocol.py", source)])) == 1
