"""The parse action: regex, keyvalue, json and csv."""

from __future__ import annotations

import pytest
from zope.interface.verify import verifyObject

from rawsvc.actions.parse import ParseAction
from rawsvc.context import BuildContext
from rawsvc.errors import ActionError, ConfigIssue
from rawsvc.interfaces import IAction, IActionType
from rawsvc.job import Job, Payload


def build(**table) -> ParseAction:
    values, issues = ParseAction.options.validate(table)
    if issues:
        raise issues[0]
    return ParseAction.from_config(values, BuildContext())


def parse(payload: bytes, **table) -> dict[str, str]:
    job = Job("t", payload=Payload(payload))
    before = set(job.variables)
    build(**table).run(job)
    return {k: job.variables[k] for k in job.variables if k not in before}


def test_parse_provides_the_interfaces():
    assert verifyObject(IActionType, ParseAction)
    assert verifyObject(IAction, build(regex="(?P<a>x)"))


# regex -----------------------------------------------------------------------


def test_regex_named_groups_become_variables():
    assert parse(b"ABC123;7", regex=r"^(?P<sku>\w+);(?P<qty>\d+)$") == {"sku": "ABC123", "qty": "7"}


def test_regex_alone_implies_format_regex():
    assert build(regex="(?P<a>.)").format == "regex"


def test_regex_searches_by_default():
    assert parse(b"xx id=42 yy", regex=r"id=(?P<id>\d+)") == {"id": "42"}


def test_regex_fullmatch_requires_the_whole_text():
    with pytest.raises(ActionError, match="does not match"):
        parse(b"xx id=42 yy", regex=r"id=(?P<id>\d+)", match="fullmatch")


def test_regex_is_multiline():
    assert parse(b"head\nSKU:9\ntail", regex=r"^SKU:(?P<sku>\d+)$") == {"sku": "9"}


def test_regex_unmatched_optional_group_is_empty():
    assert parse(b"a", regex=r"(?P<a>a)(?P<b>b)?") == {"a": "a", "b": ""}


def test_regex_mismatch_fails_showing_payload_and_pattern():
    with pytest.raises(ActionError) as e:
        parse(b"nope", regex=r"^(?P<a>\d+)$")
    assert str(e.value) == r'payload "nope" does not match regex "^(?P<a>\d+)$"'


def test_regex_mismatch_shows_control_characters_escaped_and_backslashes_single():
    with pytest.raises(ActionError) as e:
        parse(b'say "hi"\r\n\x1b', regex=r"\A(?P<a>\d+)\Z", match="fullmatch")
    assert str(e.value) == r'payload "say \"hi\"\r\n\x1b" does not match regex "\A(?P<a>\d+)\Z"'


def test_regex_mismatch_shortens_long_payloads():
    with pytest.raises(ActionError) as e:
        parse(b"x" * 500, regex=r"^(?P<a>\d+)$")
    assert "..." in str(e.value) and len(str(e.value)) < 150


def test_bad_regex_is_a_config_issue_on_key_regex():
    with pytest.raises(ConfigIssue, match="bad regular expression") as e:
        build(regex="(?P<a")
    assert e.value.key == "regex"


def test_regex_without_named_groups_is_a_config_issue():
    with pytest.raises(ConfigIssue, match="no named groups") as e:
        build(regex=r"\d+")
    assert e.value.key == "regex"


def test_regex_with_another_format_is_a_config_issue():
    with pytest.raises(ConfigIssue) as e:
        build(format="json", regex="(?P<a>.)")
    assert e.value.key == "regex"


def test_no_format_and_no_regex_is_a_config_issue():
    with pytest.raises(ConfigIssue) as e:
        build()
    assert e.value.key == "format"


def test_prefix_is_prepended():
    assert parse(b"7", regex=r"(?P<n>\d)", prefix="order_") == {"order_n": "7"}


def test_bad_prefix_is_a_config_issue_on_key_prefix():
    with pytest.raises(ConfigIssue) as e:
        build(regex="(?P<a>.)", prefix="9")
    assert e.value.key == "prefix"


def test_source_template_parses_another_variable():
    job = Job("t", payload=Payload(b"ignored"))
    job.variables["reply"] = "STATUS=OK"
    build(regex=r"STATUS=(?P<status>\w+)", source="${reply}").run(job)
    assert job.variables["status"] == "OK"


# keyvalue -------------------------------------------------------------------


def test_keyvalue_pairs_become_variables():
    assert parse(b"a=1\nb = two \r\nc=x=y\n\n", format="keyvalue") == {"a": "1", "b": "two", "c": "x=y"}


def test_keyvalue_custom_separators():
    assert parse(b"a:1;b:2", format="keyvalue", pair_separator=";", assign=":") == {"a": "1", "b": "2"}


def test_keyvalue_fields_pick_and_rename():
    assert parse(b"a=1\nb=2", format="keyvalue", fields={"first": "a"}) == {"first": "1"}


def test_keyvalue_missing_field_fails():
    with pytest.raises(ActionError, match='no key "zz"'):
        parse(b"a=1", format="keyvalue", fields={"x": "zz"})


def test_keyvalue_pair_without_assign_fails_naming_the_pair():
    with pytest.raises(ActionError, match=r'keyvalue pair 2 "oops" has no "="'):
        parse(b"a=1\noops", format="keyvalue")


def test_keyvalue_unusable_key_fails():
    with pytest.raises(ActionError, match="not a usable variable name"):
        parse(b"1a=1", format="keyvalue")


def test_keyvalue_empty_separator_is_a_config_issue():
    with pytest.raises(ConfigIssue) as e:
        build(format="keyvalue", assign="")
    assert e.value.key == "assign"


# json -----------------------------------------------------------------------


def test_json_top_level_scalars_become_variables():
    assert parse(b'{"a": "x", "n": 3, "ok": true, "nested": {"b": 1}, "bad key": 1}', format="json") == {
        "a": "x", "n": "3", "ok": "true",
    }


def test_json_fields_by_dotted_path():
    doc = b'{"order": {"lines": [{"sku": "A"}, {"sku": "B", "qty": 2}]}, "who": null}'
    got = parse(doc, format="json", fields={"sku": "order.lines.1.sku", "qty": "order.lines.-1.qty",
                                          "first": "order.lines.0", "who": "who"})
    assert got == {"sku": "B", "qty": "2", "first": '{"sku": "A"}', "who": "null"}


def test_json_missing_path_fails_naming_path_and_variable():
    with pytest.raises(ActionError, match=r'no field "a.b.5" \(for \$\{x\}\)'):
        parse(b'{"a": {"b": [1]}}', format="json", fields={"x": "a.b.5"})


def test_json_invalid_payload_fails():
    with pytest.raises(ActionError, match="not JSON"):
        parse(b"{nope", format="json")


def test_json_non_object_without_fields_fails():
    with pytest.raises(ActionError, match="not an object"):
        parse(b"[1, 2]", format="json")


def test_json_array_payload_with_index_field():
    assert parse(b'["a", "b"]', format="json", fields={"second": 1}) == {"second": "b"}


# csv ------------------------------------------------------------------------


def test_csv_columns_by_header():
    got = parse(b"sku,qty,name\r\nA1,3,\"Widget, large\"\r\n", format="csv",
                fields={"sku": "sku", "name": "name"})
    assert got == {"sku": "A1", "name": "Widget, large"}


def test_csv_columns_by_index():
    assert parse(b"A1;3;W", format="csv", header=False, csv_delimiter=";", fields={"qty": 1, "last": -1}) == {
        "qty": "3", "last": "W",
    }


def test_csv_index_with_header_skips_header():
    assert parse(b"h1,h2\nv1,v2\n", format="csv", fields={"b": 1}) == {"b": "v2"}


def test_csv_missing_header_fails():
    with pytest.raises(ActionError, match=r'no column "zz" \(for \$\{x\}\)'):
        parse(b"a,b\n1,2\n", format="csv", fields={"x": "zz"})


def test_csv_short_row_fails():
    with pytest.raises(ActionError, match="no column 5"):
        parse(b"1,2", format="csv", header=False, fields={"x": 5})


def test_csv_needs_a_data_row_after_the_header():
    with pytest.raises(ActionError, match="header row and a data row"):
        parse(b"a,b\n", format="csv", fields={"x": "a"})


def test_csv_without_fields_is_a_config_issue():
    with pytest.raises(ConfigIssue) as e:
        build(format="csv")
    assert e.value.key == "fields"


def test_csv_header_names_without_header_is_a_config_issue():
    with pytest.raises(ConfigIssue) as e:
        build(format="csv", header=False, fields={"x": "name"})
    assert e.value.key == "fields"


def test_csv_long_delimiter_is_a_config_issue():
    with pytest.raises(ConfigIssue) as e:
        build(format="csv", csv_delimiter="::", fields={"x": 0})
    assert e.value.key == "csv_delimiter"


def test_fields_must_name_usable_variables():
    values, issues = ParseAction.options.validate({"format": "json", "fields": {"1x": "a"}})
    assert [i.key for i in issues] == ["fields"]


def test_unknown_format_is_a_config_issue():
    values, issues = ParseAction.options.validate({"format": "xml"})
    assert [i.key for i in issues] == ["format"]


# Properties -------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

var_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
cell_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r\n\u2028\u2029\x85"),
                    max_size=20)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(var_names, cell_text, min_size=1, max_size=6))
def test_keyvalue_round_trips_any_pairs(pairs):
    payload = "\n".join(f"{k}={v}" for k, v in pairs.items()).encode()
    expected = {k: v.strip() for k, v in pairs.items()}
    assert parse(payload, format="keyvalue") == expected


@settings(max_examples=50, deadline=None)
@given(st.lists(cell_text, min_size=1, max_size=5))
def test_csv_round_trips_any_row_written_by_the_csv_module(row):
    import csv
    import io

    out = io.StringIO()
    csv.writer(out).writerows([[f"h{i}" for i in range(len(row))], row])
    fields = {f"v{i}": f"h{i}" for i in range(len(row))}
    got = parse(out.getvalue().encode(), format="csv", fields=fields)
    assert got == {f"v{i}": cell for i, cell in enumerate(row)}
