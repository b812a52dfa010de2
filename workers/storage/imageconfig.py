"""Read and write Docker's image config JSON: the rootfs diff ids and the container defaults.

The config file is stored byte for byte (its sha256 is the image id), so only what the
engine needs is decoded from it: the layers and the parts of ``config`` that shape a
container, as :class:`events.specs.ImageConfig` (the one home of that type; Docker's
PascalCase names exist only here, on the JSON side).
"""

from __future__ import annotations

import platform
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from engine.errors import InvalidParameter
from events.specs import ImageConfig

__all__ = [
    "HEX",
    "BadImage",
    "ImageInfo",
    "RawImage",
    "config_diff_ids",
    "config_of",
    "created_ns",
    "docker_config",
    "docker_names",
    "host_arch",
    "parse_config",
]

HEX = re.compile(r"[0-9a-f]{64}")  # a sha256 digest's hex part: image and layer names
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)")
# Docker's name of each ImageConfig field, as msgspec's rename="pascal" spells it
# ("working_dir" -> "WorkingDir"): the names image configs use on the wire.
_DOCKER_NAMES = {field: "".join(part[:1].upper() + part[1:] for part in field.split("_"))
                 for field in ImageConfig.__struct_fields__}


class BadImage(InvalidParameter):
    """Signal an archive or config that is not a loadable image."""


class ImageInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Describe a stored image."""

    id: str  # "sha256:<hex>" of the config JSON
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]  # diff ids, bottom-most first (as in rootfs.diff_ids)
    created: str
    size: int
    config: ImageConfig


class _RawConfig(msgspec.Struct, rename="pascal"):
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    env: list[str] | None = None
    working_dir: str = ""
    exposed_ports: dict[str, Any] | None = None
    stop_signal: str = ""
    user: str = ""
    labels: dict[str, str] | None = None
    volumes: dict[str, Any] | None = None


class _RootFS(msgspec.Struct):
    type: str = "layers"
    diff_ids: list[str] = []


class RawImage(msgspec.Struct):
    """The parts of an image config JSON the store reads."""

    rootfs: _RootFS
    created: str = ""
    config: _RawConfig | None = None


def parse_config(raw: bytes) -> RawImage:
    """Decode an image config JSON; BadImage if it is not one or names a bad diff id."""
    try:
        image = msgspec.json.decode(raw, type=RawImage)
    except msgspec.DecodeError as e:  # also covers ValidationError
        raise BadImage(f"invalid image config: {e}") from e
    for d in image.rootfs.diff_ids:
        if not d.startswith("sha256:") or not HEX.fullmatch(d[7:]):
            raise BadImage(f"invalid image config: bad diff id {d!r}")
    return image


def config_diff_ids(config_raw: bytes) -> list[str]:
    """Return the diff ids an image config names, bottom-most first; BadImage if invalid."""
    return list(parse_config(config_raw).rootfs.diff_ids)


def config_of(raw: _RawConfig | None) -> ImageConfig:
    """Convert Docker's config JSON shape to ImageConfig."""
    if raw is None:
        return ImageConfig()
    ports = tuple(p if "/" in p else f"{p}/tcp" for p in (raw.exposed_ports or {}))
    return ImageConfig(
        cmd=None if raw.cmd is None else tuple(raw.cmd),
        entrypoint=None if raw.entrypoint is None else tuple(raw.entrypoint),
        env=tuple(raw.env or ()), working_dir=raw.working_dir, exposed_ports=ports,
        stop_signal=raw.stop_signal, user=raw.user, labels=dict(raw.labels or {}),
        volumes=tuple(raw.volumes or ()),
    )


def docker_names(config: ImageConfig) -> dict[str, Any]:
    """Return config's non-default fields as builtins under Docker's names ("Cmd", ...)."""
    return {_DOCKER_NAMES[k]: v for k, v in msgspec.to_builtins(config).items()}


def docker_config(config: ImageConfig) -> dict[str, Any]:
    """Return config in Docker's image-config JSON shape (ExposedPorts, Volumes as dicts)."""
    out = docker_names(config)
    if config.exposed_ports:
        out["ExposedPorts"] = {p: {} for p in config.exposed_ports}
    if config.volumes:
        out["Volumes"] = {p: {} for p in config.volumes}
    return out


def created_ns(info: ImageInfo) -> int:
    """Return the image's RFC 3339 ``created`` as unix nanoseconds (ImageRegistered.created).

    0 when absent, unparseable or before the epoch: Go's zero time (0001-01-01), which some
    builders write, means "unknown", as does the event's default.
    """
    m = _RFC3339.fullmatch(info.created.strip())
    if m is None:
        return 0
    day, clock, fraction, zone = m.groups()
    try:
        when = datetime.fromisoformat(f"{day}T{clock}{'+00:00' if zone in 'Zz' else zone}")
    except ValueError:  # e.g. month 13 or a leap second
        return 0
    # Whole seconds and the fraction apart: a float would lose the nanoseconds.
    ns = (when - _EPOCH) // timedelta(seconds=1) * 1_000_000_000
    ns += int((fraction or "0")[:9].ljust(9, "0"))
    return max(ns, 0)


def host_arch() -> str:
    """Return this host's architecture in OCI's words ("amd64", "arm64", ...)."""
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
