"""Expand build variables in Dockerfile words as the classic builder's shell lexer does.

Quotes are removed (single quotes: literal; double quotes: `$` still expands), the escape
token (`\\` or a backtick, per the `escape` directive) makes the next character literal,
and `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME-word}`, `${NAME:+word}`, `${NAME+word}`,
`${NAME:?msg}` and `${NAME?msg}` read the environment given. Unset names expand to "".
Pure: the caller passes the environment (the stage's ENV plus the build args in scope).
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.errors import InvalidParameter

__all__ = ["env_map", "expand", "expand_words", "split_words"]

_MODIFIERS = ("-", "+", "?")


def env_map(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Return "K=V" strings as a dict (a later K wins, as in a process environment)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = value
    return out


class _Lexer:
    """One pass over a word; `stop` ends a nested `${...}` word at its closing brace."""

    def __init__(self, text: str, env: Mapping[str, str], escape: str) -> None:
        self.text, self.pos, self.env, self.escape = text, 0, env, escape

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += 1
        return ch

    def word(self, stop: str = "") -> str:
        out: list[str] = []
        while self.pos < len(self.text):
            ch = self.peek()
            if stop and ch == stop:
                return "".join(out)
            self.pos += 1
            if ch == self.escape:
                nxt = self.next()
                out.append(nxt if nxt else ch)  # a trailing escape stays as written
            elif ch == "'":
                out.append(self._single())
            elif ch == '"':
                out.append(self._double())
            elif ch == "$":
                out.append(self._dollar())
            else:
                out.append(ch)
        if stop:
            raise InvalidParameter(f"missing '{stop}' in {self.text!r}")
        return "".join(out)

    def _single(self) -> str:
        end = self.text.find("'", self.pos)
        if end < 0:
            raise InvalidParameter("unexpected end of statement while looking for matching "
                                   "single-quote")
        out, self.pos = self.text[self.pos:end], end + 1
        return out

    def _double(self) -> str:
        out: list[str] = []
        while True:
            ch = self.next()
            if not ch:
                raise InvalidParameter("unexpected end of statement while looking for "
                                       "matching double-quote")
            if ch == '"':
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
            elif ch == self.escape and self.peek() in ('"', "$", self.escape):
                out.append(self.next())  # only these may be escaped inside double quotes
            else:
                out.append(ch)

    def _name(self) -> str:
        start = self.pos
        if self.peek().isdigit():
            self.pos += 1  # $1 style: one character
            return self.text[start:self.pos]
        while self.peek() and (self.peek().isalnum() or self.peek() == "_"):
            self.pos += 1
        return self.text[start:self.pos]

    def _dollar(self) -> str:
        if self.peek() != "{":
            name = self._name()
            return self.env.get(name, "") if name else "$"
        self.pos += 1
        name = self._name()
        if not name:
            raise InvalidParameter(f"bad substitution in {self.text!r}")
        if self.peek() == "}":
            self.pos += 1
            return self.env.get(name, "")
        colon = self.peek() == ":"
        if colon:
            self.pos += 1
        mod = self.next()
        if mod not in _MODIFIERS:
            raise InvalidParameter(f"unsupported modifier ({mod}) in substitution "
                                   f"of {name} in {self.text!r}")
        word = self.word(stop="}")
        self.pos += 1  # the closing brace
        value = self.env.get(name)
        empty = value is None or (colon and value == "")
        if mod == "-":
            return word if empty else str(value)
        if mod == "+":
            return "" if empty else word
        if empty:
            raise InvalidParameter(f"{name}: {word or 'is not allowed to be unset'}")
        return str(value)


def expand(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Return one word with quotes removed and variables expanded."""
    return _Lexer(text, env, escape).word()


def split_words(text: str, escape: str = "\\") -> list[str]:
    """Split on blanks outside quotes, keeping quotes and escapes in the words (Docker's
    parseWords): each word is expanded afterwards."""
    words: list[str] = []
    cur: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == escape and i + 1 < len(text):
            cur += [ch, text[i + 1]]
            i += 2
            continue
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch.isspace():
            if cur:
                words.append("".join(cur))
                cur = []
            i += 1
            continue
        cur.append(ch)
        i += 1
    if cur:
        words.append("".join(cur))
    return words


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Split text into words (quote-aware) and expand each (EXPOSE, VOLUME, ARG lists)."""
    return [expand(w, env, escape) for w in split_words(text, escape)]
