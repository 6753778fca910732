"""Templates, job variables and encodings (rawsvc.template, rawsvc.job)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawsvc.errors import ConfigIssue, TemplateError
from rawsvc.job import Job, Payload
from rawsvc.template import ENCODINGS, Template, check_encoding, encode_text, render

# Text without "$": any literal a template may hold.
literal = st.text(alphabet=st.characters(blacklist_characters="$", blacklist_categories=("Cs",)))
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,10}", fullmatch=True)


# ${name} substitution -------------------------------------------------------


def test_variable_is_substituted():
    assert render("SKU ${sku} x${qty}", {"sku": "A1", "qty": "3"}) == "SKU A1 x3"


def test_adjacent_variables_are_substituted():
    assert render("${a}${b}", {"a": "1", "b": "2"}) == "12"


def test_variable_names_may_hold_dots_and_dashes():
    assert render("${order.id}/${x-y}", {"order.id": "7", "x-y": "z"}) == "7/z"


def test_double_dollar_is_a_literal_dollar():
    assert render("cost: $$5 $$${x}", {"x": "y"}) == "cost: $5 $y"


def test_template_without_dollar_renders_unchanged():
    assert render("plain text {not} a var", {}) == "plain text {not} a var"


def test_unknown_variable_fails_and_names_the_variable():
    with pytest.raises(TemplateError, match=r"unknown variable \$\{missing\}"):
        render("a ${missing} b", {"present": "x"})


def test_unknown_variable_is_an_action_error():
    from rawsvc.errors import ActionError

    assert issubclass(TemplateError, ActionError)


@pytest.mark.parametrize("source", ["$", "cost $5", "${", "${}", "${1abc}", "${a b}", "$x", "end $"])
def test_malformed_template_is_a_config_issue(source):
    with pytest.raises(ConfigIssue, match="bad template"):
        Template(source)


def test_non_string_template_is_a_config_issue():
    with pytest.raises(ConfigIssue, match="must be a string"):
        Template(5)  # type: ignore[arg-type]


def test_template_lists_its_variable_names():
    assert Template("${a} $$ ${b} ${a}").names == ("a", "b", "a")


def test_is_single_variable():
    assert Template("${data}").is_single_variable
    assert not Template("x${data}").is_single_variable
    assert not Template("plain").is_single_variable


@given(literal)
def test_literal_text_round_trips(text):
    assert Template(text).render_text({}) == text


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_escaped_dollars_round_trip(text):
    """Any text, with every $ doubled, renders back to itself."""
    assert Template(text.replace("$", "$$")).render_text({}) == text


@given(st.lists(st.one_of(literal, names.map(lambda n: ("var", n))), max_size=8), st.data())
def test_rendering_is_the_join_of_its_pieces(pieces, data):
    """A template built from literal pieces and variables renders piecewise."""
    values = {}
    source, expected = [], []
    for piece in pieces:
        if isinstance(piece, tuple):
            name = piece[1]
            value = values.setdefault(name, data.draw(literal))
            source.append("${%s}" % name)
            expected.append(value)
        else:
            source.append(piece)
            expected.append(piece)
    assert Template("".join(source)).render_text(values) == "".join(expected)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))), st.integers(0, 50))
def test_any_split_renders_as_the_concatenation(text, cut):
    """Splitting an escaped text anywhere outside an escape gives the same result."""
    escaped = text.replace("$", "$$")
    cut = min(cut, len(text))
    left, right = text[:cut].replace("$", "$$"), text[cut:].replace("$", "$$")
    assert left + right == escaped
    assert Template(left).render_text({}) + Template(right).render_text({}) == text


@given(literal)
def test_variable_values_are_not_reinterpreted(value):
    """A value containing ${...} or $$ is inserted as-is, never re-expanded."""
    assert render("<${v}>", {"v": value + "${v}$$"}) == f"<{value}${{v}}$$>"


# Encodings ------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODINGS)
def test_every_listed_encoding_is_accepted(name):
    assert check_encoding(name)


@pytest.mark.parametrize("alias,canonical", [("UTF8", "utf-8"), ("latin1", "iso8859-1"), ("CP437", "cp437")])
def test_encoding_aliases_are_canonicalised(alias, canonical):
    assert check_encoding(alias) == canonical


def test_unknown_encoding_is_a_config_issue():
    with pytest.raises(ConfigIssue, match="unknown encoding 'klingon'"):
        check_encoding("klingon")


def test_real_but_unsupported_encoding_is_a_config_issue():
    with pytest.raises(ConfigIssue, match="unsupported encoding 'koi8-r'"):
        check_encoding("koi8-r")


@pytest.mark.parametrize(
    "encoding,expected",
    [
        ("utf-8", "Grüße €".encode("utf-8")),
        ("latin-1", b"Gr\xfc\xdfe"),
        ("cp437", b"Gr\x81\xe1e"),
        ("cp1252", b"Gr\xfc\xdfe \x80"),
        ("utf-16", "Grüße €".encode("utf-16")),
    ],
)
def test_render_encodes_text(encoding, expected):
    text = "Grüße €" if encoding in ("utf-8", "utf-16", "cp1252") else "Grüße"
    assert Template("${t}").render({"t": text}, check_encoding(encoding)) == expected


def test_utf16_render_has_a_single_bom():
    out = Template("a${x}b").render({"x": "c"}, "utf-16")
    assert out == "acb".encode("utf-16")


def test_text_that_cannot_be_encoded_fails_with_a_clear_error():
    with pytest.raises(TemplateError, match=r"cannot encode '€' at position 4 as ascii"):
        Template("abc ${x}").render({"x": "€"}, "ascii")


def test_encode_text_auto_is_utf8():
    assert encode_text("é", "auto") == "é".encode()


def test_encode_text_auto_restores_escaped_payload_bytes():
    assert encode_text(b"\xff\xfe".decode("utf-8", "surrogateescape"), "auto") == b"\xff\xfe"


def test_encode_text_auto_fails_clearly_on_a_lone_surrogate():
    with pytest.raises(TemplateError, match="cannot encode '\\\\ud800' at position 0 as utf-8"):
        encode_text("\ud800", "auto")


def test_auto_passes_payload_bytes_through_untouched():
    raw = bytes(range(256))
    job = Job("t", payload=Payload(raw))
    assert Template("${data}").render(job.variables, "auto") == raw


def test_auto_wraps_payload_bytes_in_utf8_text():
    job = Job("t", payload=Payload(b"\xff\x00"))
    job.variables["name"] = "é"
    out = Template("${name}:${data}!").render(job.variables, "auto")
    assert out == "é".encode() + b":\xff\x00!"


def test_undecodable_payload_as_text_fails_with_a_hint_to_use_auto():
    job = Job("t", payload=Payload(b"\xff"))
    with pytest.raises(TemplateError, match='use encoding = "auto"'):
        Template("${data}").render(job.variables, "latin-1")


def test_undecodable_payload_round_trips_through_utf8_text():
    job = Job("t", payload=Payload(b"ok \xff"))
    assert job.variables["data"] == "ok \udcff"
    assert Template("${data}").render(job.variables, "auto") == b"ok \xff"


# Job variables --------------------------------------------------------------


def test_job_has_the_builtin_variables():
    job = Job("orders", payload=Payload(b"abc"), peer_host="10.0.0.1", peer_port=4000,
              received_at=0.5)
    v = job.variables
    assert v["data"] == "abc"
    assert v["trigger"] == "orders"
    assert v["peer_host"] == "10.0.0.1"
    assert v["peer_port"] == "4000"
    assert v["size"] == "3"
    assert v["job_id"] == job.job_id
    assert v["received_at"] == "1970-01-01T00:00:00.500Z"


def test_size_variable_follows_payload_written_after_the_job_was_made():
    job = Job("t")
    job.payload.write(b"hello")
    job.payload.close()
    assert job.variables["size"] == "5"
    assert Template("${size}").render_text(job.variables) == "5"


def test_variables_are_stored_as_strings():
    job = Job("t")
    job.variables["n"] = 5
    assert job.variables["n"] == "5"


def test_bytes_stored_in_a_variable_become_text_not_their_repr():
    job = Job("t")
    job.variables["reply"] = b"OK \xff"
    assert job.variables["reply"] == "OK \udcff"
    assert Template("${reply}").render(job.variables, "auto") == b"OK \xff"


def test_job_with_encoding_auto_decodes_data_as_utf8():
    job = Job("t", payload=Payload("é".encode()), encoding="auto")
    assert job.variables["data"] == "é"


def test_data_can_be_overridden_by_a_flow():
    job = Job("t", payload=Payload(b"raw"))
    job.variables["data"] = "cooked"
    assert job.variables["data"] == "cooked"
    assert Template("${data}").render(job.variables, "auto") == b"cooked"


def test_data_is_decoded_with_the_job_encoding():
    job = Job("t", payload=Payload(b"\x81"), encoding="cp437")
    assert job.variables["data"] == "ü"


def test_snapshot_leaves_out_the_payload():
    job = Job("t", payload=Payload(b"secret"))
    assert "data" not in job.variables.snapshot()
    assert "data" in job.variables


def test_job_ids_are_unique():
    assert len({Job("t").job_id for _ in range(200)}) == 200


# Payload --------------------------------------------------------------------


def test_payload_spills_to_a_file_past_the_threshold(tmp_path):
    p = Payload(spool_dir=str(tmp_path), threshold=10)
    p.write(b"0123456789")
    assert p.in_memory
    p.write(b"abc")
    assert not p.in_memory
    p.close()
    assert p.bytes() == b"0123456789abc"
    assert p.size == 13
    with p.open() as f:
        assert f.read() == b"0123456789abc"
    p.discard()
    assert not list(tmp_path.iterdir())


def test_closed_payload_refuses_writes():
    p = Payload(b"x")
    p.close()
    with pytest.raises(ValueError):
        p.write(b"y")
