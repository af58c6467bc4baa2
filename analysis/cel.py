"""Analysis conditions (`successCondition`, `failureCondition`) in CEL, evaluated in a sandbox.

A condition is a CEL expression over one variable, `result`: the value a metric provider returned, as plain JSON-like
data (a number, a string, a bool, null, a list, a map). It must evaluate to true or false. Besides standard CEL
(operators, `size`, `has`, the `all`/`exists`/`exists_one`/`map`/`filter` macros, string methods) a condition may call
`isNaN(x)`, `isInf(x)`, `isEmpty(x)` (null, or an empty list, map or string) and `default(x, fallback)` (fallback
when x is null or NaN).

Sandbox: conditions are interpreted by cel-python's tree-walking evaluator, never turned into Python code; every name
is checked when the condition is compiled (only `result`, macro variables, CEL type names and known functions), the
source is at most MAX_SOURCE_LENGTH characters and its nesting is bounded, and one evaluation may take at most
MAX_EVALUATION_STEPS steps.

Numbers behave as users expect rather than as strict CEL: an int and a double compare and combine as doubles, so
`result >= 1` works when a provider returns 1.0, and null equals only null (`result != null` is no error).

analysis/run.py compiles conditions through `compile_condition` (cached) and turns `EvaluationError` into an Error
measurement.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any, cast

import celpy
import lark
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import Activation, CELEvalError, Evaluator, base_functions

MAX_SOURCE_LENGTH = 2048
# Parse-tree depth; about ten levels per nested parenthesis or call. Deeper trees would exhaust Python's stack in
# the recursive evaluator.
MAX_TREE_DEPTH = 250
# One step is one parse-tree node expanded (about 10 us with cel-python 0.5); a macro over a list repeats its body's
# steps for every element, so `result.all(x, x < 0.5)` may look at about 650 elements. The budget bounds how long one
# evaluation can hold the event loop: about 0.1 s.
MAX_EVALUATION_STEPS = 10_000

_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_TYPE_NAMES = frozenset({"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"})
_ORDERED = frozenset({"int", "uint", "double", "string", "bytes", "bool", "timestamp", "duration"})


class ConditionError(ValueError):
    """A condition that cannot be compiled; the message names the field, quotes the source and says why."""


class EvaluationError(ValueError):
    """A condition that compiled but could not be evaluated on this result; the message says why in plain words."""


# -- values --------------------------------------------------------------------------------------------------------


def _to_cel(value: object) -> Any:
    """A provider's plain value as CEL data: JSON numbers, strings, bools, null, lists and string-keyed maps."""
    if value is None:
        return None
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value) if -(2**63) <= value < 2**63 else celtypes.DoubleType(float(value))
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, list | tuple):
        return celtypes.ListType([_to_cel(item) for item in value])
    if isinstance(value, Mapping):
        return celtypes.MapType({celtypes.StringType(str(k)): _to_cel(v) for k, v in value.items()})
    raise EvaluationError(f"result of type {type(value).__name__} cannot be used in a condition")


_KINDS: tuple[tuple[type, str], ...] = (
    (celtypes.BoolType, "bool"), (celtypes.IntType, "int"), (celtypes.UintType, "uint"), (float, "double"),
    (str, "string"), (bytes, "bytes"), (list, "list"), (dict, "map"), (celtypes.TimestampType, "timestamp"),
    (celtypes.DurationType, "duration"), (type, "type"),
)


def _type_name(value: object) -> str:
    """The CEL name of a value's type, for messages."""
    if value is None:
        return "null"
    return next((name for kind, name in _KINDS if isinstance(value, kind)), type(value).__name__.lower())


def _show(value: object) -> str:
    """A value as CEL would write it, shortened: 0.5, "ok", [1, 2.5], {"a": 1}, null, true, list."""
    if isinstance(value, type):  # type(result) == list: the value is a type
        return next((name for kind, name in _KINDS if issubclass(value, kind)), "null_type")
    text = json.dumps(_plain(value), default=str, allow_nan=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _plain(value: object) -> object:
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bytes | celtypes.TimestampType | celtypes.DurationType):
        return str(value)
    return value


# -- operators: numbers promote, errors read well ---------------------------------------------------------------------


def _fail(message: str) -> CELEvalError:
    return CELEvalError(message)


def _promote(a: Any, b: Any) -> tuple[Any, Any]:
    """int with double -> both double (bools are not numbers here)."""
    if isinstance(a, float) and not isinstance(a, celtypes.DoubleType):
        a = celtypes.DoubleType(a)
    if isinstance(b, float) and not isinstance(b, celtypes.DoubleType):
        b = celtypes.DoubleType(b)
    integers = (celtypes.IntType, celtypes.UintType)
    if isinstance(a, celtypes.DoubleType) and isinstance(b, integers):
        return a, celtypes.DoubleType(b)
    if isinstance(b, celtypes.DoubleType) and isinstance(a, integers):
        return celtypes.DoubleType(a), b
    return a, b


def _relation(symbol: str, compare: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        if isinstance(a, CELEvalError):
            return a
        if isinstance(b, CELEvalError):
            return b
        if symbol in ("==", "!=") and (a is None or b is None):
            return celtypes.BoolType((a is None and b is None) == (symbol == "=="))
        a, b = _promote(a, b)
        kind = _type_name(a)
        if kind != _type_name(b) or (symbol not in ("==", "!=") and kind not in _ORDERED):
            return _fail(f"cannot compare {kind} with {_type_name(b)}")
        try:
            outcome = compare(a, b)
        except TypeError:
            outcome = NotImplemented
        if outcome is NotImplemented:
            return _fail(f"cannot compare {kind} with {_type_name(b)}")
        return celtypes.BoolType(bool(outcome))

    return apply


def _divide_doubles(a: float, b: float) -> float:
    """IEEE division: x/0.0 is +-Inf, 0.0/0.0 is NaN (cel-python would answer +Inf for all three)."""
    if b != 0.0:
        return a / b
    if a == 0.0 or math.isnan(a):
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _arithmetic(symbol: str, compute: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        if isinstance(a, CELEvalError):
            return a
        if isinstance(b, CELEvalError):
            return b
        a, b = _promote(a, b)
        kind, other = _type_name(a), _type_name(b)
        if (kind != other and {kind, other} != {"timestamp", "duration"}) or kind in ("null", "bool", "map"):
            return _fail(f"cannot apply {symbol} to {kind} and {other}")
        if kind == "double":
            if symbol == "%":
                return _fail("cannot apply % to double")
            if symbol == "/":
                return celtypes.DoubleType(_divide_doubles(a, b))
            return celtypes.DoubleType(compute(float(a), float(b)))
        try:
            outcome = compute(a, b)
        except ZeroDivisionError:
            return _fail("division by zero")
        except (ValueError, OverflowError):
            return _fail(f"integer overflow in {symbol}")
        except TypeError:
            return _fail(f"cannot apply {symbol} to {kind} and {other}")
        if isinstance(outcome, str):
            return celtypes.StringType(outcome)
        return celtypes.ListType(outcome) if isinstance(outcome, list) else outcome

    return apply


def _negate(value: Any) -> Any:
    if isinstance(value, CELEvalError):
        return value
    if isinstance(value, celtypes.IntType | celtypes.DoubleType):
        return -value
    return _fail(f"cannot negate {_type_name(value)}")


def _not(value: Any) -> Any:
    if isinstance(value, CELEvalError):
        return value
    if isinstance(value, celtypes.BoolType):
        return celtypes.BoolType(not value)
    return _fail(f"cannot apply ! to {_type_name(value)}")


def _index(container: Any, key: Any) -> Any:
    if isinstance(container, CELEvalError):
        return container
    if isinstance(key, CELEvalError):
        return key
    if isinstance(container, list):
        if not isinstance(key, celtypes.IntType | celtypes.UintType):
            return _fail(f"a list index must be an int, not {_type_name(key)}")
        if not 0 <= key < len(container):
            size = len(container)
            return _fail(f"index {key} out of range (the list has {size} element{'' if size == 1 else 's'})")
        return container[key]
    if isinstance(container, dict):
        if key not in container:
            keys = ", ".join(str(k) for k in list(container)[:5]) + (", ..." if len(container) > 5 else "")
            shown = f"'{key}'" if isinstance(key, str) else _show(key)
            return _fail(f"no key {shown} in map (keys: {keys or 'none'})")
        return container[key]
    return _fail(f"cannot index {_type_name(container)}")


# -- helper functions ---------------------------------------------------------------------------------------------


def _number_test(name: str, test: Callable[[float], bool]) -> Callable[[Any], Any]:
    def apply(value: Any) -> Any:
        if isinstance(value, float):
            return celtypes.BoolType(test(value))
        if isinstance(value, celtypes.IntType | celtypes.UintType):
            return celtypes.BoolType(False)
        return _fail(f"{name} expects a number, got {_type_name(value)}")

    return apply


def _is_empty(value: Any) -> Any:
    if value is None:
        return celtypes.BoolType(True)
    if isinstance(value, str | bytes | list | dict):
        return celtypes.BoolType(len(value) == 0)
    return _fail(f"isEmpty expects a list, map or string, got {_type_name(value)}")


def _default(value: Any, fallback: Any) -> Any:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return fallback if missing else value


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "_==_": _relation("==", operator.eq),
    "_!=_": _relation("!=", operator.ne),
    "_<_": _relation("<", operator.lt),
    "_<=_": _relation("<=", operator.le),
    "_>_": _relation(">", operator.gt),
    "_>=_": _relation(">=", operator.ge),
    "_+_": _arithmetic("+", operator.add),
    "_-_": _arithmetic("-", operator.sub),
    "_*_": _arithmetic("*", operator.mul),
    "_/_": _arithmetic("/", operator.truediv),
    "_%_": _arithmetic("%", operator.mod),
    "-_": _negate,
    "!_": _not,
    "_[_]": _index,
    "isNaN": _number_test("isNaN", math.isnan),
    "isInf": _number_test("isInf", math.isinf),
    "isEmpty": _is_empty,
    "default": _default,
}
_CALLABLE = frozenset(name for name in [*base_functions, *_FUNCTIONS] if name.isidentifier()) | {"has"}


# -- compiling ----------------------------------------------------------------------------------------------------


@functools.cache
def _environment() -> celpy.Environment:
    # Building the parser costs tens of milliseconds: once per process. (Note: celpy raises the recursion limit.)
    return celpy.Environment()


def _label(field: str, source: str) -> str:
    return f'{field} "{_excerpt(source)}"'


def _excerpt(source: str, limit: int = 80) -> str:
    if "\n" not in source and len(source) <= limit:
        return source
    flat = " ".join(source.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


_TOKEN_TEXT = {"RPAR": "')'", "RSQB": "']'", "RBRACE": "'}'", "COLON": "':'", "COMMA": "','", "QMARK": "'?'"}
_VALUE_START = frozenset({"IDENT", "INT_LIT", "FLOAT_LIT", "STRING_LIT", "BOOL_LIT", "NULL_LIT"})


def _syntax_error(source: str, error: CELParseError) -> str:
    """cel-python's error is the source line and a caret; lark, underneath, knows what it found and expected."""
    cause = error.__context__
    token = getattr(cause, "token", None)
    expected = set(getattr(cause, "expected", None) or ())
    line, column = error.line or 1, error.column or 1
    if isinstance(cause, lark.exceptions.UnexpectedCharacters):
        lines = source.splitlines() or [""]
        text = lines[min(line, len(lines)) - 1]
        char = text[column - 1] if 0 < column <= len(text) else "?"
        what = "unterminated string" if char in "'\"" else f"unexpected character {char!r}"
    elif token is not None and token.type == "$END":
        what = "unexpected end of condition"
        rest = source.rstrip()
        line, column = rest.count("\n") + 1, len(rest.split("\n")[-1]) + 1
    else:
        what = f"unexpected {str(token)!r}" if token is not None else "syntax error"
    if expected & _VALUE_START:
        what += " (expected a value)"
    elif expected and expected <= _TOKEN_TEXT.keys():
        what += f" (expected {' or '.join(sorted(_TOKEN_TEXT[t] for t in expected))})"
    where = f"column {column}" if "\n" not in source.strip() else f"line {line}, column {column}"
    return f"syntax error at {where}: {what}"


def _tree_depth(tree: lark.Tree[Any]) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, lark.Tree))
    return deepest


def _name_problem(tree: lark.Tree[Any]) -> str | None:
    """Reject, at compile time, every name a condition cannot resolve: typos fail before the first measurement."""
    bound = {"result"} | _TYPE_NAMES
    for node in tree.find_data("member_dot_arg"):  # macro variables: result.all(x, x < 1)
        method, args = node.children[1], node.children[2] if len(node.children) > 2 else None
        if str(method) in _MACROS and isinstance(args, lark.Tree) and len(args.children) == 2:
            variable = next(cast(lark.Tree[Any], args.children[0]).find_data("ident"), None)
            if variable is not None:
                bound.add(str(variable.children[0]))
    for node in tree.iter_subtrees():
        if node.data == "ident" and str(node.children[0]) not in bound:
            return f"unknown name '{node.children[0]}' (a condition sees only 'result')"
        if node.data == "ident_arg" and str(node.children[0]) not in _CALLABLE:
            return f"unknown function '{node.children[0]}'"
        if node.data == "member_dot_arg" and str(node.children[1]) not in _CALLABLE | _MACROS:
            return f"unknown function '{node.children[1]}'"
        if node.data in ("dot_ident", "dot_ident_arg", "member_object"):
            return "package names and message construction are not available in conditions"
    return None


@dataclasses.dataclass(frozen=True)
class Condition:
    source: str
    field: str
    _runner: celpy.Runner = dataclasses.field(repr=False, compare=False)

    @property
    def label(self) -> str:
        """How messages name it: successCondition "result[0] < 0.05" (long sources shortened)."""
        return _label(self.field, self.source)

    def evaluate(self, result: object) -> bool:
        """True or false for this provider result; EvaluationError when the condition cannot be evaluated on it."""
        value = _to_cel(result)
        evaluator = _BoundedEvaluator(self._runner.ast, self._runner.new_activation(), [MAX_EVALUATION_STEPS])
        try:
            outcome = evaluator.evaluate({"result": value})
        except CELEvalError as error:
            raise EvaluationError(_with_hint(_explain(error), value)) from None
        except _TooExpensive:
            raise EvaluationError(f"too expensive: stopped after {MAX_EVALUATION_STEPS} steps") from None
        except RecursionError:
            raise EvaluationError("nested too deeply") from None
        except Exception as error:  # a cel-python corner that raises a Python error instead of a CEL one
            raise EvaluationError(_with_hint(_python_error(error), value)) from None
        if not isinstance(outcome, celtypes.BoolType):
            shown = "" if outcome is None else f" {_show(outcome)}"
            raise EvaluationError(f"the condition must be true or false, got {_type_name(outcome)}{shown}")
        return bool(outcome)


@functools.lru_cache(maxsize=512)
def compile_condition(source: str, *, field: str = "condition") -> Condition:
    """Parse and check a condition once; `field` (successCondition, ...) only names it in error messages."""
    quoted = _label(field, source)
    if not source.strip():
        raise ConditionError(f"{field} is empty")
    if len(source) > MAX_SOURCE_LENGTH:
        raise ConditionError(f"{field} is {len(source)} characters long; at most {MAX_SOURCE_LENGTH} are allowed")
    environment = _environment()
    try:
        ast = environment.compile(source)
    except CELParseError as error:
        raise ConditionError(f"{quoted}: {_syntax_error(source, error)}") from None
    except RecursionError:
        raise ConditionError(f"{quoted}: nested too deeply") from None
    if _tree_depth(ast) > MAX_TREE_DEPTH:
        raise ConditionError(f"{quoted}: nested too deeply")
    problem = _name_problem(ast)
    if problem is not None:
        raise ConditionError(f"{quoted}: {problem}")
    return Condition(source=source, field=field, _runner=environment.program(ast, functions=_FUNCTIONS))


# -- evaluating ---------------------------------------------------------------------------------------------------


class _TooExpensive(Exception):
    """Raised through cel-python (which only catches its own error kinds) when the step budget runs out."""


class _BoundedEvaluator(Evaluator):
    """cel-python's interpreter, counting the tree nodes it expands against a budget shared with macro bodies."""

    def __init__(self, ast: lark.Tree[Any], activation: Activation, budget: list[int]) -> None:
        super().__init__(ast, activation)
        self._budget = budget

    def sub_evaluator(self, ast: lark.Tree[Any]) -> Evaluator:
        return _BoundedEvaluator(ast, self.activation, self._budget)

    def visit_children(self, tree: lark.Tree[Any]) -> list[Any]:
        self._budget[0] -= 1
        if self._budget[0] < 0:
            raise _TooExpensive
        return super().visit_children(tree)


_OPERATOR_RULES = {"relation_lt": "<", "relation_le": "<=", "relation_gt": ">", "relation_ge": ">=",
                   "relation_eq": "==", "relation_ne": "!=", "relation_in": "in", "addition_add": "+",
                   "addition_sub": "-", "multiplication_mul": "*", "multiplication_div": "/",
                   "multiplication_mod": "%", "unary_neg": "-", "unary_not": "!"}


_PYTHON_NAMES = {"NoneType": "null", "float": "double", "str": "string", "dict": "map", "DoubleType": "double",
                 "IntType": "int", "UintType": "uint", "BoolType": "bool", "StringType": "string",
                 "BytesType": "bytes", "ListType": "list", "MapType": "map", "TypeType": "type"}


def _tidy(text: str) -> str:
    """cel-python's messages carry Python reprs; keep the CEL words."""
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", lambda m: _PYTHON_NAMES.get(m[1], m[1].lower()), text)
    text = re.sub(r"\b[A-Z]\w*?Type\(([^()]*)\)", r"\1", text)  # DoubleType(1.0) -> 1.0
    text = re.sub(r"\b([A-Z]\w*?Type)\b", lambda m: _PYTHON_NAMES.get(m[1], m[1]), text)  # DoubleType -> double
    text = re.sub(r"Token\('RULE', '(\w+)'\)", lambda m: repr(_OPERATOR_RULES.get(m[1], m[1])), text)
    return text if len(text) <= 200 else text[:197] + "..."


def _python_error(error: Exception) -> str:
    if match := re.search(r"'(\w+)' object is not iterable", str(error)):
        return f"all, exists, exists_one, map and filter need a list or map, got {_tidy(match[1])}"
    return _tidy(f"{type(error).__name__}: {error}")


def _explain(error: CELEvalError) -> str:
    args = error.args
    text = str(args[0]) if args else "evaluation failed"
    detail = args[2] if len(args) > 2 and isinstance(args[2], tuple) and args[2] else None
    # When every element of a macro fails, cel-python nests their errors' reprs: report the innermost cause.
    nested = " ".join(str(d) for d in detail or ())
    causes = [m[1] for m in re.findall(r"CELEvalError\(\*\((['\"])(.*?)\1", nested) if m[1] != "no such overload"]
    if causes:
        return _tidy(causes[-1])
    if match := re.match(r"undeclared reference to '?(\w+)", text):
        return f"unknown name '{match[1]}'"
    if match := re.match(r"no such member in mapping: (.*)", text):
        return f"no key {match[1]} in map"
    if match := re.search(r"with type: '(.*)' does not support field selection", text):
        return f"{_tidy(match[1])} has no fields"
    if match := re.search(r"object of type '(\w+)' has no len", nested):
        return f"size() needs a list, map, string or bytes, got {_tidy(match[1])}"
    if match := re.search(r"unhashable type: '(\w+)'", text):
        return f"a {_tidy(match[1])} cannot be a map key"
    known = {"invalid_argument": "index out of range", "modulus or divide by zero": "division by zero",
             "return error for overflow": "overflow", "no such key": "no such key in map"}
    if text in known:
        return known[text] + (f": {_tidy(str(detail[0]))}" if detail and text == "no such key" else "")
    if text == "no such overload" and detail:
        return "no such overload: " + _tidy(str(detail[0]))
    return _tidy(text)


def _with_hint(message: str, value: Any) -> str:
    if isinstance(value, list) and re.search(r"\blist\b", message) and "index" not in message:
        return f"{message} (result is a list: use result[0])"
    if isinstance(value, dict) and re.search(r"\bmap\b", message) and "key" not in message:
        return f"{message} (result is a map: use result.<field>)"
    return message
