"""Log drivers and their options (`--log-driver`, `--log-opt`), checked with Docker's texts.

Pure (standard library only): create-time validation (`engine.core.validate`), the CLI
and the worker share these rules, so a bad option is refused before anything runs.
Facts are moby's: `daemon/logger/factory.go` (ValidateLogOpts: the built-in ``mode`` and
``max-buffer-size`` options, the unknown-driver text), `daemon/logger/jsonfilelog`
(ValidateLogOpt's option list, New's max-size/max-file rules), go-units FromHumanSize
(decimal units) and `daemon/logger/loggerutils` (the attrs from labels and env).
Docker parses max-size and max-file when the driver starts; moorage checks them at create
so `docker run` fails before anything is set up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from events.specs import LogConfig

__all__ = ["DRIVERS", "check_log_config", "log_attrs", "parse_human_size",
           "rotation"]

DRIVERS = ("json-file", "none")  # the drivers moorage registers; Docker's default first
_JSON_FILE_OPTS = frozenset({"max-file", "max-size", "compress", "labels", "labels-regex",
                             "env", "env-regex", "tag"})
_BUILT_IN = frozenset({"mode", "max-buffer-size"})  # every driver accepts these
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+) ?([A-Za-z]*)")


def parse_human_size(text: str) -> int:
    """Parse go-units' FromHumanSize (decimal: 1k = 1000), with its error texts."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"invalid size: '{text}'")
    size, suffix = float(match[1]), match[2].lower()
    if not suffix or suffix == "b":
        return int(size)
    if len(suffix) > 3 or suffix[0] not in _DECIMAL or suffix[1:] not in ("", "b", "ib"):
        raise ValueError(f"invalid suffix: '{suffix}'")
    return int(size * _DECIMAL[suffix[0]])


def rotation(config: Mapping[str, str]) -> tuple[int, int]:
    """Return json-file's (max_size, max_file) from its options, or Docker's error."""
    max_size = -1
    if "max-size" in config:
        max_size = parse_human_size(config["max-size"])
        if max_size <= 0:
            raise ValueError("max-size must be a positive number")
    max_file = 1
    if "max-file" in config:
        text = config["max-file"]
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError(f'strconv.Atoi: parsing "{text}": invalid syntax')
        max_file = int(text)
        if max_file < 1:
            raise ValueError("max-file cannot be less than 1")
    return max_size, max_file


def check_log_config(log: LogConfig) -> None:
    """Raise ValueError with Docker's text for a driver or option Docker would refuse."""
    if log.type == "none":
        return  # moby skips every check for the none driver
    mode = log.config.get("mode", "")
    if mode not in ("", "blocking", "non-blocking"):
        raise ValueError(f"logger: logging mode not supported: {mode}")
    if log.type not in DRIVERS:
        raise ValueError(f"logger: no log driver named '{log.type}' is registered")
    for key in sorted(log.config):
        if key not in _JSON_FILE_OPTS | _BUILT_IN:
            raise ValueError(f"unknown log opt '{key}' for json-file log driver")
    rotation(log.config)
    # Accepted by Docker but not implemented here: refused rather than silently ignored.
    if log.config.get("compress", "false") not in ("false", "0", ""):
        raise ValueError("moorage does not support the json-file log opt compress=true")
    if "{{" in log.config.get("tag", ""):
        raise ValueError("moorage does not support templates in the json-file log opt tag")


def log_attrs(log: LogConfig, labels: Mapping[str, str], env: tuple[str, ...]) -> dict[str, str]:
    """Return the attrs json-file adds to every entry (loggerutils' ExtraAttributes)."""
    opts, attrs = log.config, {}
    keys = [k.strip() for k in opts.get("labels", "").split(",") if k.strip()]
    attrs.update({k: labels[k] for k in keys if k in labels})
    if opts.get("labels-regex"):
        pattern = re.compile(opts["labels-regex"])
        attrs.update({k: v for k, v in labels.items() if pattern.search(k)})
    env_map = dict((e.split("=", 1) + [""])[:2] for e in env)
    keys = [k.strip() for k in opts.get("env", "").split(",") if k.strip()]
    attrs.update({k: env_map[k] for k in keys if k in env_map})
    if opts.get("env-regex"):
        pattern = re.compile(opts["env-regex"])
        attrs.update({k: v for k, v in env_map.items() if pattern.search(k)})
    if opts.get("tag"):
        attrs["tag"] = opts["tag"]
    return attrs
