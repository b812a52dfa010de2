"""Parse a Dockerfile into stages of instructions, as the classic builder reads it.

What is read: parser directives at the very top (`# escape=`` ` ``, `# syntax=` ignored),
comment lines (also inside a continuation), blank lines, line continuations with the
escape token, the instruction keyword (any case), `--flag[=value]` words where the
instruction takes them, and the JSON (exec) form of RUN, CMD, ENTRYPOINT, SHELL, VOLUME,
COPY and ADD. Variables are not expanded here (that needs the build's state): see
:mod:`moor.building.shellwords`. Pure: text in, structures out; errors are
`engine.errors.InvalidParameter` with the builder's texts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.errors import InvalidParameter
from workers.storage.execform import json_form

__all__ = ["Dockerfile", "Instruction", "Stage", "parse", "parse_instruction"]

KEYWORDS = frozenset({"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM",
                      "HEALTHCHECK", "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL",
                      "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"})
# The flags each instruction accepts (the builder's BFlags); others are refused.
_FLAGS = {"FROM": {"platform"}, "COPY": {"from", "chown", "chmod", "link", "parents",
                                         "exclude"},
          "ADD": {"chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"},
          "RUN": {"mount", "network", "security"},
          "HEALTHCHECK": {"interval", "timeout", "start-period", "start-interval", "retries"}}
_JSON_FORM = frozenset({"RUN", "CMD", "ENTRYPOINT", "SHELL", "VOLUME", "COPY", "ADD"})
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.*?)\s*$")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")


@dataclass(frozen=True)
class Instruction:
    """One instruction: its keyword, flags, arguments and the text as written."""

    keyword: str
    original: str  # the logical line as written ("RUN echo hi"), for the Step lines
    line: int
    rest: str = ""  # the arguments' raw text (after the flags)
    args: tuple[str, ...] = ()  # the JSON form's list, or the shell form's whole text
    json: bool = False
    flags: dict[str, str] = field(default_factory=dict)


@dataclass
class Stage:
    """A FROM and the instructions that follow it."""

    index: int
    base: str  # as written, expanded later with the meta ARGs
    name: str  # lower case, "" when unnamed
    platform: str
    source: Instruction
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    """The parsed file: ARGs before the first FROM, the stages, the escape token."""

    meta_args: list[Instruction]
    stages: list[Stage]
    escape: str = "\\"


def _directives(lines: list[str]) -> tuple[str, int]:
    """Read the parser directives; return the escape token and the first line after them."""
    escape, seen = "\\", set()
    for i, line in enumerate(lines):
        m = _DIRECTIVE.match(line.strip())
        if not m or not line.lstrip().startswith("#"):
            return escape, i
        name, value = m.group(1).lower(), m.group(2)
        if name in seen:
            raise InvalidParameter(f"only one {name} parser directive can be used")
        seen.add(name)
        if name == "escape":
            if value not in ("\\", "`"):
                raise InvalidParameter(f"invalid escape token '{value}' does not match ` or \\")
            escape = value
    return escape, len(lines)


def _logical_lines(lines: list[str], start: int, escape: str) -> list[tuple[int, str]]:
    """Join continuations and drop comments and blank lines; return (line number, text)."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    first = 0
    cont = re.compile(re.escape(escape) + r"[ \t]*$")
    for i in range(start, len(lines)):
        raw = lines[i].rstrip("\r")
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments and blank lines vanish, even inside a continuation
        if not buf:
            first = i + 1
            raw = raw.lstrip()
        m = cont.search(raw)
        if m:
            buf.append(raw[:m.start()])
            continue
        buf.append(raw)
        out.append((first, "".join(buf)))
        buf = []
    if buf:
        out.append((first, "".join(buf)))
    return out


def parse_instruction(text: str, line: int = 0, escape: str = "\\") -> Instruction:
    """Parse one logical line (also an ONBUILD trigger)."""
    keyword, _, rest = text.strip().partition(" ")
    word = keyword.upper()
    if "\t" in word:
        word, _, more = word.partition("\t")
        rest = more + " " + rest
    if word not in KEYWORDS:
        raise InvalidParameter(f"dockerfile parse error on line {line}: "
                               f"unknown instruction: {keyword}")
    rest = rest.strip()
    flags: dict[str, str] = {}
    allowed = _FLAGS.get(word, set())
    while rest.startswith("--") and allowed:
        flag, _, after = rest.partition(" ")
        name, eq, value = flag[2:].partition("=")
        if name not in allowed:
            raise InvalidParameter(f"dockerfile parse error on line {line}: "
                                   f"Unknown flag: {name}")
        flags[name] = value if eq else "true"
        rest = after.strip()
    listed = json_form(rest) if word in _JSON_FORM else None
    if word == "SHELL" and listed is None:
        raise InvalidParameter("SHELL requires the arguments to be in JSON form")
    args = tuple(listed) if listed is not None else ((rest,) if rest else ())
    if not rest and word not in ("CMD", "ENTRYPOINT", "RUN"):
        raise InvalidParameter(f"dockerfile parse error on line {line}: "
                               f"{word} requires at least one argument")
    return Instruction(keyword=word, original=text.strip(), line=line, rest=rest, args=args,
                       json=listed is not None, flags=flags)


def _stage(index: int, inst: Instruction, escape: str) -> Stage:
    words = inst.rest.split()
    name = ""
    if len(words) == 3 and words[1].lower() == "as":
        name = words[2].lower()
        if not _STAGE_NAME.match(name):
            raise InvalidParameter(f"invalid name for build stage: {words[2]!r}, name can't "
                                   "start with a number or contain symbols")
    elif len(words) != 1:
        raise InvalidParameter(f"dockerfile parse error on line {inst.line}: FROM requires "
                               "either one or three arguments")
    return Stage(index=index, base=words[0], name=name, platform=inst.flags.get("platform", ""),
                 source=inst)


def _check_onbuild(inst: Instruction, escape: str) -> None:
    trigger = parse_instruction(inst.rest, inst.line, escape)
    if trigger.keyword == "ONBUILD":
        raise InvalidParameter("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger.keyword in ("FROM", "MAINTAINER"):
        raise InvalidParameter(f"{trigger.keyword} isn't allowed as an ONBUILD trigger")


def parse(text: str, name: str = "Dockerfile") -> Dockerfile:
    """Parse a Dockerfile's text (`name`: its path, for the messages); InvalidParameter
    with the builder's text if malformed."""
    lines = text.split("\n")
    escape, start = _directives(lines)
    meta: list[Instruction] = []
    stages: list[Stage] = []
    for number, line in _logical_lines(lines, start, escape):
        inst = parse_instruction(line, number, escape)
        if inst.keyword == "FROM":
            stages.append(_stage(len(stages), inst, escape))
        elif not stages:
            if inst.keyword != "ARG":
                raise InvalidParameter(f"dockerfile parse error on line {number}: "
                                       "no build stage in current context")
            meta.append(inst)
        else:
            if inst.keyword == "ONBUILD":
                _check_onbuild(inst, escape)
            stages[-1].instructions.append(inst)
    if not stages and not meta:
        raise InvalidParameter(f"the Dockerfile ({name}) cannot be empty")
    names = [s.name for s in stages if s.name]
    for dup in {n for n in names if names.count(n) > 1}:
        raise InvalidParameter(f"duplicate name {dup}")
    return Dockerfile(meta_args=meta, stages=stages, escape=escape)
