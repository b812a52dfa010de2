"""The image config JSON the store writes: Docker's names, byte for byte (the id is its hash)."""

from __future__ import annotations

import msgspec

from events.specs import ImageConfig
from workers.storage.imageconfig import config_of, docker_config, parse_config

FULL = ImageConfig(cmd=("sh",), entrypoint=("/init",), env=("A=1",), working_dir="/w",
                   exposed_ports=("80/tcp",), stop_signal="SIGQUIT", user="u",
                   labels={"a": "b"})


def test_docker_config_uses_dockers_names_in_field_order() -> None:
    # An imported image's id is the sha256 of this JSON: a renamed or reordered key would
    # give the same rootfs a new id.
    assert msgspec.json.encode(docker_config(FULL)) == (
        b'{"Cmd":["sh"],"Entrypoint":["/init"],"Env":["A=1"],"WorkingDir":"/w",'
        b'"ExposedPorts":{"80/tcp":{}},"StopSignal":"SIGQUIT","User":"u","Labels":{"a":"b"}}')
    assert docker_config(ImageConfig()) == {}
    assert msgspec.json.encode(docker_config(ImageConfig(cmd=()))) == b'{"Cmd":[]}'


def test_config_json_reads_back_as_the_same_image_config() -> None:
    for config in (FULL, ImageConfig(), ImageConfig(entrypoint=(), labels={"x": ""})):
        doc = {"rootfs": {"type": "layers", "diff_ids": []}, "config": docker_config(config)}
        assert config_of(parse_config(msgspec.json.encode(doc)).config) == config
