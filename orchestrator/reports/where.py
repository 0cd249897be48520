"""The `--where` language: a small, safe filter expression compiled to a pyarrow expression.

    batch_size >= 4 and method = 'cached'
    prompt_len in (32, 128) and not (status != 'ok' or decode_tok_s < 100)
    error is not null
    finished_at >= '2026-01-01'

Grammar (keywords are case-insensitive; `=` and `==` are the same):

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := operand OP operand                       OP: = == != < <= > >=
                | NAME ["not"] "in" "(" literal ("," literal)* ")"
                | NAME "is" ["not"] "null"
    operand    := NAME | literal
    literal    := NUMBER | 'text' | "text" | true | false

The text is tokenized and parsed by hand (recursive descent), names are checked against the
dataset's schema and literals against the column's type; nothing is ever passed to `eval`.
A number compares by value: `batch_size in (1.9)` matches no integer, `batch_size < 1.5`
matches 1. Expressions are bounded (MAX_CHARS, MAX_DEPTH nested `not`/parentheses, MAX_TERMS
comparisons) and integer literals must fit their column's type: anything past that is a
one-line error, never a crash.

>>> schema = pa.schema([("method", pa.string()), ("batch_size", pa.int64())])
>>> str(parse_where("batch_size >= 4 and method = 'cached'", schema))
'((batch_size >= 4) and (method == "cached"))'
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.errors import QueryError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<op><=|>=|==|!=|<>|=|<|>)
      | (?P<punct>[(),])
      | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
KEYWORDS = ("and", "or", "not", "in", "is", "null", "true", "false")
MAX_CHARS = 10_000
MAX_DEPTH = 64  # nested "not" and parentheses (the parser recurses once per level)
MAX_TERMS = 256  # comparisons and "in" values (Arrow evaluates deep expressions recursively)
MAX_NUMBER_CHARS = 400
_OPS = {
    "=": pc.equal,
    "==": pc.equal,
    "!=": pc.not_equal,
    "<>": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}


@dataclass(frozen=True)
class Token:
    kind: str  # number, string, op, punct, name, keyword, end
    text: str
    pos: int  # 0-based offset in the expression

    @property
    def value(self) -> Any:
        if self.kind == "number":
            return float(self.text) if re.search(r"[.eE]", self.text) else int(self.text)
        if self.kind == "string":
            return re.sub(r"\\(.)", r"\1", self.text[1:-1])
        if self.kind == "keyword" and self.text in ("true", "false"):
            return self.text == "true"
        return None


def column_list(schema: pa.Schema) -> str:
    """'columns: a, b, c' for error messages."""
    return "columns: " + ", ".join(schema.names)


def unknown_column(name: str, schema: pa.Schema, what: str = "column") -> QueryError:
    """The error for a name that is not a column, with a did-you-mean and the column list."""
    close = difflib.get_close_matches(name, schema.names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return QueryError(f"unknown {what} {name!r}{hint}; {column_list(schema)}")


def tokenize(text: str) -> list[Token]:
    """Split a --where expression into tokens (raises QueryError on a stray character).

    >>> [t.text for t in tokenize("a>=1 and b in ('x','y')")]
    ['a', '>=', '1', 'and', 'b', 'in', '(', "'x'", ',', "'y'", ')', '']
    """
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            start = len(text) - len(text[pos:].lstrip())
            raise _syntax(text, start, f"unexpected character {text[start]!r}")
        kind = m.lastgroup
        value = m.group(kind)
        start = m.start(kind)
        if kind == "name" and value.lower() in KEYWORDS:
            kind, value = "keyword", value.lower()
        tokens.append(Token(kind, value, start))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _syntax(text: str, pos: int, message: str) -> QueryError:
    return QueryError(f"--where {_quote(text)}: {message} at position {pos + 1}")


class _Parser:
    """Recursive descent over the tokens; builds pyarrow expressions as it goes."""

    def __init__(self, text: str, schema: pa.Schema):
        self.text, self.schema = text, schema
        if len(text) > MAX_CHARS:
            raise QueryError(f"--where: the expression is longer than {MAX_CHARS} characters")
        try:
            self.tokens = tokenize(text)
        except QueryError as e:
            raise QueryError(f"{e}; {column_list(schema)}") from None
        for tok in self.tokens:
            if tok.kind == "number" and len(tok.text) > MAX_NUMBER_CHARS:
                raise _syntax(text, tok.pos, f"a number of {len(tok.text)} characters")
        self.i = 0
        self.depth = 0
        self.terms = 0

    # -- token helpers ------------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def _take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def _accept(self, kind: str, text: str | None = None) -> Token | None:
        if self.tok.kind == kind and (text is None or self.tok.text == text):
            return self._take()
        return None

    def _expect(self, kind: str, text: str, what: str) -> Token:
        tok = self._accept(kind, text)
        if tok is None:
            raise self._error(f"expected {what}")
        return tok

    def _error(self, message: str) -> QueryError:
        found = "the end" if self.tok.kind == "end" else repr(self.tok.text)
        return QueryError(
            f"--where {_quote(self.text)}: {message}, found {found} at position {self.tok.pos + 1}; "
            f"{column_list(self.schema)}"
        )

    # -- grammar ------------------------------------------------------------------------------
    def parse(self) -> pc.Expression:
        if self.tok.kind == "end":
            raise self._error("expected a condition")
        expr = self._or()
        if self.tok.kind != "end":
            raise self._error("expected 'and', 'or' or the end")
        return expr

    def _or(self) -> pc.Expression:
        expr = self._and()
        while self._accept("keyword", "or"):
            expr = expr | self._and()
        return expr

    def _and(self) -> pc.Expression:
        expr = self._not()
        while self._accept("keyword", "and"):
            expr = expr & self._not()
        return expr

    def _not(self) -> pc.Expression:
        if self.tok.kind in ("keyword", "punct") and self.tok.text in ("not", "("):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self._error(f"more than {MAX_DEPTH} nested 'not' or parentheses")
            try:
                if self._accept("keyword", "not"):
                    return ~self._not()
                self._take()
                expr = self._or()
                self._expect("punct", ")", "')'")
                return expr
            finally:
                self.depth -= 1
        self._count_term()
        return self._comparison()

    def _count_term(self, n: int = 1) -> None:
        self.terms += n
        if self.terms > MAX_TERMS:
            raise self._error(f"more than {MAX_TERMS} comparisons or listed values")

    def _comparison(self) -> pc.Expression:
        start = self.tok
        left = self._operand()
        if start.kind == "name" and self.tok.kind == "keyword":
            if self._accept("keyword", "is"):
                negate = bool(self._accept("keyword", "not"))
                self._expect("keyword", "null", "'null' after 'is'")
                expr = pc.field(start.text).is_null()
                return ~expr if negate else expr
            negate = bool(self._accept("keyword", "not"))
            if self._accept("keyword", "in"):
                return self._in(start.text, negate)
            if negate:
                raise self._error("expected 'in' after 'not'")
        op = self._accept("op")
        if op is None:
            raise self._error("expected a comparison (= != < <= > >=, in, is null)")
        right_tok = self.tok
        left_is_text = start.kind == "name" and pa.types.is_string(
            self.schema.field(start.text).type
        )
        if right_tok.kind == "name" and right_tok.text not in self.schema.names and left_is_text:
            raise QueryError(
                f"--where {_quote(self.text)}: unknown column {right_tok.text!r}; to compare with the "
                f"text, quote it: '{right_tok.text}'; {column_list(self.schema)}"
            )
        right = self._operand()
        left, right = self._coerce(start, left, right_tok, right)
        return _OPS[op.text](left, right)

    def _in(self, name: str, negate: bool) -> pc.Expression:
        self._expect("punct", "(", "'(' after 'in'")
        values = [self._literal()]
        while self._accept("punct", ","):
            self._count_term()
            values.append(self._literal())
        self._expect("punct", ")", "')' closing the 'in' list")
        typ = self.schema.field(name).type
        values = [self._check_literal(name, typ, v) for v in values]
        field = pc.field(name)
        if _fractional(typ, values):  # compare as float64: 1.9 must not become 1
            field, typ = field.cast(pa.float64()), pa.float64()
        try:
            expr = field.isin(pa.array(values, type=typ))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as e:
            raise QueryError(f"--where {_quote(self.text)}: {name} in (...): {e}") from None
        return ~expr if negate else expr

    def _operand(self) -> Any:
        tok = self.tok
        if tok.kind == "name":
            self._take()
            if tok.text not in self.schema.names:
                raise QueryError(
                    f"--where {_quote(self.text)}: {unknown_column(tok.text, self.schema)}"
                )
            typ = self.schema.field(tok.text).type
            if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_struct(typ):
                raise QueryError(f"--where: column {tok.text!r} holds lists; it cannot be compared")
            return pc.field(tok.text)
        return self._literal()

    def _literal(self) -> Any:
        tok = self.tok
        if tok.kind in ("number", "string") or (
            tok.kind == "keyword" and tok.text in ("true", "false")
        ):
            self._take()
            return tok.value
        if tok.kind == "keyword" and tok.text == "null":
            raise self._error("null compares with 'is null' / 'is not null', not with an operator")
        raise self._error("expected a value (a number, 'text', true or false)")

    # -- types ----------------------------------------------------------------------------------
    def _coerce(self, ltok: Token, left: Any, rtok: Token, right: Any) -> tuple[Any, Any]:
        if ltok.kind == "name" and rtok.kind != "name":
            typ = self.schema.field(ltok.text).type
            right = self._check_literal(ltok.text, typ, right)
            if _fractional(typ, [right]):  # compare as float64: 1.9 must not become 1
                left = left.cast(pa.float64())
        elif rtok.kind == "name" and ltok.kind != "name":
            typ = self.schema.field(rtok.text).type
            left = self._check_literal(rtok.text, typ, left)
            if _fractional(typ, [left]):
                right = right.cast(pa.float64())
        elif ltok.kind != "name":
            raise self._error("a comparison needs at least one column name")
        # a literal on the left must be an expression too ("1.5 > batch_size")
        return (left if ltok.kind == "name" else pc.scalar(left)), right

    def _check_literal(self, name: str, typ: pa.DataType, value: Any) -> Any:
        """The literal as a value of the column's type, or a QueryError saying what would fit."""
        if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
            if isinstance(value, str):
                try:
                    return pa.scalar(datetime.fromisoformat(value), type=typ)
                except (ValueError, pa.ArrowInvalid):
                    pass
            raise QueryError(
                f"--where: {name} is a timestamp; compare it with an ISO date in quotes, "
                f"e.g. {name} >= '2026-01-31' or '2026-01-31T12:00'"
            )
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            if not isinstance(value, str):
                raise QueryError(
                    f"--where: {name} is text; quote the value, e.g. {name} = '{value}'"
                )
            return value
        if pa.types.is_boolean(typ):
            if not isinstance(value, bool):
                raise QueryError(f"--where: {name} is true/false; compare it with true or false")
            return value
        if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise QueryError(
                    f"--where: {name} is a number; compare it with a number, not {value!r}"
                )
            if pa.types.is_integer(typ) and isinstance(value, float) and value.is_integer():
                value = int(value)
            if pa.types.is_integer(typ) and isinstance(value, int):
                low, high = _int_range(typ)
                if not low <= value <= high:
                    raise QueryError(
                        f"--where: {name} holds {typ} values; {_short(value)} is "
                        f"outside [{low}, {high}]"
                    )
            elif isinstance(value, int):
                try:
                    float(value)
                except OverflowError:
                    raise QueryError(
                        f"--where: {_short(value)} is too large to compare with {name}"
                    ) from None
            return value
        if pa.types.is_null(typ):
            raise QueryError(f"--where: {name} is empty in every row; use '{name} is null'")
        return value


def _int_range(typ: pa.DataType) -> tuple[int, int]:
    bits = typ.bit_width
    if pa.types.is_signed_integer(typ):
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _fractional(typ: pa.DataType, values: list) -> bool:
    """An integer column compared with a number that is not an integer (e.g. 1.9)."""
    return pa.types.is_integer(typ) and any(
        isinstance(v, float) and not v.is_integer() for v in values
    )


def _quote(text: str, limit: int = 80) -> str:
    """The expression as messages quote it: repr, cut to `limit` characters."""
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")


def _short(value: Any, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else f"{text[:20]}...({len(text)} digits)"


def parse_where(text: str, schema: pa.Schema) -> pc.Expression:
    """Compile a --where expression for a table with `schema` (QueryError when it is invalid).

    >>> schema = pa.schema([("prompt_len", pa.int64()), ("status", pa.string())])
    >>> table = pa.table({"prompt_len": [32, 64, 128], "status": ["ok", "ok", "oom"]})
    >>> table.filter(parse_where("prompt_len in (32, 128) and not status != 'ok'", schema)).num_rows
    1
    """
    return _Parser(text, schema).parse()
