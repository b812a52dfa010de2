"""Read `.dockerignore` and decide which context paths it excludes.

The rules (Docker's ignore file and pattern matcher): `#` lines are comments, blank lines
are skipped, a leading `!` makes an exception, each pattern is cleaned and loses a leading
`/`; patterns use Go's `filepath.Match` syntax (`*`, `?`, `[...]`, `\\` escapes) plus `**`
for any number of directories; the last pattern that matches decides; a pattern that
matches a parent directory matches everything below it. Pure.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

__all__ = ["IgnoreMatcher", "Pattern", "compile_pattern", "read_patterns"]


@dataclass(frozen=True)
class Pattern:
    """One cleaned pattern, as a regular expression over slash-separated paths."""

    text: str
    exclusion: bool
    regex: re.Pattern[str]


def _clean(path: str) -> str:
    cleaned = posixpath.normpath(path) if path else "."
    return cleaned.lstrip("/") or "."


def _translate(pattern: str) -> str:
    """Turn a filepath.Match pattern with `**` into an anchored regular expression."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1
                    # "**/" matches zero or more whole directories
                    out.append("(.*/)?" if i < n else ".*")
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(ch))  # Go reports a bad pattern; treat it literally
            else:
                body = pattern[i + 1:end]  # Go negates a class with "^" only, as re does
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return "".join(out)


def compile_pattern(line: str) -> Pattern | None:
    """Compile one line of an ignore file; None for comments and blank lines."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    exclusion = text.startswith("!")
    if exclusion:
        text = text[1:].strip()
        if not text:
            return None
    text = _clean(text)
    return Pattern(text=text, exclusion=exclusion, regex=re.compile(_translate(text),
                                                                    re.DOTALL))


def read_patterns(content: str) -> list[Pattern]:
    """Return the patterns of an ignore file's text, in order."""
    return [p for p in (compile_pattern(line) for line in content.splitlines()) if p]


class IgnoreMatcher:
    """Say whether a context path (relative, `/`-separated) is excluded."""

    def __init__(self, patterns: list[Pattern]) -> None:
        self.patterns = patterns

    @classmethod
    def from_text(cls, content: str) -> IgnoreMatcher:
        return cls(read_patterns(content))

    def excluded(self, path: str) -> bool:
        """Apply every pattern in order; the last one that matches the path or one of its
        parent directories decides."""
        if not self.patterns:
            return False
        path = _clean(path)
        parts = path.split("/")
        parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
        matched = False
        for pattern in self.patterns:
            if pattern.exclusion != matched:
                continue  # it could not change the outcome
            hit = bool(pattern.regex.match(path)) or any(
                pattern.regex.match(p) for p in parents)
            if hit:
                matched = not pattern.exclusion
        return matched

    def has_exceptions(self) -> bool:
        """True if some `!` pattern may re-include a path below an excluded directory."""
        return any(p.exclusion for p in self.patterns)
