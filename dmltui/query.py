"""The run query language: one parser and one evaluator, for ``runs list --where`` and the runs screen's ``/``.

    state = finished and config.loss.name in (margin, triplet) and best.test.e_recall@1 >= 0.6 and config.optim.lr < 1e-4

Fields:

- run fields: ``id``, ``name``, ``state``, ``preset``, ``dataset``, ``loss``, ``miner``, ``executor`` (``local`` or
  ``slurm``), ``host``, ``created_at``, ``started_at``, ``ended_at``, ``notes`` (text); ``seed``, ``epoch``,
  ``epochs`` (numbers); ``tags`` (a list);
- ``config.KEY``: any key of the run's resolved config, dotted (``config.loss.name``, ``config.optim.lr``);
- ``best.SPLIT.METRIC``: the run's best value of a metric on a split (the maximum; the minimum for losses), e.g.
  ``best.test.e_recall@1``; ``last.SPLIT.METRIC``: its value at the split's last evaluated epoch.

Operators: ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=``; ``~`` (a glob on text: ``*``, ``?``, ``[abc]``, case
sensitive); ``FIELD in (a, b, ...)``; ``FIELD has GLOB`` (a list, such as ``tags`` or a list-valued config key,
has an element matching the glob: ``tags has paper*``); ``not``, then ``and``, then ``or`` (tightest first), and
parentheses. Keywords are case-insensitive.

Values: numbers (``0.6``, ``-3``, ``1e-4``), ``true``/``false``, quoted strings (``"a b"``, ``'a b'``; a backslash
escapes the next character) or bare words (``margin``, ``margin-b12-d``, ``timm:vit_s16.dino``, ``2026-11``). A
value is read as the kind of the value it is compared with: a text field compares with the literal's text (so
``name = 123`` works, and ``created_at >= 2026-11`` compares ISO times as text), a number with a number, a boolean
with true/false. A quoted value is always text.

Missing values: a comparison is *unknown* when the run has no value for the field (a config key its config lacks,
a metric it never logged, a summary stored before config values and last metrics were kept, which ``dmltui db
rebuild`` adds) or when the value and the literal are of different kinds (a number against a word, a list against
``<``). A run is selected only when the whole expression is true, and unknown is not true: ``not`` of unknown is
unknown, ``false and unknown`` is false, ``true or unknown`` is true (SQL's three-valued logic). So neither
``config.x = 1`` nor ``not config.x = 1`` selects a run without ``config.x``.

A field that none of the runs has a value for is an error naming the nearest fields they have (so a typo is never
an empty answer), as is a value of the wrong kind for a field whose kind is fixed (``seed > abc``, ``tags = x``).

:func:`compile_query` parses once (lark, LALR) into closures; ``Query.matches`` evaluates a record without parsing
anything again. Nothing is ever evaluated as Python.
"""

from __future__ import annotations

import functools
import glob
import operator
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from fnmatch import translate
from typing import Any

from lark import Lark, Token, Transformer, UnexpectedInput, v_args
from lark.exceptions import VisitError

from dmltui.fields import RUN_FIELDS, KnownFields, field_kind, unknown_field, value_getter

GRAMMAR = r"""
?start: disjunction
?disjunction: conjunction (_OR conjunction)*
?conjunction: negation (_AND negation)*
?negation: _NOT negation -> negated
         | comparison
         | "(" disjunction ")"
comparison: FIELD OPERATOR value                 -> compare
          | FIELD IN "(" value ("," value)* ")"  -> member
          | FIELD HAS value                      -> has
value: DOUBLE_QUOTED | SINGLE_QUOTED | WORD

FIELD: /(?!(?:and|or|not|in|has)(?![\w@.\-]))[a-z_][a-z0-9_@\-]*(\.[a-z0-9_@\-]+)*/i  // a keyword is no field
OPERATOR: "!=" | "<=" | ">=" | "=" | "<" | ">" | "~"
_AND: "and"i
_OR: "or"i
_NOT: "not"i
IN: "in"i
HAS: "has"i
DOUBLE_QUOTED: /"(?:[^"\\]|\\.)*"/
SINGLE_QUOTED: /'(?:[^'\\]|\\.)*'/
WORD: /[^\s()",'=<>!~]+/
%ignore /\s+/
"""

OPERATORS = "=, !=, <, <=, >, >=, ~, in, has"

NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
COMPARE = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
           ">=": operator.ge}
# what the parser expected, in words, by lark's terminal names (in the order a message lists them)
EXPECTED_WORDS = {"FIELD": "a field", "_NOT": "'not'", "LPAR": "'('", "OPERATOR": f"an operator ({OPERATORS})",
                  "IN": f"an operator ({OPERATORS})", "HAS": f"an operator ({OPERATORS})", "DOUBLE_QUOTED": "a value",
                  "SINGLE_QUOTED": "a value", "WORD": "a value", "COMMA": "','", "RPAR": "')'", "_AND": "'and'",
                  "_OR": "'or'", "$END": "end of input"}
# a text that starts like this is a query in the runs screen's filter box (otherwise: words, state:..., tag:...)
QUERY_START = re.compile(r"\s*(?:not\b|\(|[a-z_][\w@.\-]*(?:\s*(?:[=<>~]|!=)|\s+(?:in|has)\b))", re.IGNORECASE)

Test = Callable[[dict[str, Any]], "bool | None"]  # True, False, or None: unknown


class QueryError(ValueError):
    """A query that cannot be used: one line saying where and why (``at column 17: expected a value ...``)."""


@functools.cache
def parser() -> Lark:
    """The query parser, built once per process."""
    return Lark(GRAMMAR, parser="lalr")


def looks_like_query(text: str) -> bool:
    """Whether the filter box's *text* is a query (it starts with ``FIELD OPERATOR``, ``not`` or ``(``) rather than
    filter words such as ``margin state:running``."""
    return QUERY_START.match(text) is not None


def quoted_glob(text: str) -> str:
    """A query value that ``~`` and ``has`` match against exactly *text* (its glob characters escaped, quoted)."""
    escaped = glob.escape(text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# --------------------------------------------------------------------------- literals and tests


@dataclass(frozen=True)
class Literal:
    """A value as written: its text, and what it reads as where a number or a boolean is compared (None: it does
    not, as a quoted value never does)."""

    text: str
    number: float | None
    boolean: bool | None
    token: Token

    @classmethod
    def of(cls, token: Token) -> Literal:
        if token.type == "WORD":
            lowered = token.value.lower()
            return cls(token.value, float(token.value) if NUMBER.fullmatch(token.value) else None,
                       {"true": True, "false": False}.get(lowered), token)
        return cls(re.sub(r"\\(.)", r"\1", token.value[1:-1]), None, None, token)


def _glob(pattern: str) -> Callable[[str], bool]:
    match = re.compile(translate(pattern)).match  # compiled once: fnmatchcase would look it up per run
    return lambda text: match(text) is not None


def comparison(get: Callable[[dict[str, Any]], Any], op: str, literal: Literal) -> Test:
    compare = COMPARE[op]
    text, number, boolean = literal.text, literal.number, literal.boolean
    ordered = op not in ("=", "!=")

    def test(record: dict[str, Any]) -> bool | None:
        value = get(record)
        kind = type(value)
        if kind is str:
            return compare(value, text)
        if kind is float or kind is int:  # type(True) is bool: booleans are not numbers here
            return None if number is None else compare(value, number)
        if kind is bool and boolean is not None and not ordered:
            return compare(value, boolean)
        return None

    return test


def glob_match(get: Callable[[dict[str, Any]], Any], literal: Literal) -> Test:
    matches = _glob(literal.text)

    def test(record: dict[str, Any]) -> bool | None:
        value = get(record)
        return matches(value) if type(value) is str else None

    return test


def membership(get: Callable[[dict[str, Any]], Any], literals: list[Literal]) -> Test:
    texts = {literal.text for literal in literals}
    numbers = {literal.number for literal in literals if literal.number is not None}
    booleans = {literal.boolean for literal in literals if literal.boolean is not None}

    def test(record: dict[str, Any]) -> bool | None:
        value = get(record)
        kind = type(value)
        if kind is str:
            return value in texts
        if kind is float or kind is int:
            return value in numbers if numbers else None
        if kind is bool:
            return value in booleans if booleans else None
        return None

    return test


def containment(get: Callable[[dict[str, Any]], Any], literal: Literal) -> Test:
    matches, number, boolean = _glob(literal.text), literal.number, literal.boolean

    def element_matches(element: Any) -> bool:
        kind = type(element)
        if kind is str:
            return matches(element)
        if kind is float or kind is int:
            return element == number
        return kind is bool and element is boolean

    def test(record: dict[str, Any]) -> bool | None:
        value = get(record)
        return any(map(element_matches, value)) if type(value) is list else None

    return test


def negation(inner: Test) -> Test:
    def test(record: dict[str, Any]) -> bool | None:
        result = inner(record)
        return None if result is None else not result

    return test


def junction(parts: list[Test], decisive: bool) -> Test:
    """``and`` (*decisive* False: one false part decides) or ``or`` (True: one true part decides); otherwise unknown
    when a part is unknown, else the other value."""

    def test(record: dict[str, Any]) -> bool | None:
        unknown = False
        for part in parts:
            result = part(record)
            if result is decisive:
                return decisive
            unknown = unknown or result is None
        return None if unknown else not decisive

    return test


# --------------------------------------------------------------------------- compiling


@v_args(inline=True)
class _Compiler(Transformer):
    """The parse tree as one test; checks every field against *fields* and every value against its field's kind."""

    def __init__(self, fields: Collection[str]):
        super().__init__()
        self.fields = fields

    def value(self, token: Token) -> Literal:
        return Literal.of(token)

    def _getter(self, field: Token) -> Callable[[dict[str, Any]], Any]:
        name = field.value
        getter = value_getter(name)
        if getter is None or (name not in RUN_FIELDS and name not in self.fields):
            raise QueryError(f"at column {field.column}: {unknown_field(name, self.fields)}")
        return getter

    def compare(self, field: Token, op: Token, literal: Literal) -> Test:
        getter, kind = self._getter(field), field_kind(field.value)
        if kind == "list":
            raise QueryError(f"at column {op.column}: {field} is a list: use '{field} has VALUE'")
        if op == "~":
            if kind == "number":
                raise QueryError(f"at column {op.column}: '~' matches text, and {field} is a number")
            return glob_match(getter, literal)
        _check_number(field, kind, literal)
        return comparison(getter, op.value, literal)

    def member(self, field: Token, keyword: Token, *literals: Literal) -> Test:
        getter, kind = self._getter(field), field_kind(field.value)
        if kind == "list":
            raise QueryError(f"at column {keyword.column}: {field} is a list: use '{field} has VALUE'")
        for literal in literals:
            _check_number(field, kind, literal)
        return membership(getter, list(literals))

    def has(self, field: Token, keyword: Token, literal: Literal) -> Test:
        getter, kind = self._getter(field), field_kind(field.value)
        if kind in ("text", "number"):
            raise QueryError(f"at column {keyword.column}: 'has' looks into lists (tags, list-valued config keys), "
                             f"and {field} is {'text' if kind == 'text' else 'a number'}")
        return containment(getter, literal)

    def negated(self, inner: Test) -> Test:
        return negation(inner)

    def conjunction(self, *parts: Test) -> Test:
        return junction(list(parts), decisive=False)

    def disjunction(self, *parts: Test) -> Test:
        return junction(list(parts), decisive=True)


def _check_number(field: Token, kind: str | None, literal: Literal) -> None:
    if kind == "number" and literal.number is None:
        raise QueryError(f"at column {literal.token.column}: {field} is a number, and {literal.token.value} is not one")


@dataclass(frozen=True)
class Query:
    """A compiled query: ``matches(record)`` is True only where the expression is true (not false, not unknown)."""

    text: str
    test: Test

    def matches(self, record: dict[str, Any]) -> bool:
        return self.test(record) is True

    def select(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        test = self.test
        return [record for record in records if test(record) is True]


def compile_query(text: str, fields: Collection[str]) -> Query:
    """*text* as a :class:`Query`; *fields*: the field names it may use (usually ``KnownFields(records)``; run
    fields are always allowed). QueryError, one line with the column, for a syntax error, an unknown field or a
    value of the wrong kind."""
    tree = _parse(text)
    try:
        return Query(text, _Compiler(fields).transform(tree))
    except VisitError as error:  # lark wraps what a transformer raises
        if isinstance(error.orig_exc, QueryError):
            raise error.orig_exc from None
        raise


def select(records: Iterable[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """The records that the query *where* selects, in their order (for commands that pick runs: ``compare``,
    ``report``...). QueryError for a bad query."""
    records = list(records)
    return compile_query(where, KnownFields(records)).select(records)


# --------------------------------------------------------------------------- syntax errors


def _parse(text: str) -> Any:
    interactive = parser().parse_interactive(text)
    tokens: list[Token] = []
    try:
        for token in interactive.iter_parse():
            tokens.append(token)
        return interactive.feed_eof(tokens[-1] if tokens else None)
    except UnexpectedInput as error:
        raise QueryError(_syntax_message(text, error, tokens)) from None


def _syntax_message(text: str, error: UnexpectedInput, tokens: list[Token]) -> str:
    """``at column 17: expected a value after '>=', got end of input``."""
    token = getattr(error, "token", None)
    if token is not None and token.type == "$END":
        position, got = len(text), "end of input"
    else:
        position = error.pos_in_stream
        character = text[position]
        got = "an unterminated quoted string" if character in "\"'" and token is None else \
            f"'{token.value if token is not None else character}'"
    before = [t for t in tokens if t.start_pos < position]
    # what may come here: asked of a parser fed just the tokens before (an error may come after reductions)
    state = parser().parse_interactive(text)
    for earlier in before:
        state.feed_token(earlier)
    order = list(EXPECTED_WORDS)
    accepted = sorted(state.accepts(), key=lambda name: order.index(name) if name in order else len(order))
    words = list(dict.fromkeys(EXPECTED_WORDS.get(name, name) for name in accepted))
    expected = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    after = f" after '{before[-1].value}'" if before else ""
    hint = " (quote a value that has spaces)" if before and before[-1].type == "WORD" and token is not None \
        and token.type in ("WORD", "FIELD") else ""
    return f"at column {position + 1}: expected {expected}{after}, got {got}{hint}"
