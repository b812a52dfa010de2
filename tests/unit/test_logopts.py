"""Log drivers and options: validation texts, json-file rotation, reading across files."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from events import model as e
from events.logopts import check_log_config, log_attrs, parse_human_size, rotation
from events.specs import HostConfig, LogConfig
from moor.api.create import container_spec
from projections.views.inspect import inspect_container
from tests.unit.test_decide import create, given
from workers.proc import logs, process
from workers.proc.logs import JsonFileWriter, encode_entry, log_files, read_logs

S = 1_000_000_000
T0 = 1_700_000_000 * S


@pytest.mark.parametrize(("text", "size"), [
    ("1k", 1000), ("1kb", 1000), ("1KiB", 1000), ("10m", 10_000_000), ("2g", 2 * 10**9),
    ("1.5k", 1500), ("512", 512), ("512b", 512), ("1 k", 1000),
])
def test_sizes_are_go_units_decimal(text: str, size: int) -> None:
    assert parse_human_size(text) == size


@pytest.mark.parametrize(("text", "message"), [
    ("abc", "invalid size: 'abc'"), ("1x", "invalid suffix: 'x'"), ("1kbb", "invalid suffix"),
])
def test_bad_sizes_get_go_units_texts(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_human_size(text)


@pytest.mark.parametrize(("log", "message"), [
    (LogConfig(type="syslog"), "logger: no log driver named 'syslog' is registered"),
    (LogConfig(type="bogus"), "logger: no log driver named 'bogus' is registered"),
    (LogConfig(config={"max-szie": "1k"}), "unknown log opt 'max-szie' for json-file log driver"),
    (LogConfig(config={"max-size": "lots"}), "invalid size: 'lots'"),
    (LogConfig(config={"max-size": "0"}), "max-size must be a positive number"),
    (LogConfig(config={"max-file": "0"}), "max-file cannot be less than 1"),
    (LogConfig(config={"max-file": "x"}), 'strconv.Atoi: parsing "x": invalid syntax'),
    (LogConfig(config={"mode": "fast"}), "logger: logging mode not supported: fast"),
])
def test_bad_log_configs_get_dockers_texts(log: LogConfig, message: str) -> None:
    with pytest.raises(ValueError) as err:
        check_log_config(log)
    assert str(err.value) == message


def test_good_log_configs_pass_and_none_skips_every_check() -> None:
    check_log_config(LogConfig())
    check_log_config(LogConfig(config={"max-size": "1k", "max-file": "3", "labels": "a",
                                       "mode": "non-blocking"}))
    check_log_config(LogConfig(type="none", config={"anything": "x"}))
    assert rotation({}) == (-1, 1)
    assert rotation({"max-size": "1k", "max-file": "3"}) == (1000, 3)


def test_create_refuses_a_bad_log_config_with_a_400() -> None:
    given().when(create(host=HostConfig(log_config=LogConfig(type="gelf")))).then(
        (400, "logger: no log driver named 'gelf' is registered"))
    given().when(create(host=HostConfig(log_config=LogConfig(config={"x": "1"})))).then(
        (400, "unknown log opt 'x' for json-file log driver"))


def test_create_keeps_the_log_config_and_inspect_shows_it() -> None:
    log = LogConfig(config={"max-size": "1k", "max-file": "3"})
    t = given().when(create(host=HostConfig(log_config=log))).then(e.ContainerCreated)
    assert inspect_container(t.world, t.container())["HostConfig"]["LogConfig"] == {
        "Type": "json-file", "Config": {"max-size": "1k", "max-file": "3"}}


def test_the_api_maps_log_config_and_inspect_shows_it() -> None:
    body = {"Image": "busybox", "HostConfig": {
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "1k", "max-file": "3"}}}}
    _, host = container_spec(body)
    assert host.log_config == LogConfig(config={"max-size": "1k", "max-file": "3"})
    _, unset = container_spec({"Image": "busybox",
                               "HostConfig": {"LogConfig": {"Type": "", "Config": None}}})
    assert unset.log_config == LogConfig()
    _, none = container_spec({"Image": "busybox", "HostConfig": {"LogConfig": {"Type": "none"}}})
    assert none.log_config.type == "none"


def test_attrs_come_from_the_chosen_labels_and_env() -> None:
    log = LogConfig(config={"labels": "app,missing", "env": "A", "env-regex": "^B", "tag": "t"})
    attrs = log_attrs(log, {"app": "web", "other": "x"}, ("A=1", "B1=2", "C=3"))
    assert attrs == {"app": "web", "A": "1", "B1": "2", "tag": "t"}


def _lines(path: Path) -> list[str]:
    return [line for _, _, line in read_logs(str(path))]


def test_rotation_keeps_max_file_files_of_about_max_size(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = JsonFileWriter(str(path), max_size=300, max_file=3)
    for i in range(100):
        writer.feed("stdout", f"line {i:03d}\n".encode(), T0 + i)
    writer.close()
    assert sorted(os.listdir(tmp_path)) == ["c-json.log", "c-json.log.1", "c-json.log.2"]
    entry = len(encode_entry("stdout", b"line 000\n", T0))
    for name in log_files(str(path)):
        assert os.path.getsize(name) < 300 + entry
    lines = _lines(path)
    assert lines[-1] == "line 099\n"
    # Oldest first and contiguous: nothing lost or reordered inside the kept window.
    numbers = [int(line.split()[1]) for line in lines]
    assert numbers == list(range(numbers[0], 100))
    assert len(numbers) > 2 * (300 // entry)


def test_max_file_one_truncates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = JsonFileWriter(str(path), max_size=100, max_file=1)
    for i in range(20):
        writer.feed("stdout", f"{i}\n".encode(), T0)
    writer.close()
    assert os.listdir(tmp_path) == ["c-json.log"]
    assert len(_lines(path)) < 5
    assert _lines(path)[-1] == "19\n"


def test_since_until_and_tail_read_across_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = JsonFileWriter(str(path), max_size=100, max_file=5)  # two entries a file
    for i in range(12):
        writer.feed("stdout", f"{i}\n".encode(), T0 + i * S)
    writer.close()
    assert len(log_files(str(path))) == 5  # 0 and 1 rotated away
    assert [line for *_, line in read_logs(str(path))] == [f"{i}\n" for i in range(2, 12)]
    window = [line for _, _, line in read_logs(str(path), since=T0 + 3 * S, until=T0 + 9 * S)]
    assert window == [f"{i}\n" for i in range(3, 9)]
    assert [line for _, _, line in read_logs(str(path), tail=7)] == \
        [f"{i}\n" for i in range(5, 12)]
    assert [line for _, _, line in read_logs(str(path), tail=0)] == []
    stamped = [line for _, _, line in read_logs(str(path), tail=1, timestamps=True)]
    assert stamped == ["2023-11-14T22:13:31Z 11\n"]


def test_details_render_attrs_or_a_lone_space(tmp_path: Path) -> None:
    plain, tagged = tmp_path / "a-json.log", tmp_path / "b-json.log"
    for path, attrs in ((plain, None), (tagged, {"z": "a b", "app": "web&co"})):
        writer = JsonFileWriter(str(path), attrs=attrs)
        writer.feed("stdout", b"hi\n", T0)
        writer.close()
    assert [line for *_, line in read_logs(str(plain), details=True)] == [" hi\n"]
    assert [line for *_, line in read_logs(str(tagged), details=True)] == \
        ["app=web%26co,z=a+b hi\n"]
    # Docker's member order: log, stream, attrs, time.
    assert list(json.loads(tagged.read_text())) == ["log", "stream", "attrs", "time"]


def test_the_none_driver_creates_the_file_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c-json.log"
    writer = JsonFileWriter(str(path), discard=True)
    writer.feed("stdout", b"secret\n", T0)
    writer.close()
    assert path.read_bytes() == b""


def test_follow_crosses_a_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c-json.log"
    writer = JsonFileWriter(str(path), max_size=100, max_file=3)
    writer.feed("stdout", b"first\n", T0)
    done = threading.Event()
    monkeypatch.setattr(process, "supervisor_alive", lambda _: not done.is_set())
    monkeypatch.setattr(logs, "FOLLOW_INTERVAL", 0.001)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(
        line for *_, line in read_logs(str(path), follow=True)))
    reader.start()
    for i in range(6):  # a few rotations, slowly enough for the reader to keep up
        writer.feed("stdout", f"{i}\n".encode(), T0)
        threading.Event().wait(0.02)
    writer.close()
    done.set()
    reader.join(5)
    assert seen == ["first\n", *(f"{i}\n" for i in range(6))]


def test_follow_loses_nothing_when_several_rotations_pass_between_polls(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c-json.log"
    writer = JsonFileWriter(str(path), max_size=100, max_file=10)
    writer.feed("stdout", b"first\n", T0)
    done = threading.Event()
    monkeypatch.setattr(process, "supervisor_alive", lambda _: not done.is_set())
    monkeypatch.setattr(logs, "FOLLOW_INTERVAL", 0.2)
    seen: list[str] = []
    # Read through a held fd's path, as attach does, reopening the real path on rotation.
    fd = os.open(path, os.O_RDONLY)
    reader = threading.Thread(target=lambda: seen.extend(
        line for *_, line in read_logs(f"/proc/self/fd/{fd}", follow=True,
                                       state_dir=str(tmp_path), live_path=str(path))))
    reader.start()
    while not seen:
        threading.Event().wait(0.01)
    for i in range(12):  # six rotations inside one poll interval
        writer.feed("stdout", f"{i}\n".encode(), T0)
    writer.close()
    done.set()
    reader.join(5)
    os.close(fd)
    assert seen == ["first\n", *(f"{i}\n" for i in range(12))]
