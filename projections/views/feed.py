"""A `docker events`-compatible feed folded from the events stream (pure).

Docker's events carry the container's name, image and labels as they were at that moment.
`FeedState` keeps them per container id (also after destroy) so a replay of old events
renders them as they were, not as the live state is now.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine.core.networks import derived_network_id
from engine.core.state import World
from events import model as e
from projections.views.filters import check_keys, fuzzy_match, match_kv
from projections.views.imagefeed import image_action, image_actor
from projections.views.points import id_ms, rfc3339_nano

__all__ = [
    "EVENT_FILTER_KEYS",
    "FeedState",
    "Known",
    "docker_event",
    "event_filter",
    "feed",
    "format_event",
    "observe",
]

EVENT_FILTER_KEYS = ("config", "container", "daemon", "event", "image", "label", "network",
                     "node", "plugin", "scope", "secret", "service", "type", "volume")
# Docker prefix-matches these actions because they carry a suffix ("exec_start: sh").
_PREFIX_ACTIONS = ("exec_create", "exec_start", "health_status")
_NS = 1_000_000_000


class Known(NamedTuple):
    """What a container's events say about it: name (no slash), image as given, labels."""

    name: str
    image: str
    labels: Mapping[str, str]


@dataclass
class FeedState:
    """The fold behind the feed: every container ever seen, by id."""

    containers: dict[str, Known] = field(default_factory=dict)
    execs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # exec id -> its Cmd
    networks: dict[str, str] = field(default_factory=dict)  # user network name -> its id

    @classmethod
    def from_world(cls, world: World) -> FeedState:
        """Seed from a snapshot (for a feed that starts at the live state)."""
        return cls({cid: Known(c.name, c.image, c.config.labels)
                    for cid, c in world.containers.items()},
                   {x.id: x.config.cmd for c in world.containers.values()
                    for x in c.execs.values()},
                   {name: info.id for name, info in world.network_info.items()})


def observe(state: FeedState, record: e.EventRecord) -> FeedState:
    """Fold one record into the feed state (in place) and return it."""
    ev = record.event
    cid = record.meta.container_id
    if isinstance(ev, e.ContainerCreated):
        state.containers[cid] = Known(ev.name, ev.image, ev.config.labels)
    elif isinstance(ev, e.ContainerRenamed) and cid in state.containers:
        state.containers[cid] = state.containers[cid]._replace(name=ev.new_name)
    elif isinstance(ev, e.ExecCreated):
        state.execs[ev.exec_id] = ev.config.cmd
    elif isinstance(ev, e.NetworkCreated):
        state.networks[ev.network.name] = ev.info.id
    return state


def _known(record: e.EventRecord, source: FeedState | World) -> Known:
    ev = record.event
    cid = record.meta.container_id
    if isinstance(ev, e.ContainerCreated):
        return Known(ev.name, ev.image, ev.config.labels)
    if isinstance(source, FeedState):
        known = source.containers.get(cid)
    else:
        ctr = source.containers.get(cid)
        known = Known(ctr.name, ctr.image, ctr.config.labels) if ctr is not None else None
    known = known or Known("", "", {})
    if isinstance(ev, e.ContainerRenamed):
        return known._replace(name=ev.new_name)
    if isinstance(ev, e.ContainerDestroyed):
        return known._replace(name=ev.name)
    return known


_CONTAINER_ACTIONS: dict[type, str] = {
    e.ContainerCreated: "create",
    e.ContainerStarted: "start",
    e.ContainerRestarted: "restart",
    e.SignalRequested: "kill",
    e.ContainerDied: "die",
    e.ContainerOOMKilled: "oom",
    e.ContainerStopped: "stop",
    e.ContainerDestroyed: "destroy",
    e.ContainerRenamed: "rename",
    e.ContainerPaused: "pause",
    e.ContainerUnpaused: "unpause",
    e.ExecCreated: "exec_create",
    e.ExecStarted: "exec_start",
    e.ExecDied: "exec_die",
    e.ContainerUpdated: "update",
    e.ContainerCommitted: "commit",
}


def _exec_cmd(record: e.EventRecord, source: FeedState | World) -> tuple[str, ...]:
    ev = record.event
    if isinstance(ev, e.ExecCreated):
        return ev.config.cmd
    exec_id = getattr(ev, "exec_id", "")
    if isinstance(source, FeedState):
        return source.execs.get(exec_id, ())
    ctr = source.containers.get(record.meta.container_id)
    found = ctr.execs.get(exec_id) if ctr is not None else None
    return found.config.cmd if found is not None else ()


def _times(record: e.EventRecord, stream_id: str) -> dict[str, int]:
    ns = record.meta.at or id_ms(stream_id) * 1_000_000
    return {"time": ns // _NS, "timeNano": ns}


def _container_event(record: e.EventRecord, stream_id: str, action: str,
                     known: Known) -> dict[str, Any]:
    ev = record.event
    cid = record.meta.container_id
    attrs = {**known.labels, "image": known.image, "name": known.name}
    if isinstance(ev, e.SignalRequested):
        attrs["signal"] = str(ev.signal)
    elif isinstance(ev, e.ContainerDied):
        attrs["exitCode"] = str(ev.exit_code)
    elif isinstance(ev, e.ContainerRenamed):
        attrs["oldName"] = f"/{ev.old_name}"  # Docker sends the old name with its slash
    if isinstance(ev, e.ExecCreated | e.ExecStarted | e.ExecDied):
        attrs["execID"] = ev.exec_id
    if isinstance(ev, e.ExecDied):
        attrs["exitCode"] = str(ev.exit_code)
    elif isinstance(ev, e.ContainerCommitted):
        attrs |= {"comment": ev.comment, "imageID": ev.image_id, "imageRef": ev.image_ref}
    elif isinstance(ev, e.ContainerActionNoted):
        attrs |= ev.attributes
    return {"status": action, "id": cid, "from": known.image, "Type": "container",
            "Action": action, "Actor": {"ID": cid, "Attributes": attrs}, "scope": "local",
            **_times(record, stream_id)}


def _network_event(record: e.EventRecord, stream_id: str, action: str, network: str,
                   source: FeedState | World) -> dict[str, Any]:
    """Docker's network event: Actor.ID the network's id; `container` for (dis)connects."""
    known = source.networks if isinstance(source, FeedState) else {
        name: info.id for name, info in source.network_info.items()}
    net_id = known.get(network) or derived_network_id(network)
    attrs = {"name": network, "type": "bridge"}
    if action in ("connect", "disconnect"):
        attrs["container"] = record.meta.container_id
    return {"Type": "network", "Action": action, "Actor": {"ID": net_id, "Attributes": attrs},
            "scope": "local", **_times(record, stream_id)}


def _image_event(record: e.EventRecord, stream_id: str, action: str) -> dict[str, Any]:
    actor, attrs = image_actor(record.event)
    return {"status": action, "id": actor, "Type": "image", "Action": action,
            "Actor": {"ID": actor, "Attributes": attrs}, "scope": "local",
            **_times(record, stream_id)}


_VOLUME_ACTIONS: dict[type, str] = {
    e.VolumeCreated: "create",
    e.VolumeMounted: "mount",
    e.VolumeUnmounted: "unmount",
    e.VolumeRemoved: "destroy",
}


def _volume_event(record: e.EventRecord, stream_id: str, action: str) -> dict[str, Any]:
    ev = record.event
    attrs = {"driver": ev.driver}  # type: ignore[attr-defined]
    if isinstance(ev, e.VolumeMounted | e.VolumeUnmounted):
        attrs["container"] = record.meta.container_id
    if isinstance(ev, e.VolumeMounted):
        attrs |= {"destination": ev.destination, "read/write": str(ev.rw).lower(),
                  "propagation": ev.propagation}
    name = ev.name  # type: ignore[attr-defined]
    return {"Type": "volume", "Action": action, "Actor": {"ID": name, "Attributes": attrs},
            "scope": "local", **_times(record, stream_id)}


def docker_event(record: e.EventRecord, stream_id: str,
                 source: FeedState | World) -> dict[str, Any] | None:
    """Return the `docker events` object for a record, or None for internal facts.

    `source` gives the container's name, image and labels (a FeedState folded up to this
    record, before or after it, or a World for live events).
    """
    ev = record.event
    action = _CONTAINER_ACTIONS.get(type(ev))
    if action is not None:
        if isinstance(ev, e.ExecCreated | e.ExecStarted):
            # Docker's action: "exec_start: " + entrypoint + " " + the args joined.
            cmd = _exec_cmd(record, source)
            action = f"{action}: {cmd[0] if cmd else ''} {' '.join(cmd[1:])}"
        return _container_event(record, stream_id, action, _known(record, source))
    if isinstance(ev, e.ContainerActionNoted):
        return _container_event(record, stream_id, ev.action, _known(record, source))
    if isinstance(ev, e.NetworkConnected):
        return _network_event(record, stream_id, "connect", ev.endpoint.network, source)
    if isinstance(ev, e.NetworkDisconnected):
        return _network_event(record, stream_id, "disconnect", ev.network, source)
    if isinstance(ev, e.NetworkCreated):
        return _network_event(record, stream_id, "create", ev.network.name, source)
    if isinstance(ev, e.NetworkRemoved):
        return _network_event(record, stream_id, "destroy", ev.name, source)
    image = image_action(ev)
    if image is not None:
        return _image_event(record, stream_id, image)
    volume = _VOLUME_ACTIONS.get(type(ev))
    if volume is not None:
        return _volume_event(record, stream_id, volume)
    return None


def _bare_image(ref: str) -> str:
    if ref.startswith("sha256:"):
        return ref
    last = ref.rsplit("/", 1)[-1]
    return ref.rsplit(":", 1)[0] if ":" in last else ref


def _match_image(values: list[str], ev: Mapping[str, Any]) -> bool:
    # Docker compares exactly with the actor id, the image name, and both without a tag.
    attrs = ev["Actor"]["Attributes"]
    name = attrs.get("name" if ev["Type"] == "image" else "image", "")
    actor_id = ev["Actor"]["ID"]
    candidates = {actor_id, name, _bare_image(actor_id), _bare_image(name)} - {""}
    return any(v in candidates for v in values)


def event_filter(filters: Mapping[str, list[str]] | None) -> Callable[[Mapping[str, Any]], bool]:
    """Return a predicate over docker events with Docker's filter semantics (keys validated)."""
    wanted = {k: list(v) for k, v in (filters or {}).items() if v}
    check_keys(wanted, EVENT_FILTER_KEYS)

    def include(ev: Mapping[str, Any]) -> bool:
        actor = ev["Actor"]
        for key, values in wanted.items():
            if key == "event":
                action = ev["Action"]
                if not any(action == v or (v.startswith(_PREFIX_ACTIONS) and
                                           action.startswith(v)) for v in values):
                    return False
            elif key == "type":
                if ev["Type"] not in values:
                    return False
            elif key == "scope":
                if ev.get("scope", "local") not in values:
                    return False
            elif key == "label":
                if not match_kv(values, actor["Attributes"]):
                    return False
            elif key == "image":
                if not _match_image(values, ev):
                    return False
            elif key == "daemon":
                return False  # no daemon events are produced
            else:
                # container, network, volume, ...: Docker's fuzzyMatchName on this type only.
                if ev["Type"] != key:
                    return False
                if not (fuzzy_match(values, actor["ID"]) or
                        fuzzy_match(values, actor["Attributes"].get("name", ""))):
                    return False
        return True

    return include


def feed(records: Iterable[tuple[str, e.EventRecord]], state: FeedState | None = None,
         filters: Mapping[str, list[str]] | None = None,
         emit: Callable[[str], bool] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Fold records into `state` and yield (stream id, docker event) for those that pass.

    `emit(stream_id)` decides which records are shown (e.g. after --since); every record is
    folded regardless, so names and images stay right.
    """
    state = state if state is not None else FeedState()
    include = event_filter(filters)
    for stream_id, record in records:
        observe(state, record)
        if emit is not None and not emit(stream_id):
            continue
        ev = docker_event(record, stream_id, state)
        if ev is not None and include(ev):
            yield stream_id, ev


def format_event(ev: Mapping[str, Any]) -> str:
    """Render one event as the docker CLI's default line (time type action id (k=v, ...))."""
    attrs = ev["Actor"]["Attributes"]
    text = f"{rfc3339_nano(ev['timeNano'])} {ev['Type']} {ev['Action']} {ev['Actor']['ID']}"
    if attrs:
        text += " (" + ", ".join(f"{k}={attrs[k]}" for k in sorted(attrs)) + ")"
    return text
