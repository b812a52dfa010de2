"""Admission: which inbox may carry which command, and what a principal may ask for (pure).

Two checks, both from facts the reducer authenticated (the stream an entry came from),
never from the payload:

- `accepts(kind, cmd)`: a control stream carries control commands, the reports stream
  reports, the reducer's own stream its own requests. An entry of the wrong kind is not
  decided at all (the intake quarantines it with the reason): deciding it would take its
  command id's dedupe mark, so a forged report could shadow the genuine one.
- `check(origin, env, cmd)`: the admission policy on container creation (and on a
  privileged exec, which grants every capability in a running container), decided like
  Docker's guards: a refusal is a `CommandRejected` fact (403) naming the principal, the
  declared actor and the rule, so `moor replay` shows who was refused what.

The policy (a JSON file, engine.config.load_policy) lists, per rule, the principals that
may go past a container's isolation; a rule left out allows everyone, so the default
policy allows everything::

    {"privileged": ["ops"], "capabilities": ["ops", "ci"], "devices": [],
     "host_namespaces": ["ops"]}
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from commands import schema as c
from engine.errors import Forbidden
from engine.keys import CONTROL, INTERNAL, REPORTS
from events.caps import DEFAULT_CAPS, effective_caps
from events.specs import HostConfig

__all__ = ["ALLOW_ALL", "RULES", "Origin", "Policy", "Refused", "accepts", "check"]


class Policy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per rule, the principals allowed to break out that way (None: everyone; (): nobody)."""

    privileged: tuple[str, ...] | None = None  # HostConfig.Privileged
    capabilities: tuple[str, ...] | None = None  # any capability beyond Docker's default set
    devices: tuple[str, ...] | None = None  # host devices, device cgroup rules
    host_namespaces: tuple[str, ...] | None = None  # pid/ipc/uts/network mode "host"

    @property
    def allows_all(self) -> bool:
        """Tell whether no rule restricts anyone (engine.config.load_policy then hands the
        decider ALLOW_ALL itself, which it skips by identity: no cost per command)."""
        return all(getattr(self, rule) is None for rule in RULES)


RULES = ("privileged", "capabilities", "devices", "host_namespaces")
ALLOW_ALL = Policy()


class Origin(NamedTuple):
    """Where a command came from, as the reducer knows it: the inbox's principal and kind,
    and the policy in force."""

    principal: str
    kind: str = CONTROL
    policy: Policy = ALLOW_ALL


class Refused(Forbidden):
    """Refused by the admission policy: Docker's 403, and the rule that refused."""

    def __init__(self, message: str, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


_REPORTS = frozenset(c.REPORT_TYPES)
_INTERNAL_ONLY = frozenset((c.ResumeRestart, c.MarkHostLost, c.MarkHostReturned,
                            c.DropLostContainer))


def accepts(kind: str, cmd: c.Command) -> str:
    """Return why an inbox of `kind` must not carry `cmd`, or "" when it may."""
    report = type(cmd) in _REPORTS
    if kind == REPORTS:
        return "" if report else f"{type(cmd).__name__} is not a report: refused on a " \
                                 "reports stream"
    if report:
        return f"{type(cmd).__name__} is a report: refused on a {kind} stream"
    if kind == CONTROL and type(cmd) in _INTERNAL_ONLY:
        return f"{type(cmd).__name__} is the reducer's own: refused on a control stream"
    if kind not in (CONTROL, INTERNAL):
        return f"unknown inbox kind {kind!r}"
    return ""


def check(origin: Origin, env: c.Envelope, cmd: c.Command) -> None:
    """Raise Refused when the policy does not let `origin.principal` ask for `cmd`."""
    if type(cmd) is c.CreateContainer:
        breaches, verb = _breaches(cmd.host_config), "create a container with"
    elif type(cmd) is c.CreateExec and cmd.config.privileged:
        # `exec --privileged` grants every capability inside any running container.
        breaches, verb = [("privileged", "--privileged")], "run an exec with"
    else:
        return
    for rule, what in breaches:
        allowed = getattr(origin.policy, rule)
        if allowed is not None and origin.principal not in allowed:
            actor = f" (on behalf of {env.actor})" if env.actor else ""
            raise Refused(f"authorization denied by policy: principal {origin.principal}"
                          f"{actor} may not {verb} {what} (rule {rule})", rule)


def _breaches(host: HostConfig) -> list[tuple[str, str]]:
    """Return (rule, what) for every way the host config reaches past the isolation."""
    found = []
    if host.privileged:
        found.append(("privileged", "--privileged"))
    extra = [cap for cap in effective_caps(host.cap_add, host.cap_drop)
             if cap not in DEFAULT_CAPS]
    if extra:
        found.append(("capabilities", "capabilities beyond the default set: "
                      + ", ".join(extra)))
    if host.devices or host.device_cgroup_rules:
        found.append(("devices", "host devices"))
    shared = [name for name, mode in (("pid", host.pid_mode), ("ipc", host.ipc_mode),
                                      ("uts", host.uts_mode), ("network", host.network_mode))
              if mode == "host"]
    if shared:
        found.append(("host_namespaces", "the host's " + ", ".join(shared) + " namespace"
                      + ("s" if len(shared) > 1 else "")))
    return found
