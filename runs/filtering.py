"""The runs filter language, in the spirit of MLflow's search filter:

    metrics."DTree Accuracy" > 0.9 and params.max_depth = "4" and tags.team = "churn"

Grammar (keywords in any case)::

    filter     := clause ("AND" clause)*
    clause     := entity comparator value
    entity     := ("metrics" | "params" | "tags" | "attributes") "." key   (singular and "attr" too)
    key        := identifier | "double" | 'single' | `backtick` quoted name
    comparator := "=" | "==" | "!=" | "<>" | ">" | ">=" | "<" | "<=" | "LIKE" | "ILIKE" | "IN" | "NOT" "IN"
    value      := number | quoted string | "(" value ("," value)* ")"

`parse` turns the text into a list of Clause; it raises FilterError naming the position and the
token it could not read and what it expected there. The meaning (which comparators suit which entity)
is checked here too, so every error comes before a query runs; `runs.selectors` turns clauses into
SQL. Plain Python: no Django.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

ENTITIES = {"metrics": "metrics", "metric": "metrics", "params": "params", "param": "params", "parameters": "params",
            "tags": "tags", "tag": "tags", "attributes": "attributes", "attribute": "attributes", "attr": "attributes",
            "run": "attributes"}
# Attributes of a run a filter may name, and whether they compare as numbers.
ATTRIBUTES = {"status": False, "target": False, "script": False, "kind": False, "user": False, "project": False,
              "number": True, "note": False, "run_name": False}
NUMERIC_OPS = ("=", "!=", ">", ">=", "<", "<=")
TEXT_OPS = ("=", "!=", "LIKE", "ILIKE", "IN", "NOT IN")
MAX_FILTER_LENGTH = 4000
MAX_CLAUSES = 20


class FilterError(ValueError):
    """A filter that cannot be read: `message` says where and what was expected."""

    def __init__(self, message: str, *, position: int | None = None, token: str | None = None):
        super().__init__(message)
        self.message = message
        self.position = position
        self.token = token


@dataclass(frozen=True)
class Token:
    kind: str  # IDENT, STRING, QUOTED_NAME, NUMBER, OP, DOT, COMMA, LPAREN, RPAREN, END
    text: str
    value: object
    position: int


@dataclass(frozen=True)
class Clause:
    entity: str  # metrics, params, tags, attributes
    key: str
    op: str  # one of NUMERIC_OPS or TEXT_OPS
    value: object  # float, str, or tuple of str for IN / NOT IN


_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_\-]*)
  | (?P<op>==|!=|<>|>=|<=|=|>|<)
  | (?P<dot>\.)
  | (?P<comma>,)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<quote>["'`])
""", re.VERBOSE)


def tokenize(text: str) -> list[Token]:
    """The tokens of `text`, ending with an END token; FilterError at the first character that
    starts no token, or at a quote that is never closed."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            bad = text[pos:].split(None, 1)[0][:20]
            raise FilterError(f"Cannot read the filter at character {pos + 1}: {bad!r} is not a name, a number, a quoted "
                              f"string or a comparison.", position=pos, token=bad)
        kind = match.lastgroup
        if kind == "ws":
            pos = match.end()
            continue
        if kind == "quote":
            quote = match.group()
            value, end = _read_quoted(text, pos, quote)
            tokens.append(Token("QUOTED_NAME" if quote == "`" else "STRING", text[pos:end], value, pos))
            pos = end
            continue
        raw = match.group()
        if kind == "number":
            tokens.append(Token("NUMBER", raw, float(raw), pos))
        elif kind == "ident":
            tokens.append(Token("IDENT", raw, raw, pos))
        elif kind == "op":
            tokens.append(Token("OP", raw, {"==": "=", "<>": "!="}.get(raw, raw), pos))
        else:
            tokens.append(Token(kind.upper(), raw, raw, pos))
        pos = match.end()
    tokens.append(Token("END", "", None, len(text)))
    return tokens


def _read_quoted(text: str, start: int, quote: str) -> tuple[str, int]:
    out = []
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        if char == quote:
            return "".join(out), pos + 1
        out.append(char)
        pos += 1
    raise FilterError(f"Cannot read the filter at character {start + 1}: the string {text[start:start + 20]!r} is never "
                      f"closed; end it with {quote}.", position=start, token=text[start:start + 20])


class _Parser:
    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, token: Token, expected: str):
        shown = "the end of the filter" if token.kind == "END" else repr(token.text)
        raise FilterError(f"Cannot read the filter at character {token.position + 1}: expected {expected}, found {shown}.",
                          position=token.position, token=token.text)

    def is_keyword(self, token: Token, word: str) -> bool:
        return token.kind == "IDENT" and token.text.upper() == word

    def parse(self) -> list[Clause]:
        clauses = [self.clause()]
        while True:
            token = self.peek()
            if token.kind == "END":
                return clauses
            if self.is_keyword(token, "AND"):
                self.take()
                clauses.append(self.clause())
                if len(clauses) > MAX_CLAUSES:
                    raise FilterError(f"A filter holds at most {MAX_CLAUSES} clauses.", position=token.position, token=token.text)
                continue
            if self.is_keyword(token, "OR"):
                raise FilterError(f"Cannot read the filter at character {token.position + 1}: 'OR' is not supported "
                                  f"(as in MLflow, clauses join with AND); run two searches instead.",
                                  position=token.position, token=token.text)
            self.fail(token, "AND or the end of the filter")

    def clause(self) -> Clause:
        head = self.take()
        if head.kind != "IDENT" or head.text.lower() not in ENTITIES:
            self.fail(head, "metrics.<name>, params.<name>, tags.<name> or attributes.<name>")
        entity = ENTITIES[head.text.lower()]
        dot = self.take()
        if dot.kind != "DOT":
            self.fail(dot, f"'.' and a name after {head.text!r}")
        name = self.take()
        if name.kind == "IDENT":
            key = name.text
        elif name.kind in ("STRING", "QUOTED_NAME"):
            key = str(name.value)
        else:
            self.fail(name, f"a name after '{head.text}.' (quote names with spaces: {head.text}.\"DTree Accuracy\")")
        if not key:
            self.fail(name, "a non-empty name")
        if entity == "attributes" and key.lower() not in ATTRIBUTES:
            raise FilterError(f"Cannot read the filter at character {name.position + 1}: runs have no attribute {key!r}; "
                              f"use one of {', '.join(sorted(ATTRIBUTES))}.", position=name.position, token=name.text)
        if entity == "attributes":
            key = key.lower()
        op_token = self.take()
        if op_token.kind == "OP":
            op = str(op_token.value)
        elif op_token.kind == "IDENT" and op_token.text.upper() in ("LIKE", "ILIKE", "IN"):
            op = op_token.text.upper()
        elif self.is_keyword(op_token, "NOT") and self.is_keyword(self.peek(), "IN"):
            self.take()
            op = "NOT IN"
        else:
            self.fail(op_token, "a comparison (=, !=, >, >=, <, <=, LIKE, ILIKE, IN, NOT IN)")
        numeric = entity == "metrics" or (entity == "attributes" and ATTRIBUTES[key])
        allowed = NUMERIC_OPS if numeric else TEXT_OPS
        if op not in allowed:
            what = f"metrics.{key}" if entity == "metrics" else f"{entity}.{key}"
            kind = "numbers" if numeric else "text"
            raise FilterError(f"Cannot read the filter at character {op_token.position + 1}: {what} compares as {kind}, "
                              f"so {op} does not apply; use {', '.join(allowed)}.", position=op_token.position, token=op_token.text)
        if op in ("IN", "NOT IN"):
            value = self.value_list()
        else:
            value = self.value(numeric)
        return Clause(entity, key, op, value)

    def value(self, numeric: bool) -> object:
        token = self.take()
        if numeric:
            if token.kind == "NUMBER":
                return token.value
            if token.kind == "STRING":
                try:
                    return float(str(token.value))
                except ValueError:
                    pass
            self.fail(token, "a number")
        if token.kind == "STRING":
            return str(token.value)
        if token.kind == "NUMBER":
            return token.text  # params are text: `params.max_depth = 4` means the text "4"
        self.fail(token, "a quoted string, e.g. \"4\"")

    def value_list(self) -> tuple:
        token = self.take()
        if token.kind != "LPAREN":
            self.fail(token, "'(' and a list of quoted strings")
        values = [self.value(False)]
        while True:
            token = self.take()
            if token.kind == "RPAREN":
                return tuple(values)
            if token.kind != "COMMA":
                self.fail(token, "',' or ')'")
            values.append(self.value(False))


def parse(text: str) -> list[Clause]:
    """The clauses of a filter string (empty text: no clauses); FilterError when it cannot be read."""
    text = (text or "").strip()
    if not text:
        return []
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"The filter is {len(text)} characters; the limit is {MAX_FILTER_LENGTH}.")
    return _Parser(tokenize(text)).parse()


def like_to_regex(pattern: str) -> str:
    """The anchored regular expression of an SQL LIKE pattern (% any run, _ one character)."""
    out = []
    for char in pattern:
        out.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return "^" + "".join(out) + "$"
