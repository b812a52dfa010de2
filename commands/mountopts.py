"""Parse the docker CLI's mount flags (`-v`, `--mount`) as the docker CLI does (pure).

The CLI's own checks and texts (`docker/cli` opts/mount.go, volumespec): what it sends
on is then checked again by the engine with the daemon's texts (engine.core.volumes).
"""

from __future__ import annotations

import posixpath

from engine.errors import InvalidParameter
from events.specs import Mount

__all__ = ["parse_mount", "split_volumes"]

_MODE_KEYS = frozenset(("readonly", "ro"))
_TYPE_KEYS = {"bind": ("bind-propagation", "bind-nonrecursive"),
              "volume": ("volume-nocopy", "volume-label", "volume-driver", "volume-opt"),
              "tmpfs": ("tmpfs-size", "tmpfs-mode")}
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def split_volumes(values: list[str], cwd: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split `-v` values into (Binds, Config.Volumes): one field is an anonymous volume.

    A relative host path starting with "." is made absolute, as the docker CLI does.
    """
    binds: list[str] = []
    volumes: list[str] = []
    for raw in values:
        if not raw:
            raise InvalidParameter("invalid empty volume spec")
        fields = raw.split(":")
        if "" in fields:
            raise InvalidParameter(f"invalid spec: {raw}: empty section between colons")
        if len(fields) > 3:
            raise InvalidParameter(f"invalid spec: {raw}: too many colons")
        if len(fields) == 1:
            volumes.append(raw)
            continue
        if fields[0].startswith("."):
            fields[0] = posixpath.normpath(posixpath.join(cwd, fields[0]))
        binds.append(":".join(fields))
    return tuple(binds), tuple(volumes)


def _bool(value: str, key: str) -> bool:
    if value.lower() in ("", "1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise InvalidParameter(f"invalid value for {key}: {value}")


def _size(value: str) -> int:
    text = value.strip().lower().rstrip("b") if value.strip().lower() != "b" else "b"
    number, unit = (text[:-1], text[-1]) if text and text[-1] in "kmg" else (text, "")
    try:
        return int(float(number) * _UNITS[unit])
    except ValueError:
        raise InvalidParameter(f"invalid value for tmpfs-size: {value}") from None


def parse_mount(csv: str) -> Mount:
    """Parse one `--mount type=...,source=...,target=...` value (the docker CLI's rules)."""
    fields: dict[str, str] = {}
    labels: dict[str, str] = {}
    for part in csv.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep and key not in _MODE_KEYS and key not in ("volume-nocopy",
                                                              "bind-nonrecursive"):
            raise InvalidParameter(f"invalid field '{part}' must be a key=value pair")
        if key == "volume-label":
            name, _, label_value = value.partition("=")
            labels[name] = label_value
        fields[key] = value
    kind = fields.pop("type", "volume")
    if kind not in _TYPE_KEYS:
        raise InvalidParameter(f"invalid mount config for type \"{kind}\": mount type "
                               "unknown")
    for other, keys in _TYPE_KEYS.items():
        if other != kind and any(k in fields for k in keys):
            raise InvalidParameter(f"cannot mix '{other}-*' options with mount type '{kind}'")
    source = fields.pop("source", fields.pop("src", ""))
    target = fields.pop("target", fields.pop("dst", fields.pop("destination", "")))
    if not target:
        raise InvalidParameter("target is required")
    read_only = False
    for key in _MODE_KEYS:
        if key in fields:
            read_only = _bool(fields.pop(key), key)
    mount = Mount(type=kind, source=source, target=target, read_only=read_only,
                  propagation=fields.pop("bind-propagation", ""),
                  no_copy=_bool(fields.pop("volume-nocopy"), "volume-nocopy")
                  if "volume-nocopy" in fields else False,
                  labels=labels, driver=fields.pop("volume-driver", ""),
                  tmpfs_size=_size(fields.pop("tmpfs-size")) if "tmpfs-size" in fields else 0,
                  tmpfs_mode=int(fields.pop("tmpfs-mode"), 8) if "tmpfs-mode" in fields
                  else 0)
    fields.pop("volume-label", None)
    fields.pop("consistency", None)
    for key in fields:
        raise InvalidParameter(f"unexpected key '{key}' in '{csv}'")
    return mount
