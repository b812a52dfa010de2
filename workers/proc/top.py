"""List a container's processes with the host's `ps`, as dockerd's `top` does.

moby daemon/top_unix.go: the container's pids come from its cgroup (cgroup.procs);
`ps <ps_args> -q<pid,...>` runs on the host, again without `-q` when ps refuses it (some
formats, such as `f`, cannot be combined with it), and only rows whose PID is the
container's are kept (a `-` PID row, a thread under `-m`, follows its process). The last
column takes the rest of the line. Errors carry dockerd's texts.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

from engine.errors import Internal
from workers.proc import cgroups

__all__ = ["container_pids", "parse_ps", "top", "validate_ps_args"]

# An `-o col=PID` header rename would fake the PID column (moby's psArgsRegexp; Go's \s
# is ASCII whitespace only).
_S = "\t\n\f\r "
_RENAME = re.compile(f"[{_S}]+([^{_S}]*)=[{_S}]*(PID[^{_S}]*)")
_FIELDS = re.compile(f"[{_S}]+")  # Go's fieldsASCII
_PS_TIMEOUT = 30.0


def validate_ps_args(ps_args: str) -> None:
    """Refuse a header rename of any column but `pid` to "PID…" (dockerd: a 500)."""
    for key, value in _RENAME.findall(ps_args):
        if key != "pid":
            raise Internal(f'specifying "{key}={value}" is not allowed')


def container_pids(cid: str, parent: str) -> list[int]:
    """Return the host pids in the container's cgroup (empty when the group is gone)."""
    dirs = cgroups.cgroup_dirs(cid, parent)
    group = dirs.get("unified") or dirs["pids"]
    try:
        with open(os.path.join(group, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def _fields(line: str) -> list[str]:
    return [f for f in _FIELDS.split(line) if f]


def parse_ps(output: str, pids: list[int]) -> dict[str, Any]:
    """Return Docker's TopResponse from ps output, keeping the container's rows."""
    lines = output.split("\n")
    titles = _fields(lines[0])
    if "PID" not in titles:
        raise Internal("Couldn't find PID field in ps output")
    at, wanted = titles.index("PID"), set(pids)
    rows: list[list[str]] = []
    follows = False  # the last numbered row was the container's
    for line in lines[1:]:
        fields = _fields(line)
        if not fields:
            continue
        if fields[at] == "-":
            keep = follows
        else:
            try:
                keep = follows = int(fields[at]) in wanted
            except ValueError:
                raise Internal(f"Unexpected pid '{fields[at]}': strconv.Atoi: parsing "
                               f"\"{fields[at]}\": invalid syntax") from None
        if keep:
            last = len(titles) - 1
            rows.append(fields[:last] + [" ".join(fields[last:])])
    return {"Titles": titles, "Processes": rows or None}  # Go's nil slice: null


def _ps(args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["ps", *args], capture_output=True, text=True,
                              timeout=_PS_TIMEOUT, errors="replace", check=False)
    except FileNotFoundError:
        raise Internal("ps: not found (docker top needs Debian's procps: apt-get install "
                       "procps)") from None


def top(cid: str, parent: str, ps_args: str = "") -> dict[str, Any]:
    """Return `docker top`'s answer for a running container's group under `parent`."""
    ps_args = ps_args or "-ef"
    validate_ps_args(ps_args)
    pids = container_pids(cid, parent)
    args = ps_args.split(" ")  # as dockerd splits: on single spaces
    done = _ps([*args, "-q" + ",".join(str(p) for p in pids)])
    if done.returncode != 0:
        done = _ps(args)
        if done.returncode != 0:
            first = done.stderr.split("\n", 1)[0]
            raise Internal(f"ps: {first or f'exit status {done.returncode}'}")
    return parse_ps(done.stdout, pids)
