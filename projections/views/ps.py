"""The container list (`docker ps`, `GET /containers/json`): items, filters and the table.

Pure: the World and the clock come in as arguments.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from engine.core import names
from engine.core.state import Container, World, host_lost, status_of
from engine.errors import InvalidParameter, NotFound
from projections.views.filters import check_keys, match_kv, regex_match
from projections.views.points import human_duration
from projections.views.shape import (
    command_line,
    exposed_port_keys,
    network_endpoints,
    port_key,
    published_ports,
)

__all__ = ["STATES", "format_table", "human_status", "list_containers", "list_item", "table_row"]

STATES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")
# moorage's own state: a container whose host's lease lapsed (docs/decisions/0017-hosts.md).
# Accepted by the filter; Docker's error text keeps listing Docker's states.
LOST = "lost"
_HEALTH = ("starting", "healthy", "unhealthy", "none")
_NS = 1_000_000_000


def human_status(ctr: Container, now_ns: int, lost: bool = False) -> str:
    """Return Docker's human Status ("Up 3 minutes", "Exited (0) 5 seconds ago", ...).

    The state comes from `status_of` (the one home of Docker's precedence); this only
    words it. A lost host's container: "Lost (host NAME)".
    """
    status = status_of(ctr, lost)
    if status == "lost":
        return f"Lost (host {ctr.host})"
    if status == "running":
        return f"Up {human_duration(now_ns - ctr.started_at)}"
    if status == "paused":
        return f"Up {human_duration(now_ns - ctr.started_at)} (Paused)"
    if status == "restarting":
        return f"Restarting ({ctr.exit_code}) {human_duration(now_ns - ctr.finished_at)} ago"
    if status in _FIXED_TEXT:
        return _FIXED_TEXT[status]
    if ctr.finished_at == 0:  # exited, yet no finish time: Docker shows nothing
        return ""
    return f"Exited ({ctr.exit_code}) {human_duration(now_ns - ctr.finished_at)} ago"


_FIXED_TEXT = {"removing": "Removal In Progress", "dead": "Dead", "created": "Created"}


def _ports_list(ctr: Container) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for key, bindings in published_ports(ctr).items():
        port, proto = key.split("/", 1)
        if not bindings:
            items.append({"PrivatePort": int(port), "Type": proto})
            continue
        for b in bindings:
            item: dict[str, Any] = {"IP": b["HostIp"], "PrivatePort": int(port)}
            if b["HostPort"].isdigit():
                item["PublicPort"] = int(b["HostPort"])
            item["Type"] = proto
            items.append(item)
    return items


def list_item(world: World, ctr: Container, now_ns: int) -> dict[str, Any]:
    """Return one `/containers/json` item."""
    return {
        "Id": ctr.id,
        "Names": [f"/{ctr.name}"],
        "Image": ctr.image,
        "ImageID": ctr.image_id,
        "Command": command_line(ctr),
        "Created": ctr.created // _NS,
        "Ports": _ports_list(ctr),
        "Labels": dict(ctr.config.labels),
        "State": status_of(ctr, lost := host_lost(world, ctr)),
        "Status": human_status(ctr, now_ns, lost),
        "HostConfig": {"NetworkMode": ctr.host_config.network_mode},
        "NetworkSettings": {"Networks": network_endpoints(world, ctr)},
        "Mounts": [],
    }


Predicate = Callable[[Container], bool]


def _ref_created(world: World, ref: str) -> int:
    try:
        return names.resolve(world, ref).created
    except NotFound:
        raise NotFound(f"No such container: {ref}") from None


def _status(world: World, values: list[str]) -> Predicate:
    for v in values:
        if v not in STATES and v != LOST:
            raise InvalidParameter(
                f"invalid value for state ({v}): must be one of {', '.join(STATES)}")
    wanted = set(values)
    return lambda c: status_of(c, host_lost(world, c)) in wanted


def _name(world: World, values: list[str]) -> Predicate:
    # Docker matches the stored name, which has a leading slash; accept both forms.
    return lambda c: regex_match(values, "/" + c.name) or regex_match(values, c.name)


def _id(world: World, values: list[str]) -> Predicate:
    return lambda c: regex_match(values, c.id)


def _label(world: World, values: list[str]) -> Predicate:
    return lambda c: match_kv(values, c.config.labels)


def _exited(world: World, values: list[str]) -> Predicate:
    codes: set[int] = set()
    for value in values:
        try:
            codes.add(int(value))
        except ValueError:
            raise InvalidParameter(f"invalid filter 'exited={value}'") from None
    return lambda c: not c.running and c.started_at != 0 and c.exit_code in codes


def _ancestor(world: World, values: list[str]) -> Predicate:
    ids: set[str] = set()
    for ref in values:
        try:
            ids.add(names.resolve_image(world, ref))
        except NotFound:
            pass  # Docker only warns about an unknown ancestor: it then matches nothing
    given = {names.normalize_image_ref(r) for r in values}
    return lambda c: c.image_id in ids or names.normalize_image_ref(c.image) in given


def _before(world: World, values: list[str]) -> Predicate:
    limit = min(_ref_created(world, v) for v in values)
    return lambda c: c.created < limit


def _since(world: World, values: list[str]) -> Predicate:
    limit = max(_ref_created(world, v) for v in values)
    return lambda c: c.created > limit


def _health(world: World, values: list[str]) -> Predicate:
    for v in values:
        if v not in _HEALTH:
            raise InvalidParameter(f"Unrecognised filter value for health: {v}")
    none = "none" in values  # no health checks yet: every container's health is "none"
    return lambda c: none


def _network(world: World, values: list[str]) -> Predicate:
    return lambda c: any(n == v or n.startswith(v)
                         for n in network_endpoints(world, c) for v in values)


def _is_task(world: World, values: list[str]) -> Predicate:
    plain = "false" in values  # no swarm tasks here
    return lambda c: plain


def _publish(world: World, values: list[str]) -> Predicate:
    wanted = {port_key(v) for v in values}

    def match(c: Container) -> bool:
        ports = published_ports(c)
        keys = {k for k, b in ports.items() if b}
        hosts = {f"{b['HostPort']}/{k.split('/')[1]}" for k, bs in ports.items()
                 for b in bs or ()}
        return bool(wanted & (keys | hosts))
    return match


def _expose(world: World, values: list[str]) -> Predicate:
    wanted = {port_key(v) for v in values}
    return lambda c: bool(wanted & set(exposed_port_keys(c)))


def _volume(world: World, values: list[str]) -> Predicate:
    return lambda c: False  # no volumes yet


def _isolation(world: World, values: list[str]) -> Predicate:
    default = "default" in values or "" in values
    return lambda c: default


_FILTERS: dict[str, Callable[[World, list[str]], Predicate]] = {
    "ancestor": _ancestor, "before": _before, "since": _since, "exited": _exited, "id": _id,
    "isolation": _isolation, "label": _label, "name": _name, "status": _status,
    "health": _health, "volume": _volume, "network": _network, "is-task": _is_task,
    "publish": _publish, "expose": _expose,
}


def _predicates(world: World, filters: Mapping[str, list[str]]) -> list[Predicate]:
    check_keys(filters, _FILTERS)
    return [_FILTERS[key](world, values) for key, values in filters.items() if values]


def list_containers(world: World, all: bool = False,
                    filters: Mapping[str, list[str]] | None = None, limit: int | None = None,
                    *, now_ns: int) -> list[dict[str, Any]]:
    """Return `/containers/json` items, newest first, with Docker's filters and `all`/`limit`.

    `all` keeps Docker's parameter name (it shadows the builtin only inside this function).
    """
    filters = {k: list(v) for k, v in (filters or {}).items()}
    preds = _predicates(world, filters)
    # `status=` and `-n` include stopped containers, as in Docker.
    include_stopped = all or bool(filters.get("status")) or bool(limit and limit > 0)
    chosen = [c for c in world.containers.values()
              if (include_stopped or c.running) and not any(not p(c) for p in preds)]
    chosen.sort(key=lambda c: (c.created, c.id), reverse=True)
    if limit is not None and limit > 0:
        chosen = chosen[:limit]
    return [list_item(world, c, now_ns) for c in chosen]


# --- the `docker ps` table --------------------------------------------------------------

_COLUMNS = ("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")


def _ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _port_text(port: Mapping[str, Any]) -> str:
    inner = f"{port['PrivatePort']}/{port['Type']}"
    if "PublicPort" in port:
        return f"{port.get('IP', '')}:{port['PublicPort']}->{inner}"
    return inner


def table_row(item: Mapping[str, Any], now_ns: int, no_trunc: bool = False) -> list[str]:
    """Return one row of the `docker ps` table for a list item."""
    image = item["Image"]
    if image.startswith("sha256:") and not no_trunc:
        image = image[7:19]
    command = item["Command"] if no_trunc else _ellipsis(item["Command"], 20)
    created = f"{human_duration(now_ns - item['Created'] * _NS)} ago"
    return [item["Id"] if no_trunc else item["Id"][:12], image,
            json.dumps(command, ensure_ascii=False), created, item["Status"],
            ", ".join(_port_text(p) for p in item["Ports"]),
            ",".join(n.lstrip("/") for n in item["Names"])]


def format_table(items: list[dict[str, Any]], now_ns: int, no_trunc: bool = False) -> str:
    """Render list items as the `docker ps` table (columns padded like Docker's tabwriter)."""
    rows = [list(_COLUMNS)] + [table_row(i, now_ns, no_trunc) for i in items]
    widths = [max(10, max(len(r[col]) for r in rows) + 3) for col in range(len(_COLUMNS))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + row[-1])
    return "\n".join(lines)
