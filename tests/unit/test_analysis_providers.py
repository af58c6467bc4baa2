"""Metric providers without I/O: how a Prometheus query result becomes an Outcome, how a web answer is picked by
jsonPath, what validate_config says about bad provider blocks, the registry, and the JSONPath subset (including a
property: a path built into a random document parses back and finds the value it was built for).

The providers talking to real HTTP servers are in tests/integration/test_web_provider.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analysis import jsonpath
from analysis.jsonpath import Index, JsonPathError, Key, Segment
from analysis.providers import (
    Failure,
    NoData,
    Value,
    clip,
    connection_error_reason,
    make_provider,
    provider_names,
    safe_url,
    validate_config,
)
from analysis.providers.prometheus import NOT_A_NUMBER, PrometheusProvider, describe_status_error, interpret
from analysis.providers.web import WebProvider, pick


def sample(value: str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1700000000.123, value]}


# -- Prometheus results -------------------------------------------------------------------------------------------


def test_instant_vector_becomes_a_list_of_floats() -> None:
    assert interpret([sample("0.97", pod="a")]) == Value([0.97], display="[0.97]")


def test_instant_vector_is_ordered_by_label_set_whatever_order_prometheus_used() -> None:
    forwards = interpret([sample("1", pod="a"), sample("2", pod="b"), sample("3", pod="c")])
    backwards = interpret([sample("3", pod="c"), sample("1", pod="a"), sample("2", pod="b")])
    assert forwards == backwards == Value([1.0, 2.0, 3.0], display="[1, 2, 3]")


def test_vector_sample_without_labels_sorts_first() -> None:
    assert interpret([sample("2", job="x"), {"value": [1, "1"]}]) == Value([1.0, 2.0], display="[1, 2]")


def test_scalar_becomes_a_float() -> None:
    assert interpret([1700000000.5, "0.25"]) == Value(0.25, display="0.25")


def test_integer_timestamp_scalar_is_still_a_scalar() -> None:
    assert interpret([1700000000, "3"]) == Value(3.0, display="3")


@pytest.mark.parametrize(("text", "expected", "display"), [
    ("+Inf", math.inf, "+Inf"), ("-Inf", -math.inf, "-Inf"), ("1e-05", 1e-05, "1e-05"), ("-0.5", -0.5, "-0.5"),
])
def test_special_and_small_floats_are_values(text: str, expected: float, display: str) -> None:
    assert interpret([1.0, text]) == Value(expected, display=display)
    assert interpret([sample(text)]) == Value([expected], display=f"[{display}]")


def test_empty_vector_is_no_data() -> None:
    assert interpret([]) == NoData("the query returned no samples")


def test_scalar_nan_is_no_data() -> None:
    assert interpret([1.0, "NaN"]) == NoData("the query returned NaN (e.g. 0/0: no traffic)")


def test_vector_of_only_nan_is_no_data() -> None:
    assert interpret([sample("NaN", pod="a"), sample("NaN", pod="b")]) == NoData(
        "the query returned NaN (e.g. 0/0: no traffic)")


def test_vector_with_any_nan_is_no_data() -> None:
    # NaN compares false with everything: kept as a value, `failureCondition: result[0] > 0.05` would pass it.
    assert interpret([sample("NaN", pod="a"), sample("0.5", pod="b")]) == NoData(NOT_A_NUMBER)


def test_string_result_is_unsupported() -> None:
    outcome = interpret([1.0, "hello"])
    assert isinstance(outcome, Failure)
    assert outcome.message.startswith("unsupported result type string")
    assert "'hello'" in outcome.message


def test_matrix_is_refused_with_a_hint_to_use_an_instant_query() -> None:
    outcome = interpret([{"metric": {"pod": "a"}, "values": [[1, "1"], [2, "2"]]}])
    assert isinstance(outcome, Failure)
    assert "range vector (matrix)" in outcome.message and "instant query" in outcome.message


def test_native_histogram_is_refused() -> None:
    outcome = interpret([{"metric": {}, "histogram": [1, {"count": "3", "sum": "1", "buckets": []}]}])
    assert isinstance(outcome, Failure) and "native histogram" in outcome.message


@pytest.mark.parametrize("result", [
    None, {"resultType": "vector"}, "0.5", [1.0], [1.0, 2.0, 3.0], [True, "1"], [1.0, 0.5], [sample("1"), 3],
])
def test_unexpected_shapes_fail_showing_what_came(result: object) -> None:
    outcome = interpret(result)
    assert isinstance(outcome, Failure)
    assert outcome.message.startswith("unexpected result from Prometheus: ")


@pytest.mark.parametrize("bad_sample", [
    {"metric": {}, "value": [1, "not a number"]}, {"metric": {}, "value": "1"}, {"metric": {}},
    {"metric": {}, "value": [1, 2]},
])
def test_malformed_vector_sample_fails(bad_sample: dict[str, Any]) -> None:
    outcome = interpret([sample("1", pod="a"), bad_sample])
    assert isinstance(outcome, Failure) and outcome.message.startswith("unexpected sample from Prometheus: ")


def test_display_of_a_long_vector_is_cut_to_256_characters() -> None:
    outcome = interpret([sample(str(i / 7), i=f"{i:04}") for i in range(200)])
    assert isinstance(outcome, Value) and isinstance(outcome.value, list) and len(outcome.value) == 200
    assert len(outcome.display) == 256 and outcome.display.endswith("…")


# -- Prometheus error answers -------------------------------------------------------------------------------------


def test_status_error_shows_prometheus_error_type_and_message() -> None:
    body = b'{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected \\"}\\""}'
    exc = Exception(f"HTTP Status Code 400 ({body!r})")
    assert describe_status_error(exc) == 'answered HTTP 400: bad_data: 1:5: parse error: unexpected "}"'


def test_status_error_with_a_non_json_body_shows_its_beginning() -> None:
    body = b"<html>" + b"x" * 500 + b"'quoted'</html>"
    message = describe_status_error(Exception(f"HTTP Status Code 502 ({body!r})"))
    assert message.startswith("answered HTTP 502: <html>xxx") and len(message) < 240


def test_status_error_with_an_empty_body_says_so() -> None:
    assert describe_status_error(Exception("HTTP Status Code 503 (b'')")) == "answered HTTP 503: (empty body)"


def test_status_error_in_an_unknown_format_is_shown_as_is() -> None:
    assert describe_status_error(Exception("something else")) == "answered with an error: something else"


# -- web answers --------------------------------------------------------------------------------------------------


def test_web_answer_without_json_path_is_the_whole_document() -> None:
    assert pick({"ok": True, "n": [1, 2]}, None) == Value({"ok": True, "n": [1, 2]}, display='{"ok":true,"n":[1,2]}')


def test_web_answer_value_at_json_path() -> None:
    assert pick({"data": {"ratio": 0.99}}, "$.data.ratio") == Value(0.99, display="0.99")


def test_web_answer_null_at_json_path_is_no_data() -> None:
    assert pick({"data": {"ratio": None}}, "$.data.ratio") == NoData("jsonPath $.data.ratio is null")


def test_web_answer_null_document_is_no_data() -> None:
    assert pick(None, None) == NoData("the response is JSON null")


def test_web_answer_missing_key_fails_naming_where() -> None:
    assert pick({"x": {"z": 1}}, "$.x.y") == Failure("jsonPath $.x.y: no key 'y' at $.x")


# -- validate_config ----------------------------------------------------------------------------------------------


def test_valid_prometheus_block_has_no_problems() -> None:
    assert validate_config("prometheus", {"address": "http://prometheus.monitoring:9090", "query": "up"}) == []


def test_prometheus_block_problems_name_their_fields() -> None:
    assert validate_config("prometheus", {}) == ["prometheus.address: required", "prometheus.query: required"]
    assert validate_config("prometheus", {"address": "prometheus:9090", "query": "  "}) == [
        "prometheus.address: must be an http:// or https:// URL with a host, got 'prometheus:9090'",
        "prometheus.query: must not be empty",
    ]
    assert validate_config("prometheus", {"address": 9090, "query": ["up"]}) == [
        "prometheus.address: must be a string, got int", "prometheus.query: must be a string, got list"]


def test_url_with_a_bad_port_is_a_problem() -> None:
    assert validate_config("prometheus", {"address": "http://p:99999", "query": "up"}) == [
        "prometheus.address: not a valid URL (Port out of range 0-65535)"]


def test_problem_messages_hide_url_passwords() -> None:
    (problem,) = validate_config("web", {"url": "ftp://me:hunter2@host/x"})
    assert "hunter2" not in problem and "me:***@host" in problem


def test_valid_web_blocks_have_no_problems() -> None:
    assert validate_config("web", {"url": "https://example.test/ok"}) == []
    assert validate_config("web", {"url": "https://example.test/ok", "jsonPath": ""}) == []
    assert validate_config("web", {"url": "http://svc/q", "method": "POST", "body": {"q": [1, {"a": None}]},
                                   "jsonPath": "{$.data.ok}"}) == []


def test_web_block_problems_name_their_fields() -> None:
    assert validate_config("web", {"method": "PUT", "jsonPath": "$.a[", "body": 3}) == [
        "web.url: required",
        "web.method: must be GET or POST, got 'PUT'",
        "web.body: must be a string or a JSON object, got int",
        "web.jsonPath: invalid jsonPath '$.a[': expected a quoted name or an integer index after '[', "
        "found the end at position 4",
    ]


def test_web_body_needs_post() -> None:
    assert validate_config("web", {"url": "http://svc/", "body": "x"}) == ["web.body: only allowed with method POST"]


def test_web_body_object_must_be_json() -> None:
    (problem,) = validate_config("web", {"url": "http://svc/", "method": "POST", "body": {"x": math.nan}})
    assert problem.startswith("web.body: not JSON")


def test_unknown_provider_kind_is_a_problem_naming_the_known_ones() -> None:
    assert validate_config("datadog", {}) == ["unknown metric provider 'datadog' (known: prometheus, web)"]


# -- registry -----------------------------------------------------------------------------------------------------


def test_registry_knows_prometheus_and_web() -> None:
    assert provider_names() == ("prometheus", "web")


async def test_make_provider_builds_each_kind() -> None:
    prometheus, web = make_provider("prometheus"), make_provider("web")
    assert isinstance(prometheus, PrometheusProvider) and isinstance(web, WebProvider)
    await prometheus.close()
    await web.close()


def test_make_provider_refuses_an_unknown_kind_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown metric provider 'datadog' \(known: prometheus, web\)"):
        make_provider("datadog")


async def test_measure_with_an_invalid_block_fails_without_asking_anyone() -> None:
    provider = WebProvider()
    try:
        assert await provider.measure({"url": "nope"}, headers={}, timeout=1) == Failure(
            "web.url: must be an http:// or https:// URL with a host, got 'nope'")
    finally:
        await provider.close()


# -- helpers ------------------------------------------------------------------------------------------------------


def test_clip_keeps_short_text_and_cuts_long_text_on_one_line() -> None:
    assert clip("a\n  b") == "a b"
    assert clip("x" * 300, 10) == "x" * 9 + "…"


def test_safe_url_masks_only_the_password() -> None:
    assert safe_url("http://u:p@h:1/x?q=1") == "http://u:***@h:1/x?q=1"
    assert safe_url("http://h/x") == "http://h/x"


def test_connection_error_reason_finds_the_os_error_inside_wrappers() -> None:
    class Wrapper(Exception):
        def __init__(self, reason: BaseException) -> None:
            super().__init__("wrapped")
            self.reason = reason

    try:
        raise Wrapper(ConnectionRefusedError(111, "Connection refused"))
    except Wrapper as exc:
        wrapped = exc
    assert connection_error_reason(Exception(wrapped)) == "connection refused"
    assert connection_error_reason(Exception(OSError(113, "No route to host"))) == "no route to host"
    assert connection_error_reason(Exception("plain")) == "plain"


# -- JSONPath -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "segments"), [
    ("$", ()),
    ("$.data.ratio", (Key("data"), Key("ratio"))),
    ("$['a b'][\"c'd\"]", (Key("a b"), Key("c'd"))),
    ("$.items[0].values[-1]", (Key("items"), Index(0), Key("values"), Index(-1))),
    ("{$.data.ok}", (Key("data"), Key("ok"))),
    ("{$}", ()),
    ("$.p-99_ms", (Key("p-99_ms"),)),
    ("$['it\\'s']['back\\\\slash']['']", (Key("it's"), Key("back\\slash"), Key(""))),
])
def test_jsonpath_parses(path: str, segments: tuple[Segment, ...]) -> None:
    assert jsonpath.parse(path) == segments


@pytest.mark.parametrize(("path", "message"), [
    ("", "invalid jsonPath '': expected '$' (paths start at the document root, e.g. $.data.ratio) at position 0"),
    ("data.ok", "expected '$'"),
    (".data", "expected '$'"),
    ("$.", "expected a name after '.', found the end (quote other names: ['a name']) at position 2"),
    ("$.a b", "expected '.' or '[', found ' ' at position 3"),
    ("$..a", "recursive descent '..' is not supported at position 1"),
    ("$.*", "wildcards are not supported at position 2"),
    ("$[*]", "wildcards are not supported at position 2"),
    ("$[?(@.a)]", "filter expressions are not supported at position 2"),
    ("$[0:2]", "slices are not supported at position 3"),
    ("$[0,1]", "unions are not supported at position 3"),
    ("$[-]", "expected digits after '-' at position 3"),
    ("$[a]", "expected a quoted name or an integer index after '[', found 'a' at position 2"),
    ("$['a'", "expected ']', found the end at position 5"),
    ("$['a", "unterminated quoted name (opened with ' at position 2) at position 4"),
    ("$['a\\n']", "unsupported escape"),
    ("{$.a", "'{' without a closing '}' at position 4"),
    ("{$.a}}", "expected '.' or '[', found '}' at position 4"),
    ("$.a}", "expected '.' or '[', found '}' at position 3"),
])
def test_jsonpath_syntax_errors_say_what_and_where(path: str, message: str) -> None:
    with pytest.raises(JsonPathError) as raised:
        jsonpath.parse(path)
    assert message in str(raised.value)


DOCUMENT = {"data": {"ratio": 0.5, "list": [10, 20, {"deep": "yes"}], "none": None}, "text": "abc"}


@pytest.mark.parametrize(("path", "expected"), [
    ("$", DOCUMENT), ("$.data.ratio", 0.5), ("$.data.list[-1].deep", "yes"), ("$['data']['list'][1]", 20),
    ("$.data.none", None),
])
def test_jsonpath_extracts(path: str, expected: object) -> None:
    assert jsonpath.extract(DOCUMENT, path) == expected


@pytest.mark.parametrize(("path", "message"), [
    ("$.data.missing", "jsonPath $.data.missing: no key 'missing' at $.data"),
    ("$.text.length", "jsonPath $.text.length: no key 'length' at $.text: it is a string"),
    ("$.data.none.x", "jsonPath $.data.none.x: no key 'x' at $.data.none: it is null"),
    ("$.data.list[3]", "jsonPath $.data.list[3]: index 3 out of range at $.data.list (length 3)"),
    ("$.data.list[-4]", "jsonPath $.data.list[-4]: index -4 out of range at $.data.list (length 3)"),
    ("$.data[0]", "jsonPath $.data[0]: no index 0 at $.data: it is an object"),
    ("$.text[0]", "jsonPath $.text[0]: no index 0 at $.text: it is a string"),
    ("{$.data.list[0].x}", "jsonPath {$.data.list[0].x}: no key 'x' at $.data.list[0]: it is a number"),
])
def test_jsonpath_names_the_first_segment_that_does_not_match(path: str, message: str) -> None:
    with pytest.raises(JsonPathError) as raised:
        jsonpath.extract(DOCUMENT, path)
    assert str(raised.value) == message


json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)


@st.composite
def documents_with_a_path(draw: st.DrawFn) -> tuple[object, tuple[Segment, ...], object]:
    """A random nested document, a path into it, and the value at the end of that path."""
    leaf = draw(json_leaves | st.lists(json_leaves, max_size=3) | st.dictionaries(st.text(max_size=5), json_leaves))
    document: object = leaf
    segments: list[Segment] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            key = draw(st.text(max_size=10))
            siblings: dict[str, object] = draw(st.dictionaries(st.text(max_size=10), json_leaves, max_size=3))
            document = {**siblings, key: document}  # the path's key last, replacing a sibling of the same name
            segments.insert(0, Key(key))
        else:
            before = draw(st.lists(json_leaves, max_size=3))
            after = draw(st.lists(json_leaves, max_size=3))
            container = [*before, document, *after]
            negative = draw(st.booleans())
            segments.insert(0, Index(len(before) - len(container) if negative else len(before)))
            document = container
    return document, tuple(segments), leaf


@given(documents_with_a_path())
def test_jsonpath_round_trips_and_finds_the_value_it_was_built_for(
        case: tuple[object, tuple[Segment, ...], object]) -> None:
    document, segments, leaf = case
    text = jsonpath.format_path(segments)
    assert jsonpath.parse(text) == segments
    assert jsonpath.parse("{" + text + "}") == segments
    assert jsonpath.extract(document, text) == leaf
    assert jsonpath.extract(document, segments) == leaf


def test_web_nan_is_no_data_not_a_value() -> None:
    assert isinstance(pick({"v": math.nan}, "$.v"), NoData)
