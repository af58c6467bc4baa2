"""A small, strict JSONPath subset for picking one value out of a JSON document (the web metric provider's
`jsonPath`).

Supported: the root `$`, child names `.name` (letters, digits, `_` and `-`), quoted names `['name']` / `["name"]`
(escapes `\\'`, `\\"` and `\\\\` only), and list indexes `[0]` / `[-1]` (negative counts from the end). A path may
be wrapped in braces as Argo Rollouts and kubectl write it: `{$.data.ok}`. Anything else (wildcards, recursive
descent, filters, slices, unions) is a syntax error, so a path either names exactly one place or is rejected when
the run is created. `parse` reports the first syntax error with its position; `extract` names the first segment
that does not match the document. No dependency: a full JSONPath library would accept expressions that return
several values, which a metric cannot use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class JsonPathError(ValueError):
    """A path that does not parse, or does not match the document; the message says where."""


@dataclass(frozen=True)
class Key:
    name: str


@dataclass(frozen=True)
class Index:
    index: int


Segment = Key | Index
Path = tuple[Segment, ...]

_QUOTES = ("'", '"')
_ESCAPABLE = ("'", '"', "\\")


def _is_name_char(char: str) -> bool:
    return char.isalnum() or char in "_-"


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str, *, at: int | None = None) -> JsonPathError:
        return JsonPathError(f"invalid jsonPath {self.text!r}: {what} at position {self.pos if at is None else at}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse(self) -> Path:
        end = len(self.text)
        if self.text.startswith("{"):
            if not self.text.endswith("}") or len(self.text) < 2:
                raise self.fail("'{' without a closing '}'", at=len(self.text))
            self.pos, end = 1, len(self.text) - 1
        if self.peek() != "$":
            raise self.fail("expected '$' (paths start at the document root, e.g. $.data.ratio)")
        self.pos += 1
        segments: list[Segment] = []
        while self.pos < end:
            char = self.text[self.pos]
            if char == ".":
                segments.append(self.dotted(end))
            elif char == "[":
                segments.append(self.bracketed(end))
            else:
                raise self.fail(f"expected '.' or '[', found {char!r}")
        return tuple(segments)

    def dotted(self, end: int) -> Key:
        self.pos += 1  # the '.'
        if self.pos < end and self.text[self.pos] == ".":
            raise self.fail("recursive descent '..' is not supported", at=self.pos - 1)
        if self.pos < end and self.text[self.pos] == "*":
            raise self.fail("wildcards are not supported")
        start = self.pos
        while self.pos < end and _is_name_char(self.text[self.pos]):
            self.pos += 1
        if self.pos == start:
            found = repr(self.text[self.pos]) if self.pos < end else "the end"
            raise self.fail(f"expected a name after '.', found {found} (quote other names: ['a name'])")
        return Key(self.text[start:self.pos])

    def bracketed(self, end: int) -> Segment:
        self.pos += 1  # the '['
        char = self.text[self.pos] if self.pos < end else ""
        segment: Segment
        if char in _QUOTES:
            segment = Key(self.quoted(end, char))
        elif char == "-" or char.isdigit():
            segment = Index(self.integer(end))
        elif char == "*":
            raise self.fail("wildcards are not supported")
        elif char == "?":
            raise self.fail("filter expressions are not supported")
        else:
            raise self.fail(f"expected a quoted name or an integer index after '[', found {char!r}" if char else
                            "expected a quoted name or an integer index after '[', found the end")
        if self.pos >= end or self.text[self.pos] != "]":
            found = repr(self.text[self.pos]) if self.pos < end else "the end"
            raise self.fail(f"expected ']', found {found}")
        self.pos += 1
        return segment

    def quoted(self, end: int, quote: str) -> str:
        opened = self.pos
        self.pos += 1
        chars: list[str] = []
        while self.pos < end:
            char = self.text[self.pos]
            if char == quote:
                self.pos += 1
                return "".join(chars)
            if char == "\\":
                following = self.text[self.pos + 1] if self.pos + 1 < end else ""
                if following not in _ESCAPABLE:
                    raise self.fail("unsupported escape (only \\' \\\" and \\\\ are allowed)")
                chars.append(following)
                self.pos += 2
                continue
            chars.append(char)
            self.pos += 1
        raise self.fail(f"unterminated quoted name (opened with {quote} at position {opened})", at=end)

    def integer(self, end: int) -> int:
        start = self.pos
        if self.text[self.pos] == "-":
            self.pos += 1
        digits = self.pos
        while self.pos < end and self.text[self.pos].isascii() and self.text[self.pos].isdigit():
            self.pos += 1
        if self.pos == digits:
            raise self.fail("expected digits after '-'")
        if self.pos < end and self.text[self.pos] == ":":
            raise self.fail("slices are not supported")
        if self.pos < end and self.text[self.pos] == ",":
            raise self.fail("unions are not supported")
        return int(self.text[start:self.pos])


def parse(path: str) -> Path:
    """The segments of `path`, or JsonPathError naming the first syntax error and its position."""
    return _Parser(path).parse()


def format_path(segments: Sequence[Segment]) -> str:
    """The canonical text of a path: `.name` where the name allows it, `['...']` otherwise; parses back the same."""
    parts = ["$"]
    for segment in segments:
        if isinstance(segment, Index):
            parts.append(f"[{segment.index}]")
        elif segment.name and all(_is_name_char(c) for c in segment.name):
            parts.append(f".{segment.name}")
        else:
            escaped = segment.name.replace("\\", "\\\\").replace("'", "\\'")
            parts.append(f"['{escaped}']")
    return "".join(parts)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, Sequence):
        return "a list"
    return type(value).__name__


def extract(document: object, path: str | Sequence[Segment]) -> object:
    """The value at `path` in `document`; JsonPathError naming the first segment that does not match.

    `path` may be text (parsed here, so syntax errors raise too) or segments from `parse`.
    """
    text = path if isinstance(path, str) else format_path(path)
    segments = parse(path) if isinstance(path, str) else tuple(path)
    current = document
    for depth, segment in enumerate(segments):
        where = format_path(segments[:depth])
        if isinstance(segment, Key):
            if not isinstance(current, Mapping):
                raise JsonPathError(f"jsonPath {text}: no key {segment.name!r} at {where}: it is {_kind(current)}")
            if segment.name not in current:
                raise JsonPathError(f"jsonPath {text}: no key {segment.name!r} at {where}")
            current = current[segment.name]
        else:
            if isinstance(current, str | bytes) or not isinstance(current, Sequence):
                raise JsonPathError(f"jsonPath {text}: no index {segment.index} at {where}: it is {_kind(current)}")
            if not -len(current) <= segment.index < len(current):
                raise JsonPathError(f"jsonPath {text}: index {segment.index} out of range at {where} "
                                    f"(length {len(current)})")
            current = current[segment.index]
    return current
