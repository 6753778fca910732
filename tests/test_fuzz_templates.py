"""
The template engine under random input (property-based, hypothesis): any
source text either parses or is a ConfigIssue that says where; a parsed
template renders exactly its literals and variables, or fails with a
TemplateError naming the problem; never another exception.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rawsvc.errors import ConfigIssue, TemplateError
from rawsvc.template import ENCODINGS, Template, check_encoding

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,12}", fullmatch=True)
TEXT = st.text(st.characters(codec="utf-8"), max_size=20)  # may hold '$', '{', '}'
# Templates are mostly '$', braces and names: the interesting corners.
SOURCES = st.text(st.sampled_from("$${}ab_.-9 \x00é"), max_size=40) | st.text(max_size=60)


@FUZZ
@given(SOURCES)
def test_any_source_parses_or_says_where_it_is_bad(source):
    try:
        t = Template(source)
    except ConfigIssue as e:
        assert "bad template at position" in e.message
        assert "write ${name} for a variable and $$ for a literal $" in e.message
        return
    # What parses renders back to the source's meaning: $$ -> $, ${x} -> its value.
    values = {name: f"<{name}>" for name in t.names}
    expected = source.replace("$$", "\x00DOLLAR\x00")
    for name in t.names:
        expected = expected.replace("${" + name + "}", f"<{name}>", 1)
    assert t.render_text(values) == expected.replace("\x00DOLLAR\x00", "$")


@st.composite
def pieces(draw):
    """A template assembled from literal text and variables, with what it must render to."""
    parts = draw(st.lists(st.one_of(TEXT.map(lambda s: ("lit", s)), NAMES.map(lambda n: ("var", n))), max_size=8))
    values = draw(st.dictionaries(NAMES, TEXT, max_size=5))
    for kind, name in parts:
        if kind == "var" and name not in values:
            values[name] = draw(TEXT)
    source = "".join(s.replace("$", "$$") if k == "lit" else "${" + s + "}" for k, s in parts)
    expected = "".join(s if k == "lit" else values[s] for k, s in parts)
    return source, values, expected


@FUZZ
@given(pieces())
def test_escaped_literals_and_variables_render_exactly(case):
    source, values, expected = case
    t = Template(source)
    assert t.render_text(values) == expected
    assert t.render(values, "utf-8") == expected.encode("utf-8")


@FUZZ
@given(pieces(), NAMES)
def test_unknown_variable_fails_naming_it(case, missing):
    source, values, _ = case
    values.pop(missing, None)
    t = Template(source + "${" + missing + "}")
    with pytest.raises(TemplateError, match=r"unknown variable \$\{" + missing.replace(".", r"\.") + r"\}"):
        t.render_text(values)


@FUZZ
@given(pieces(), st.sampled_from(ENCODINGS))
def test_every_encoding_renders_bytes_or_names_the_character(case, encoding):
    source, values, expected = case
    try:
        out = Template(source).render(values, check_encoding(encoding))
    except TemplateError as e:
        assert "cannot encode" in str(e) and "at position" in str(e)
        assert encoding not in ("utf-8", "auto")  # UTF-8 encodes any text
        return
    assert isinstance(out, bytes)
    if encoding != "utf-16":
        codec = "utf-8" if encoding == "auto" else encoding
        assert out.decode(codec) == expected


class _Raw(dict):
    """Variables whose 'data' is raw payload bytes (as a job's are)."""

    def __init__(self, payload: bytes, **kw):
        super().__init__(kw)
        self.payload = payload

    def __getitem__(self, name):
        if name == "data":
            return self.payload.decode("utf-8", "surrogateescape")
        return super().__getitem__(name)

    def raw(self, name):
        return self.payload if name == "data" else self[name]


@FUZZ
@given(st.binary(max_size=200), TEXT)
def test_auto_passes_payload_bytes_through_untouched(payload, prefix):
    t = Template(prefix.replace("$", "$$") + "${data}")
    assert t.render(_Raw(payload), "auto") == prefix.encode() + payload
    # As text, bytes that are not UTF-8 survive as surrogates, and say so when re-encoded strictly.
    try:
        t.render(_Raw(payload), "utf-8")
    except TemplateError as e:
        assert 'use encoding = "auto"' in str(e)


@FUZZ
@given(st.text(max_size=20))
def test_encoding_names_are_checked_without_tracebacks(name):
    try:
        canonical = check_encoding(name)
    except ConfigIssue as e:
        assert "encoding" in e.message
        return
    assert canonical == "auto" or canonical in {__import__("codecs").lookup(e).name for e in ENCODINGS if e != "auto"}
