"""What each Dockerfile instruction does to a stage's state, and the cache key of a step.

Pure: a :class:`StageState` (the image Config in Docker's JSON names, the build args in
scope) and an instruction in, the new Config and the step's "run config" out. The run
config is what the classic builder compares to find a cached step: its `Cmd` encodes the
step (`/bin/sh -c #(nop) ENV A=b` for a metadata step, `|1 K=V /bin/sh -c make` for a RUN
that sees build args, `COPY file:<sum> in /app ` for a copy), the rest is the state's
Config. The cache key is a digest of the parent image id and that run config.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass, field, replace
from typing import Any

from engine.errors import InvalidParameter
from moor.building.dockerfile import Instruction, parse_instruction
from moor.building.shellwords import env_map, expand, expand_words, split_words
from workers.storage.execform import json_form

__all__ = ["DEFAULT_SHELL", "PREDEFINED_ARGS", "StageState", "apply", "cache_key",
           "go_list", "nop_cmd", "parse_duration", "run_argv", "run_build_args", "run_env",
           "saved_run_cmd"]

DEFAULT_SHELL = ("/bin/sh", "-c")
# Usable without an ARG line, and left out of the cache key and history unless declared.
PREDEFINED_ARGS = frozenset({"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
                             "FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy",
                             "ALL_PROXY", "all_proxy"})
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
            "m": 60_000_000_000, "h": 3_600_000_000_000}


@dataclass(frozen=True)
class StageState:
    """A stage between two steps."""

    config: dict[str, Any]  # the image Config, Docker's names ("Env", "Cmd", ...)
    image_id: str
    build_args: dict[str, str] = field(default_factory=dict)  # --build-arg, as given
    args: dict[str, str | None] = field(default_factory=dict)  # ARGs declared in the stage
    meta: dict[str, str | None] = field(default_factory=dict)  # ARGs before the first FROM
    cmd_set: bool = False  # a CMD in this stage (then ENTRYPOINT keeps it)
    escape: str = "\\"
    author: str = ""

    def env(self) -> dict[str, str]:
        """The variables instruction words expand with: ENV wins over build args."""
        out = {k: v for k, v in self.args.items() if v is not None}
        out.update(env_map(self.config.get("Env") or []))
        return out


def go_list(items: list[str] | tuple[str, ...]) -> str:
    """Format a string list as Go's %q does (`["a" "b"]`): the history's texts."""
    return "[" + " ".join(json.dumps(s, ensure_ascii=False) for s in items) + "]"


def nop_cmd(comment: str) -> list[str]:
    """The Cmd that records a metadata step (Docker's `#(nop) ` comment)."""
    return [*DEFAULT_SHELL, "#(nop) " + comment]


def parse_duration(text: str, what: str) -> int:
    """Read a Go duration ("30s", "1m30s") as nanoseconds."""
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise InvalidParameter(f'time: invalid duration "{text}" for {what}')
    return int(total)


def _pairs(inst: Instruction, env: dict[str, str], esc: str) -> list[tuple[str, str]]:
    """Read ENV/LABEL `K=V ...` (ENV also `K V`), expanding keys and values."""
    words = split_words(inst.rest, esc)
    if inst.keyword == "ENV" and words and "=" not in words[0]:
        key, _, value = inst.rest.partition(" ")
        return [(expand(key, env, esc), expand(value.strip(), env, esc))]
    out = []
    for word in words:
        if "=" not in word:
            raise InvalidParameter(f"Syntax error - can't find = in {word!r}. "
                                   "Must be of the form: name=value")
        key, _, value = word.partition("=")
        out.append((expand(key, env, esc), expand(value, env, esc)))
    return out


def _set_env(env: list[str], key: str, value: str) -> list[str]:
    return [e for e in env if e.partition("=")[0] != key] + [f"{key}={value}"]


def _healthcheck(inst: Instruction) -> dict[str, Any]:
    words = inst.rest.split(None, 1)
    kind = words[0].upper() if words else ""
    if kind == "NONE":
        if len(words) > 1 or inst.flags:
            raise InvalidParameter("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if kind != "CMD" or len(words) < 2:
        raise InvalidParameter("Unknown type for HEALTHCHECK (expected CMD or NONE)")
    rest = words[1].strip()
    words = json_form(rest)
    out: dict[str, Any] = {"Test": ["CMD", *words] if words is not None else
                           ["CMD-SHELL", rest]}
    for flag, name in (("interval", "Interval"), ("timeout", "Timeout"),
                       ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
        if flag in inst.flags:
            out[name] = parse_duration(inst.flags[flag], f"--{flag}")
    if "retries" in inst.flags:
        try:
            out["Retries"] = int(inst.flags["retries"])
        except ValueError:
            raise InvalidParameter(f"invalid --retries: {inst.flags['retries']}") from None
    return out


def _ports(words: list[str]) -> list[str]:
    out = []
    for word in words:
        port, _, proto = word.partition("/")
        proto = proto.lower() or "tcp"
        low, _, high = port.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise InvalidParameter(f"invalid containerPort: {port}")
        out += [f"{p}/{proto}" for p in range(int(low), int(high or low) + 1)]
    return out


def _command(inst: Instruction, config: dict[str, Any]) -> list[str]:
    """The argv of a RUN/CMD/ENTRYPOINT: its JSON form, or the stage's shell plus the text."""
    if inst.json:
        return list(inst.args)
    shell = config.get("Shell") or list(DEFAULT_SHELL)
    return [*shell, inst.rest] if inst.rest else []


def _meta(state: StageState, inst: Instruction) -> tuple[dict[str, Any], str, StageState]:
    """Apply a metadata instruction; return the new Config, its history text and state."""
    cfg = dict(state.config)
    env = state.env()
    kw = inst.keyword
    if kw == "ENV":
        pairs = _pairs(inst, env, state.escape)
        new_env = list(cfg.get("Env") or [])
        for key, value in pairs:
            new_env = _set_env(new_env, key, value)
        cfg["Env"] = new_env
        return cfg, "ENV " + " ".join(f"{k}={v}" for k, v in pairs), state
    if kw == "LABEL":
        pairs = _pairs(inst, env, state.escape)
        cfg["Labels"] = {**(cfg.get("Labels") or {}), **dict(pairs)}
        return cfg, "LABEL " + " ".join(f"{k}={v}" for k, v in pairs), state
    if kw == "CMD":
        cfg["Cmd"] = _command(inst, cfg)
        return cfg, "CMD " + go_list(cfg["Cmd"]), replace(state, cmd_set=True)
    if kw == "ENTRYPOINT":
        cfg["Entrypoint"] = _command(inst, cfg) or None
        if not state.cmd_set:
            cfg["Cmd"] = None  # an inherited CMD goes; one set in this stage stays
        return cfg, "ENTRYPOINT " + go_list(cfg["Entrypoint"] or []), state
    if kw == "EXPOSE":
        ports = _ports(expand_words(inst.rest, env, state.escape))
        cfg["ExposedPorts"] = {**(cfg.get("ExposedPorts") or {}), **{p: {} for p in ports}}
        return cfg, "EXPOSE " + " ".join(sorted(ports)), state
    if kw == "VOLUME":
        paths = ([expand(p, env, state.escape) for p in inst.args] if inst.json
                 else expand_words(inst.rest, env, state.escape))
        if any(not p.strip() for p in paths):
            raise InvalidParameter("VOLUME specified can not be an empty string")
        cfg["Volumes"] = {**(cfg.get("Volumes") or {}), **{p: {} for p in paths}}
        return cfg, "VOLUME " + "[" + " ".join(paths) + "]", state
    if kw == "WORKDIR":
        wanted = expand(inst.rest, env, state.escape)
        cfg["WorkingDir"] = posixpath.normpath(posixpath.join("/", cfg.get("WorkingDir") or "/",
                                                              wanted))
        return cfg, "WORKDIR " + cfg["WorkingDir"], state
    if kw == "USER":
        cfg["User"] = expand(inst.rest, env, state.escape)
        return cfg, "USER " + cfg["User"], state
    if kw == "STOPSIGNAL":
        cfg["StopSignal"] = expand(inst.rest, env, state.escape)
        return cfg, "STOPSIGNAL " + cfg["StopSignal"], state
    if kw == "HEALTHCHECK":
        cfg["Healthcheck"] = _healthcheck(inst)
        return cfg, "HEALTHCHECK " + json.dumps(cfg["Healthcheck"], sort_keys=True), state
    if kw == "ONBUILD":
        trigger = parse_instruction(inst.rest, inst.line, state.escape)
        cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), trigger.original]
        return cfg, "ONBUILD " + trigger.original, state
    if kw == "SHELL":
        cfg["Shell"] = list(inst.args)
        return cfg, "SHELL " + go_list(inst.args), state
    if kw == "MAINTAINER":
        return cfg, "MAINTAINER " + inst.rest, replace(state, author=inst.rest)
    if kw == "ARG":
        return _arg(state, inst, cfg)
    raise InvalidParameter(f"{kw} is not a metadata instruction")


def _arg(state: StageState, inst: Instruction,
         cfg: dict[str, Any]) -> tuple[dict[str, Any], str, StageState]:
    """Declare build args: the --build-arg value, else the default, else unset."""
    args = dict(state.args)
    texts = []
    for word in split_words(inst.rest, state.escape):
        name, eq, default = word.partition("=")
        value: str | None
        if name in state.build_args:
            value = state.build_args[name]
        elif eq:
            value = expand(default, state.env(), state.escape)
        else:
            value = state.args.get(name, state.meta.get(name))  # a meta ARG keeps its value
        args[name] = value
        texts.append(f"{name}={expand(default, state.env(), state.escape)}" if eq else name)
    return cfg, "ARG " + " ".join(texts), replace(state, args=args)


def apply(state: StageState, inst: Instruction) -> tuple[StageState, list[str]]:
    """Apply a metadata instruction; return the new state and the step's run-config Cmd."""
    cfg, comment, state = _meta(state, inst)
    return replace(state, config=cfg), nop_cmd(comment)


def run_build_args(state: StageState) -> list[str]:
    """The declared build args a RUN sees as variables (not shadowed by ENV), sorted."""
    env_keys = set(env_map(state.config.get("Env") or []))
    return sorted(f"{k}={v}" for k, v in state.args.items()
                  if v is not None and k not in env_keys)


def run_argv(state: StageState, inst: Instruction) -> list[str]:
    """The RUN's command line: its JSON form, or the stage's SHELL and the text."""
    argv = _command(inst, state.config)
    if not argv:
        raise InvalidParameter("RUN requires at least one argument")
    return argv


def saved_run_cmd(argv: list[str], used_args: list[str]) -> list[str]:
    """The RUN's Cmd in its run config and history: `|N K=V ...` before the command."""
    return [f"|{len(used_args)}", *used_args, *argv] if used_args else list(argv)


def run_env(state: StageState) -> list[str]:
    """The RUN container's environment: the Config's Env, the declared build args it does
    not shadow, and the predefined proxy args given but not declared."""
    env = list(state.config.get("Env") or [])
    keys = set(env_map(env)) | set(state.args)
    extra = [f"{k}={v}" for k, v in sorted(state.build_args.items())
             if k in PREDEFINED_ARGS and k not in keys]
    return env + run_build_args(state) + extra


def cache_key(parent_id: str, run_config: dict[str, Any]) -> str:
    """Digest the parent and the run config: equal keys mean an equal step."""
    text = json.dumps({"parent": parent_id, "config": run_config}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
