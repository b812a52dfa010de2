"""Decide volumes and a container's mounts (Docker's volume service and mount parsing). Pure.

A container's mounts are resolved once, at create, into `MountPoint`s recorded with the
container (Docker's registerMountPoints): `-v` binds (`HostConfig.Binds`), `--mount`,
`--volumes-from`, then an anonymous volume for each `Config.Volumes` path (the image's
VOLUME and `-v /path`) not already covered. Named volumes that do not exist yet and
anonymous ones are created by the same decision, before the container, as Docker's events
show. An anonymous volume's name is derived from the container id and the path, so a
replay decides the same name. What needs the host (a bind source that must exist, the
volume's directory, copying the image's content in) is the API's check and the worker's
mount step.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable

from commands import schema as c
from engine.core import names
from engine.core.state import ANONYMOUS_LABEL, Container, World
from engine.errors import Conflict, InvalidParameter, NotFound, NotModified
from events import model as e
from events.specs import ContainerConfig, HostConfig, Mount, MountPoint

__all__ = [
    "anonymous_name",
    "create_volume",
    "mount_points",
    "parse_bind",
    "remove_volume",
    "unused_anonymous",
    "users_of",
    "valid_volume_name",
    "volume_mounts",
    "volume_unmounts",
]

LOCAL = "local"
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_LOCAL_OPTS = frozenset(("type", "device", "o", "size"))
_PROPAGATIONS = frozenset(("private", "rprivate", "shared", "rshared", "slave", "rslave"))
_MODE_GROUPS = (frozenset(("rw", "ro")), frozenset(("z", "Z")), _PROPAGATIONS,
                frozenset(("nocopy",)), frozenset(("consistent", "cached", "delegated")))


def valid_volume_name(name: str) -> str:
    """Return the name, or raise the local driver's texts (400)."""
    if len(name) < 2:
        raise InvalidParameter("volume name is too short, names should be at least two "
                               "alphanumeric characters")
    if not _NAME.fullmatch(name):
        raise InvalidParameter(f'"{name}" includes invalid characters for a local volume '
                               'name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you '
                               "intended to pass a host directory, use absolute path")
    return name


def anonymous_name(container_id: str, destination: str) -> str:
    """A 64-hex name, as Docker's random one, but the same on every replay."""
    return hashlib.sha256(f"{container_id}:{destination}".encode()).hexdigest()


def _valid_mode(mode: str) -> bool:
    seen = [0] * len(_MODE_GROUPS)
    for token in mode.split(","):
        for i, group in enumerate(_MODE_GROUPS):
            if token in group:
                seen[i] += 1
                break
        else:
            return False
    return all(n <= 1 for n in seen)


def _clean(path: str) -> str:
    return posixpath.normpath(path) if path else path


def parse_bind(raw: str) -> MountPoint:
    """Parse one `-v` / `HostConfig.Binds` entry with Docker's rules and texts."""
    spec = f"invalid volume specification: '{raw}'"
    fields = raw.split(":")
    if not raw or len(fields) > 3 or any(f == "" for f in fields):
        raise InvalidParameter(spec)
    if len(fields) == 2 and _valid_mode(fields[1]):
        raise InvalidParameter(spec)
    if len(fields) == 1:
        source, target, mode = "", fields[0], ""
    else:
        source, target = fields[0], fields[1]
        mode = fields[2] if len(fields) == 3 else ""
    if mode and not _valid_mode(mode):
        raise InvalidParameter(f"invalid mode: {mode}")
    kind = "bind" if source.startswith("/") else "volume"
    if not target.startswith("/"):
        raise InvalidParameter(f'{spec}: invalid mount config for type "{kind}": invalid mount '
                               f"path: '{target}' mount path must be absolute")
    target = _clean(target)
    if target == "/":
        raise InvalidParameter(f"{spec}: invalid specification: destination can't be '/'")
    tokens = set(mode.split(",")) if mode else set()
    rw = "ro" not in tokens
    propagation = next((t for t in tokens if t in _PROPAGATIONS), "")
    if kind == "bind":
        return MountPoint(type="bind", destination=target, source=_clean(source), mode=mode,
                          rw=rw, propagation=propagation or "rprivate", create_source=True)
    if source:
        valid_volume_name(source)
    return MountPoint(type="volume", destination=target, name=source, driver=LOCAL,
                      mode=mode or "z", rw=rw, copy="nocopy" not in tokens)


def _mount_error(kind: str, cause: str) -> InvalidParameter:
    return InvalidParameter(f'invalid mount config for type "{kind}": {cause}')


def _from_mount(m: Mount) -> MountPoint:
    """Validate one `--mount` (HostConfig.Mounts) entry with the daemon's texts."""
    if m.type not in ("bind", "volume", "tmpfs"):
        raise _mount_error(m.type, "mount type unknown")
    if not m.target:
        raise _mount_error(m.type, "field Target must not be empty")
    if not m.target.startswith("/"):
        raise _mount_error(m.type, f"invalid mount path: '{m.target}' mount path must be "
                                   "absolute")
    target = _clean(m.target)
    if m.propagation and m.type != "bind":
        raise _mount_error(m.type, "field BindOptions must not be specified")
    if m.type == "bind":
        if not m.source:
            raise _mount_error("bind", "field Source must not be empty")
        if not m.source.startswith("/"):
            raise _mount_error("bind", f"invalid mount path: '{m.source}' mount path must be "
                                       "absolute")
        if m.propagation and m.propagation not in _PROPAGATIONS:
            raise _mount_error("bind", f"invalid propagation mode: {m.propagation}")
        return MountPoint(type="bind", destination=target, source=_clean(m.source),
                          mode="ro" if m.read_only else "", rw=not m.read_only,
                          propagation=m.propagation or "rprivate")
    if m.type == "tmpfs":
        if m.source:
            raise _mount_error("tmpfs", "field Source must not be specified")
        options = ",".join(part for part in (
            f"size={m.tmpfs_size}" if m.tmpfs_size else "",
            f"mode={m.tmpfs_mode:o}" if m.tmpfs_mode else "") if part)
        return MountPoint(type="tmpfs", destination=target, rw=not m.read_only,
                          tmpfs_options=options)
    if m.source:
        valid_volume_name(m.source)
    elif m.read_only:
        raise _mount_error("volume", "must not set ReadOnly mode when using anonymous volumes")
    return MountPoint(type="volume", destination=target, name=m.source,
                      driver=m.driver or LOCAL, rw=not m.read_only, copy=not m.no_copy)


def _volumes_from(world: World, spec: str) -> list[MountPoint]:
    ref, _, mode = spec.partition(":")
    if mode and mode not in ("ro", "rw"):
        raise InvalidParameter(f"invalid mode: {mode}")
    donor = names.resolve(world, ref)
    found = []
    for mp in donor.mounts:
        rw = mp.rw if not mode else mode == "rw"
        found.append(MountPoint(type=mp.type, destination=mp.destination, name=mp.name,
                                source=mp.source, driver=mp.driver,
                                mode=mode or mp.mode, rw=rw, propagation=mp.propagation,
                                tmpfs_options=mp.tmpfs_options))
    return found


def mount_points(world: World, cid: str, config: ContainerConfig, host: HostConfig,
                 now: int) -> tuple[tuple[MountPoint, ...], list[e.Event]]:
    """Resolve a new container's mounts; return them and the volumes to create first."""
    points: dict[str, MountPoint] = {}
    tmpfs = {_clean(p) for p in host.tmpfs}

    def add(mp: MountPoint, duplicate_check: bool = True) -> None:
        if duplicate_check and (mp.destination in points or mp.destination in tmpfs):
            raise InvalidParameter(f"Duplicate mount point: {mp.destination}")
        points[mp.destination] = mp

    for raw in host.binds:
        add(parse_bind(raw))
    for m in host.mounts:
        add(_from_mount(m))
    for spec in host.volumes_from:
        for mp in _volumes_from(world, spec):
            if mp.destination not in points:  # the container's own mounts win
                points[mp.destination] = mp
    for path in config.volumes:
        target = _clean(path)
        if not target.startswith("/"):
            raise InvalidParameter(f"invalid volume specification: '{path}': invalid mount "
                                   f"config for type \"volume\": invalid mount path: "
                                   f"'{path}' mount path must be absolute")
        if target not in points and target not in tmpfs:
            points[target] = MountPoint(type="volume", destination=target, driver=LOCAL,
                                        copy=True)
    created: list[e.Event] = []
    resolved = []
    for mp in points.values():
        if mp.type == "volume" and not mp.name:
            name = anonymous_name(cid, mp.destination)
            mp = MountPoint(type="volume", destination=mp.destination, name=name,
                            driver=mp.driver, mode=mp.mode, rw=mp.rw, copy=mp.copy)
            created.append(e.VolumeCreated(name=name, driver=mp.driver,
                                           labels={ANONYMOUS_LABEL: ""}, created=now))
        elif mp.type == "volume" and mp.name not in world.volumes and \
                all(getattr(ev, "name", None) != mp.name for ev in created):
            created.append(e.VolumeCreated(name=mp.name, driver=mp.driver, created=now))
        resolved.append(mp)
    return tuple(resolved), created


def users_of(world: World, name: str) -> list[str]:
    """The ids of the containers that mount the volume (Docker's references), sorted."""
    return sorted(cid for cid, ctr in world.containers.items()
                  if any(mp.type == "volume" and mp.name == name for mp in ctr.mounts))


def unused_anonymous(world: World, ctr: Container) -> list[str]:
    """The container's anonymous volumes no other container mounts (rm -v, --rm)."""
    gone = []
    for mp in ctr.mounts:
        vol = world.volumes.get(mp.name) if mp.type == "volume" else None
        if vol is not None and vol.anonymous and users_of(world, mp.name) == [ctr.id]:
            gone.append(mp.name)
    return gone


# --- the volume API's decisions ------------------------------------------------------------

def create_volume(world: World, env: c.Envelope,
                  cmd: c.CreateVolume) -> tuple[str, list[e.Event]]:
    """`POST /volumes/create`: an existing name answers with that volume, no event.

    The client names an anonymous volume (64 random hex, with Docker's anonymous label),
    so the name a replay decides is the one recorded."""
    driver = cmd.driver or LOCAL
    if driver != LOCAL:
        raise NotFound(f"error looking up volume plugin {driver}: plugin \"{driver}\" not "
                       "found")
    valid_volume_name(cmd.name)
    for key in cmd.options:
        if key not in _LOCAL_OPTS:
            raise InvalidParameter(f'invalid option: "{key}"')
    if cmd.name in world.volumes:
        # Docker answers with the existing volume and records nothing; here the decision is
        # recorded (304), which the client reads as success.
        raise NotModified(f"volume {cmd.name} already exists")
    return "", [e.VolumeCreated(name=cmd.name, driver=driver, labels=cmd.labels,
                                options=cmd.options, created=env.issued_at)]


def _in_use(name: str, users: Iterable[str]) -> Conflict:
    return Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")


def remove_volume(world: World, env: c.Envelope,
                  cmd: c.RemoveVolume) -> tuple[str, list[e.Event]]:
    vol = world.volumes.get(cmd.name)
    if vol is None:
        if cmd.force:  # no error with force, as Docker; the decision is still recorded
            raise NotModified(f"volume {cmd.name} does not exist")
        raise NotFound(f"get {cmd.name}: no such volume")
    users = users_of(world, cmd.name)
    if users:
        raise _in_use(cmd.name, users)
    return "", [e.VolumeRemoved(name=cmd.name, driver=vol.driver)]


def volume_mounts(ctr: Container) -> list[e.Event]:
    return [e.VolumeMounted(name=mp.name, driver=mp.driver, destination=mp.destination,
                            rw=mp.rw, propagation=mp.propagation)
            for mp in ctr.mounts if mp.type == "volume"]


def volume_unmounts(ctr: Container) -> list[e.Event]:
    return [e.VolumeUnmounted(name=mp.name, driver=mp.driver)
            for mp in ctr.mounts if mp.type == "volume"]
