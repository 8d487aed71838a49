"""Build an encoder from arc24's expression syntax without `eval`.

arc24 `eval`s strings such as "GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))". We
accept the same strings with a tiny recursive-descent parser:

    expr    := NAME "(" [arg ("," arg)*] [","] ")"
    arg     := [NAME "="] (expr | INT | STRING)
    STRING  := '...' or "..." with the escapes \\ \' \" \n \t

Only the seven encoder names are callable, so a string can build encoders and nothing else.
"""

from __future__ import annotations

import inspect
import re

from arclens.errors import UserError
from arclens.prompts.encoders import ENCODER_CLASSES, GridEncoder

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<int>[+-]?\d+)
      | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<punct>[(),=])
    )""",
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = self._tokenize(text)
        self.pos = 0

    def _fail(self, what: str) -> UserError:
        return UserError(f"--encoder {self.text!r}: {what}")

    def _tokenize(self, text: str) -> list[tuple[str, str]]:
        tokens, i = [], 0
        while i < len(text):
            if text[i:].strip() == "":
                break
            m = _TOKEN.match(text, i)
            if not m:
                raise self._fail(f"unexpected character {text[i:].lstrip()[0]!r}")
            kind = m.lastgroup
            tokens.append((kind, m.group(kind)))
            i = m.end()
        return tokens

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, kind: str, value: str | None = None) -> str:
        tok = self._peek()
        if tok is None or tok[0] != kind or (value is not None and tok[1] != value):
            found = "the end" if tok is None else repr(tok[1])
            raise self._fail(f"expected {value or kind!r}, found {found}")
        self.pos += 1
        return tok[1]

    def parse(self) -> GridEncoder:
        encoder = self._expr()
        if self._peek() is not None:
            raise self._fail(f"unexpected {self._peek()[1]!r} after the expression")
        return encoder

    def _expr(self) -> GridEncoder:
        name = self._take("name")
        cls = ENCODER_CLASSES.get(name)
        if cls is None:
            raise self._fail(f"unknown encoder {name!r}; known: {', '.join(ENCODER_CLASSES)}")
        self._take("punct", "(")
        args, kwargs = [], {}
        while self._peek() != ("punct", ")"):
            if (
                self.pos + 1 < len(self.tokens)
                and self._peek()[0] == "name"
                and self.tokens[self.pos + 1] == ("punct", "=")
            ):
                key = self._take("name")
                self._take("punct", "=")
                kwargs[key] = self._value()
            else:
                if kwargs:
                    raise self._fail("positional argument after a keyword argument")
                args.append(self._value())
            if self._peek() == ("punct", ","):
                self._take("punct", ",")
            elif self._peek() != ("punct", ")"):
                raise self._fail(f"expected ',' or ')' in the arguments of {name}")
        self._take("punct", ")")
        try:
            inspect.signature(cls).bind(*args, **kwargs)
            return cls(*args, **kwargs)
        except (TypeError, ValueError) as err:
            raise self._fail(f"bad arguments for {name}: {err}") from None

    def _value(self):
        tok = self._peek()
        if tok is None:
            raise self._fail("unexpected end")
        kind, value = tok
        if kind == "name":
            return self._expr()
        self.pos += 1
        if kind == "int":
            return int(value)
        if kind == "string":
            return re.sub(
                r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), value[1:-1], flags=re.DOTALL
            )
        raise self._fail(f"unexpected {value!r}")


def create_grid_encoder(expression: str) -> GridEncoder:
    """The encoder an arc24 expression describes; UserError for anything else."""
    if not isinstance(expression, str) or not expression.strip():
        raise UserError(
            "--encoder: expected an encoder expression such as 'GridCodeBlockEncoder(MinimalGridEncoder())'"
        )
    return _Parser(expression).parse()
