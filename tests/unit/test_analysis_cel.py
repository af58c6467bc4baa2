"""Analysis conditions in CEL: compile errors that point at the problem, numbers that behave, helpers, the sandbox."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.cel import MAX_SOURCE_LENGTH, ConditionError, EvaluationError, compile_condition


@pytest.fixture(autouse=True, scope="module")
def cel_parser_built() -> None:
    """cel-python raises the recursion limit when it first builds its parser; hypothesis warns if that happens
    inside one of its tests, so build it before any test runs."""
    compile_condition("result")


def holds(source: str, result: object) -> bool:
    return compile_condition(source, field="successCondition").evaluate(result)


def evaluation_error(source: str, result: object) -> str:
    with pytest.raises(EvaluationError) as caught:
        holds(source, result)
    return str(caught.value)


def compile_error(source: str) -> str:
    with pytest.raises(ConditionError) as caught:
        compile_condition(source, field="successCondition")
    return str(caught.value)


# -- compiling -----------------------------------------------------------------------------------------------------


def test_syntax_error_names_field_quotes_source_and_points_at_the_end() -> None:
    assert compile_error("result >= ") == (
        'successCondition "result >= ": syntax error at column 10: unexpected end of condition (expected a value)'
    )


def test_syntax_error_names_the_unexpected_token_and_its_column() -> None:
    assert compile_error("result >=> 1") == (
        'successCondition "result >=> 1": syntax error at column 10: unexpected \'>\' (expected a value)'
    )


def test_unclosed_bracket_says_which_bracket_is_expected() -> None:
    assert compile_error("result[0 < 1").endswith("unexpected end of condition (expected ']')")
    assert compile_error("(result > 1").endswith("(expected ')')")


def test_unexpected_character_and_unterminated_string_are_named() -> None:
    assert compile_error("result $ 1").endswith("syntax error at column 8: unexpected character '$'")
    assert compile_error("result == 'ok").endswith("syntax error at column 11: unterminated string")


def test_syntax_error_in_a_multiline_condition_gives_line_and_column() -> None:
    message = compile_error("result[0] > 0\n&& result[0] <")
    assert "syntax error at line 2, column 15" in message
    assert "\n" not in message


def test_empty_condition_is_rejected() -> None:
    assert compile_error("  ") == "successCondition is empty"


def test_overlong_condition_is_rejected_before_parsing() -> None:
    source = "result > 1 || " * 200 + "true"
    assert len(source) > MAX_SOURCE_LENGTH
    assert compile_error(source) == (
        f"successCondition is {len(source)} characters long; at most {MAX_SOURCE_LENGTH} are allowed"
    )


def test_deeply_nested_condition_is_rejected_not_a_recursion_error() -> None:
    assert compile_error("(" * 60 + "result" + ")" * 60 + " > 1").endswith(": nested too deeply")
    assert compile_error("(" * 400 + "result" + ")" * 400 + " > 1").endswith(": nested too deeply")


def test_long_message_source_is_shortened() -> None:
    message = compile_error("result[0] > 0.5 && result[1] > 0.5 && result[2] > 0.5 && result[3] > 0.5 && bar && foo")
    assert message.startswith('successCondition "result[0] > 0.5 && result[1] > 0.5 && result[2] > 0.5')
    assert '..."' in message


def test_compiled_conditions_are_cached() -> None:
    assert compile_condition("result < 0.5") is compile_condition("result < 0.5")


# -- the sandbox ---------------------------------------------------------------------------------------------------


def test_unknown_variable_is_rejected_when_compiling() -> None:
    assert compile_error("reslt > 0.9") == (
        "successCondition \"reslt > 0.9\": unknown name 'reslt' (a condition sees only 'result')"
    )


def test_unknown_functions_and_methods_are_rejected_when_compiling() -> None:
    assert compile_error("__import__('os').system('true')").endswith("unknown function '__import__'")
    assert compile_error("result.count(1) == 1").endswith("unknown function 'count'")
    assert compile_error("eval('1') == 1").endswith("unknown function 'eval'")


def test_package_names_and_message_construction_are_rejected() -> None:
    assert "unknown name 'google'" in compile_error("google.protobuf.Int32Value{value: 1} == 1")
    assert "not available" in compile_error(".result > 1")


def test_python_attributes_are_not_reachable() -> None:
    assert evaluation_error("result.__class__ == 1", 1.0) == "double has no fields"
    assert evaluation_error("result.__class__ == 1", {"a": 1}).startswith("no key '__class__' in map")


def test_macro_variables_and_type_names_are_known() -> None:
    assert holds("result.all(x, x < 3) && result.exists(y, y == 2)", [1, 2])
    assert holds("type(result) == list", [])


# -- numbers -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "result"), [
    ("result >= 0.99", 0.995),
    ("result >= 1", 1.5),  # double result, int literal
    ("result < 500", 499.5),
    ("500 > result", 499.5),  # int literal on the left
    ("result == 1", 1.0),
    ("result != 2", 1.0),
    ("result == 1.0", 1),  # int result, double literal
    ("result < 0.5", 0),
    ("result[0] < 500", [0.12]),
    ("result * 100 < 5", 0.01),  # arithmetic mixes too
    ("result + 1 == 2.5", 1.5),
    ("result / 2 == 0.25", 0.5),
    ("result / 2 == 2", 5),  # int division stays integral, as in CEL
])
def test_ints_and_doubles_compare_and_combine_as_numbers(source: str, result: object) -> None:
    assert holds(source, result)


def test_division_by_zero_is_infinite_for_doubles_and_an_error_for_ints() -> None:
    assert holds("isInf(result / 0)", 1.0)
    assert holds("isNaN(result / 0)", 0.0)
    assert evaluation_error("result / 0 > 1", 1) == "division by zero"


def test_integer_overflow_is_an_error() -> None:
    assert evaluation_error("result + 1 > 0", 2**63 - 1) == "integer overflow in +"


def test_integers_beyond_int64_become_doubles() -> None:
    assert holds("result > 1.0e20", 2**70)


def test_nan_compares_false_and_infinity_compares_as_infinity() -> None:
    assert not holds("result < 0.05", math.nan)
    assert not holds("result >= 0.05", math.nan)
    assert holds("result > 1000000", math.inf)
    assert holds("result < 0", -math.inf)


def test_comparing_a_list_with_a_number_suggests_indexing() -> None:
    assert evaluation_error("result >= 0.99", [0.5]) == (
        "cannot compare list with double (result is a list: use result[0])"
    )


def test_comparing_unrelated_types_is_an_error() -> None:
    assert evaluation_error("result > 'a'", 5) == "cannot compare int with string"
    assert evaluation_error("true == 1", 0) == "cannot compare bool with int"
    assert evaluation_error("[1] < [2]", 0) == "cannot compare list with list"


def test_null_equals_only_null() -> None:
    assert holds("result == null", None)
    assert holds("result != null && result > 0.5", 0.7)
    assert evaluation_error("result > 0.5", None) == "cannot compare null with double"


# -- structure -----------------------------------------------------------------------------------------------------


def test_index_out_of_range_is_an_evaluation_error() -> None:
    assert evaluation_error("result[0] < 1", []) == "index 0 out of range (the list has 0 elements)"
    assert evaluation_error("result[-1] < 1", [0.5]) == "index -1 out of range (the list has 1 element)"


def test_missing_map_key_names_the_key() -> None:
    assert evaluation_error("result['latency'] < 1", {"errors": 0}) == "no key 'latency' in map (keys: errors)"
    assert evaluation_error("result.latency < 1", {"errors": 0}) == "no key 'latency' in map"


def test_nested_json_results_are_reachable() -> None:
    result = {"data": {"checks": [{"name": "db", "ok": True}, {"name": "cache", "ok": True}]}, "version": "1.2"}
    assert holds("result.data.checks.all(c, c.ok) && result.version.startsWith('1.')", result)
    assert holds("has(result.data) && !has(result.errors)", result)
    assert holds("size(result.data.checks) == 2 && result.data.checks[1].name == 'cache'", result)


def test_standard_macros_work() -> None:
    assert holds("result.exists_one(x, x > 2)", [1, 2, 3])
    assert holds("result.filter(x, x > 1).size() == 2", [1, 2, 3])
    assert holds("result.map(x, x * 2)[2] == 6", [1, 2, 3])
    assert holds("'a' in result && result.a == 1", {"a": 1})


def test_macro_over_a_number_says_it_needs_a_list() -> None:
    assert evaluation_error("result.all(x, x > 0)", 1.0) == (
        "all, exists, exists_one, map and filter need a list or map, got double"
    )


def test_condition_must_evaluate_to_a_bool() -> None:
    assert evaluation_error("result", 0.5) == "the condition must be true or false, got double 0.5"
    assert evaluation_error("result[0] + 1", [1]) == "the condition must be true or false, got int 2"


def test_strings_and_bools_are_results_too() -> None:
    assert holds("result == 'ok'", "ok")
    assert holds("result.matches('^2[0-9]{2}$')", "204")
    assert holds("result", True)


def test_result_of_an_unsupported_type_is_an_evaluation_error() -> None:
    assert evaluation_error("result > 0", object()) == "result of type object cannot be used in a condition"


def test_errors_short_circuit_as_in_cel() -> None:
    assert holds("result.missing > 1 || true", {})
    assert not holds("result.missing > 1 && false", {})


def test_expensive_evaluation_is_stopped() -> None:
    big = "[" + ",".join(["1"] * 200) + "]"
    message = evaluation_error(f"{big}.all(a, {big}.all(b, {big}.all(c, true)))", 0)
    assert message.startswith("too expensive: stopped after")


# -- helpers -------------------------------------------------------------------------------------------------------


def test_is_nan_and_is_inf_test_numbers() -> None:
    assert holds("isNaN(result)", math.nan)
    assert not holds("isNaN(result)", 0.5)
    assert not holds("isNaN(result)", 1)
    assert holds("isInf(result[0]) && isInf(result[1])", [math.inf, -math.inf])
    assert not holds("isInf(result)", 1e308)
    assert holds("!isNaN(result[0]) && result[0] < 0.05", [0.01])


def test_is_nan_of_a_list_suggests_indexing() -> None:
    assert evaluation_error("isNaN(result)", [1.0]) == (
        "isNaN expects a number, got list (result is a list: use result[0])"
    )


@pytest.mark.parametrize(("result", "empty"), [
    (None, True), ([], True), ({}, True), ("", True), ([0.1], False), ({"a": 1}, False), ("x", False),
])
def test_is_empty_is_true_for_null_and_empty_collections(result: object, empty: bool) -> None:
    assert holds("isEmpty(result)", result) is empty


def test_is_empty_of_a_number_is_an_error() -> None:
    assert evaluation_error("isEmpty(result)", 1.0) == "isEmpty expects a list, map or string, got double"


@pytest.mark.parametrize(("result", "expected"), [(None, True), (math.nan, True), (0.5, False), (5, False)])
def test_default_replaces_null_and_nan(result: object, expected: bool) -> None:
    assert holds("default(result, 0.0) == 0.0", result) is expected


def test_default_works_as_a_method_too() -> None:
    assert holds("result.default(1) < 2", None)


# -- robustness ----------------------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
PIECES = st.sampled_from([
    "result", "result[0]", "result.a", "1", "0.5", "-2", "'a'", "null", "true", "[1, 2.5]", "{'a': 1}", "(", ")",
    "[", "]", " < ", " >= ", " == ", " != ", " + ", " / ", " % ", " && ", " || ", "!", "-", ".", ",", "?", ":",
    "size(result)", "isNaN(", "isEmpty(", "default(", "has(result.a)", ".all(x, ", ".exists(x, x > 0)", "x", "'",
])


def attempt(source: str, result: object) -> bool | str:
    """The condition's verdict, or the message of the ConditionError or EvaluationError it raised."""
    try:
        condition = compile_condition(source)
    except ConditionError as error:
        return str(error)
    try:
        return condition.evaluate(result)
    except EvaluationError as error:
        return str(error)


@settings(max_examples=400, deadline=None)
@given(source=st.lists(PIECES, min_size=1, max_size=8).map("".join), result=JSON)
def test_any_condition_gives_a_verdict_or_a_one_line_message_in_cel_words(source: str, result: object) -> None:
    outcome = attempt(source, result)
    if isinstance(outcome, str):
        assert outcome
        assert "\n" not in outcome
        assert not any(python in outcome for python in ("celpy", "<class", "Type(", "Traceback"))
