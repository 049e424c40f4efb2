"""Query text → `Query`: Lark (LALR, contextual lexer) for the syntax, then a pass that builds
the AST and checks fields and values, so every mistake is reported with its position."""

from __future__ import annotations

from copy import copy
from functools import lru_cache
from importlib import resources
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from fleetkeeper.errors import QuerySyntaxError
from fleetkeeper.query.ast import (
    And,
    Comparison,
    Everything,
    InGroup,
    Membership,
    Not,
    Op,
    OperandError,
    Or,
    Query,
    Tag,
    Value,
    check_field,
    check_operand,
)

MAX_QUERY_LENGTH = 4000
MAX_DEPTH = 32  # levels of parentheses, NOT, AND and OR

_GRAMMAR = resources.files("fleetkeeper.query").joinpath("grammar.lark").read_text("utf-8")
_LARK = Lark(_GRAMMAR, parser="lalr", lexer="contextual", propagate_positions=True)
_NESTING = frozenset({"or_expr", "and_expr", "negation", "paren"})
_ESCAPES = {"n": "\n", "t": "\t"}
_OPERATORS = "=, !=, <, >, <=, >=, IN or NOT IN"

# What each terminal means to someone typing a query, in the order they are listed.
_EXPECTED = (
    ("_NOT", "NOT"),
    ("_LPAR", "'('"),
    ("_AND", "AND"),
    ("_OR", "OR"),
    ("_COMMA", "','"),
    ("_RPAR", "')'"),
    ("$END", "the end of the query"),
)


def parse(text: str) -> Query:
    """Parse a fleet query; raises QuerySyntaxError with the position of the first mistake."""
    if len(text) > MAX_QUERY_LENGTH:
        raise _error(
            text,
            MAX_QUERY_LENGTH,
            "query too long",
            f"{len(text)} characters, at most {MAX_QUERY_LENGTH}",
        )
    return _parse(text)


@lru_cache(maxsize=512)
def _parse(text: str) -> Query:
    # Cached: dynamic groups re-parse the same stored queries for every request.
    if "\x00" in text:
        raise _error(text, text.index("\x00"), "unexpected NUL character")
    try:
        tree = _LARK.parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(text, exc) from None
    _check_depth(text, tree)
    if not tree.children:
        return Everything()
    root = tree.children[0]
    assert isinstance(root, Tree)
    return _Builder(text).build(root)


def _error(text: str, position: int, what: str, detail: str | None = None) -> QuerySyntaxError:
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    message = f"{what} at line {line} column {column}" + (f": {detail}" if detail else "")
    return QuerySyntaxError(message, query=text, position=position, line=line, column=column)


def _syntax_error(text: str, exc: UnexpectedInput) -> QuerySyntaxError:
    expected = _describe(_acceptable(exc.state))
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        return _error(text, exc.token.start_pos or 0, f"unexpected {exc.token.value!r}", expected)
    if isinstance(exc, UnexpectedCharacters):
        position = exc.pos_in_stream or 0
        char = text[position]
        if char in "\"'":
            return _error(text, position, "unterminated string", f"add the closing {char}")
        return _error(text, position, f"unexpected character {char!r}", expected)
    return _error(text, len(text.rstrip()), "unexpected end of query", expected)


def _acceptable(state: Any) -> set[str]:
    """The terminals the parser could take next, found by trying each on a copy of its state.

    The lexer's own "allowed" set is too wide (LALR merges states), so an error after
    `name = x` would otherwise also offer ','.
    """
    if state is None:
        return set()
    conf = copy(state.parse_conf)
    conf.callbacks = {}
    accepted = set()
    for name in state.parse_conf.states[state.position]:
        if not name.isupper():
            continue
        trial = state.copy(deepcopy_values=False)
        trial.parse_conf = conf
        try:
            trial.feed_token(Token(name, ""), is_end=name == "$END")
        except UnexpectedToken:
            continue
        accepted.add(name)
    return accepted


def _describe(expected: set[str]) -> str:
    parts = []
    if "WORD" in expected:
        parts.append("a value" if "STRING" in expected else "a field, tag:NAME or group:NAME")
    if "OP" in expected:
        parts.append(f"an operator ({_OPERATORS})")
    elif "_IN" in expected:
        parts.append("IN")
    parts += [text for name, text in _EXPECTED if name in expected]
    if "OP" in expected and "NOT" in parts:
        parts.remove("NOT")  # already offered as NOT IN
    if not parts:
        return "nothing more was expected"
    head = ", ".join(parts[:-1])
    return "expected " + (f"{head} or {parts[-1]}" if head else parts[-1])


def _check_depth(text: str, tree: Tree[Token]) -> None:
    # Iterative, so a hostile query cannot exhaust the stack before it is refused.
    stack: list[tuple[Tree[Token], int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if node.data in _NESTING:
            depth += 1
            if depth > MAX_DEPTH:
                raise _error(
                    text,
                    node.meta.start_pos,
                    "query nested too deeply",
                    f"at most {MAX_DEPTH} levels of parentheses, NOT, AND and OR",
                )
        stack.extend((child, depth) for child in node.children if isinstance(child, Tree))


def _glob(body: str) -> str:
    """Source text (inside quotes, or a bare word) → glob form (see `Value`)."""
    out = []
    chars = iter(body)
    for c in chars:
        if c == "\\":
            escaped = next(chars, "\\")
            literal = _ESCAPES.get(escaped, escaped)
            out.append("\\" + literal if literal in "*?\\" else literal)
        else:
            out.append(c)
    return "".join(out)


class _Builder:
    def __init__(self, text: str) -> None:
        self.text = text

    def build(self, tree: Tree[Token]) -> Query:
        kind = tree.data
        children = tree.children
        if kind in {"or_expr", "and_expr", "negation", "paren"}:
            operands = tuple(self.build(child) for child in children if isinstance(child, Tree))
            if kind == "negation":
                return Not(operands[0])
            if kind == "paren":
                return operands[0]
            return Or(operands) if kind == "or_expr" else And(operands)
        tokens = [child for child in children if isinstance(child, Token)]
        if kind == "comparison":
            name, op, raw = tokens
            value = self.value(raw)
            self.field(name)
            self.operand(name, op, value)
            operator: Op = op.value  # the OP terminal matches only these
            return Comparison(name.value, operator, value, name.start_pos or 0)
        if kind in {"membership", "not_membership"}:
            name = tokens[0]
            items = children[-1]
            assert isinstance(items, Tree)
            values = tuple(self.value(t) for t in items.children if isinstance(t, Token))
            self.field(name)
            for value in values:
                self.operand(name, "=", value)
            negated = kind == "not_membership"
            return Membership(name.value, values, negated, name.start_pos or 0)
        assert kind == "selector", kind
        return self.selector(tokens)

    def field(self, name: Token) -> None:
        try:
            check_field(name.value)
        except OperandError as exc:
            raise _error(self.text, name.start_pos or 0, exc.what, exc.detail) from None

    def operand(self, name: Token, op: str, value: Value) -> None:
        try:
            check_operand(name.value, op, value)
        except OperandError as exc:
            raise _error(self.text, value.position, exc.what, exc.detail) from None

    def value(self, token: Token, *, skip: int = 0) -> Value:
        """The value in a WORD or STRING token (minus `skip` leading characters)."""
        position = (token.start_pos or 0) + skip
        if token.type == "STRING":
            return Value(_glob(token.value[1:-1]), quoted=True, position=position)
        return Value(_glob(token.value[skip:]), quoted=False, position=position)

    def selector(self, tokens: list[Token]) -> Query:
        word = tokens[0]
        start = word.start_pos or 0
        prefix, colon, rest = word.value.partition(":")
        if not colon:
            self.field(word)  # an unknown field is the likelier mistake than a missing operator
            at = tokens[1].start_pos if len(tokens) > 1 else start + len(word.value)
            raise _error(
                self.text,
                at or 0,
                f"expected an operator after {word.value!r}",
                f"one of {_OPERATORS}",
            )
        kind = prefix.lower()
        if kind not in {"tag", "group"}:
            raise _error(
                self.text, start, f"unknown selector {prefix + ':'!r}", "use tag:NAME or group:NAME"
            )
        if len(tokens) > 1 and rest:
            raise _error(
                self.text,
                tokens[1].start_pos or 0,
                f"unexpected {tokens[1].value!r}",
                "expected AND, OR, ')' or the end of the query",
            )
        value = self.value(tokens[1]) if len(tokens) > 1 else self.value(word, skip=len(prefix) + 1)
        if not value.text:
            raise _error(self.text, start, f"{kind}: needs a name", f"write {kind}:NAME")
        if kind == "tag":
            return Tag(value, start)
        return InGroup(value.text, start)
