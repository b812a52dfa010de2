"""`POST /containers/create` bodies: what the docker CLI and docker-py really send."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from engine.errors import InvalidParameter
from events.specs import Mount, PortBinding, RestartPolicy
from moor.api.create import UnsupportedSetting, container_spec, create_warnings, is_unset

# `docker run -d --name web -p 8080:80 busybox httpd -f -p 80` (docker CLI 28.2, API 1.50).
CLI_BODY: dict[str, Any] = {
    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False, "AttachStdout": False,
    "AttachStderr": False, "ExposedPorts": {"80/tcp": {}}, "Tty": False, "OpenStdin": False,
    "StdinOnce": False, "Env": None, "Cmd": ["httpd", "-f", "-p", "80"], "Image": "busybox",
    "Volumes": {}, "WorkingDir": "", "Entrypoint": None, "OnBuild": None, "Labels": {},
    "HostConfig": {
        "Binds": None, "ContainerIDFile": "", "LogConfig": {"Type": "", "Config": {}},
        "NetworkMode": "default", "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]},
        "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}, "AutoRemove": False,
        "VolumeDriver": "", "VolumesFrom": None, "ConsoleSize": [0, 0], "CapAdd": None,
        "CapDrop": None, "CgroupnsMode": "", "Dns": [], "DnsOptions": [], "DnsSearch": [],
        "ExtraHosts": None, "GroupAdd": None, "IpcMode": "", "Cgroup": "", "Links": None,
        "OomScoreAdj": 0, "PidMode": "", "Privileged": False, "PublishAllPorts": False,
        "ReadonlyRootfs": False, "SecurityOpt": None, "UTSMode": "", "UsernsMode": "",
        "ShmSize": 0, "Isolation": "", "CpuShares": 0, "Memory": 0, "NanoCpus": 0,
        "CgroupParent": "", "BlkioWeight": 0, "BlkioWeightDevice": [],
        "BlkioDeviceReadBps": [], "BlkioDeviceWriteBps": [], "BlkioDeviceReadIOps": [],
        "BlkioDeviceWriteIOps": [], "CpuPeriod": 0, "CpuQuota": 0, "CpuRealtimePeriod": 0,
        "CpuRealtimeRuntime": 0, "CpusetCpus": "", "CpusetMems": "", "Devices": [],
        "DeviceCgroupRules": None, "DeviceRequests": None, "MemoryReservation": 0,
        "MemorySwap": 0, "MemorySwappiness": -1, "OomKillDisable": False, "PidsLimit": 0,
        "Ulimits": [], "CpuCount": 0, "CpuPercent": 0, "IOMaximumIOps": 0,
        "IOMaximumBandwidth": 0, "MaskedPaths": None, "ReadonlyPaths": None},
    "NetworkingConfig": {"EndpointsConfig": {"default": {
        "IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "",
        "DriverOpts": None, "GwPriority": 0, "NetworkID": "", "EndpointID": "", "Gateway": "",
        "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0, "DNSNames": None}}},
}

# docker-py 7.1 `containers.run("busybox", [...], detach=True, ports={"80/tcp": 8080})`.
PY_BODY: dict[str, Any] = {
    "ExposedPorts": {"80/tcp": {}}, "Tty": False, "OpenStdin": False, "StdinOnce": False,
    "AttachStdin": False, "AttachStdout": False, "AttachStderr": False,
    "Cmd": ["httpd", "-f", "-p", "80"], "Image": "busybox", "NetworkDisabled": False,
    "HostConfig": {"NetworkMode": "default",
                   "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}},
}


@pytest.mark.parametrize("body", [CLI_BODY, PY_BODY], ids=["docker-cli", "docker-py"])
def test_real_client_bodies_are_accepted(body: dict[str, Any]) -> None:
    config, host = container_spec(body)
    assert config.image == "busybox" and config.cmd == ("httpd", "-f", "-p", "80")
    assert config.exposed_ports == ("80/tcp",) and config.entrypoint is None
    assert host.network_mode == "bridge"
    assert host.port_bindings == {"80/tcp": (PortBinding(host_port="8080"),)}
    assert host.restart_policy == RestartPolicy(name="no")
    assert create_warnings(host) == []


def test_supported_fields_are_mapped() -> None:
    body = {"Image": "busybox", "Cmd": "true", "Entrypoint": ["/bin/sh", "-c"],
            "Env": ["A=1"], "Labels": {"k": "v"}, "WorkingDir": "/srv", "User": "nobody",
            "StopSignal": "SIGINT", "StopTimeout": 3, "Hostname": "box",
            "ExposedPorts": {"53/udp": {}, "80": {}},
            "HostConfig": {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2},
                           "AutoRemove": True, "NetworkMode": "host", "Memory": 64 << 20,
                           "PidsLimit": -1, "NanoCpus": 500_000_000,
                           "CapAdd": ["net_admin"], "CapDrop": "ALL",
                           "SecurityOpt": ["no-new-privileges:true"],
                           "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1",
                                                        "HostPort": "0"}]}}}
    config, host = container_spec(body)
    assert config.cmd == ("true",) and config.entrypoint == ("/bin/sh", "-c")
    assert (config.env, config.labels) == (("A=1",), {"k": "v"})
    assert (config.working_dir, config.user, config.hostname) == ("/srv", "nobody", "box")
    assert (config.stop_signal, config.stop_timeout) == ("SIGINT", 3)
    assert config.exposed_ports == ("53/udp", "80/tcp")
    assert host.restart_policy == RestartPolicy(name="on-failure", maximum_retry_count=2)
    assert host.auto_remove and host.network_mode == "host"
    assert (host.memory, host.pids_limit, host.nano_cpus) == (64 << 20, 0, 500_000_000)
    assert host.port_bindings == {"80/tcp": (PortBinding(host_ip="127.0.0.1"),)}
    # Kept as sent (the docker CLI normalises, docker-py does not): inspect shows them so.
    assert (host.cap_add, host.cap_drop) == (("net_admin",), ("ALL",))
    assert host.security_opt == ("no-new-privileges:true",)
    assert create_warnings(host) == ["Published ports are discarded when using host network "
                                     "mode"]


@pytest.mark.parametrize(("where", "key", "value"), [
    ("HostConfig", "OomScoreAdj", 500),
    ("HostConfig", "VolumeDriver", "flocker"),
    ("HostConfig", "Capabilities", ["CAP_NET_ADMIN"]),
    ("HostConfig", "CpuRealtimeRuntime", 1000),
    ("", "Shell", ["/bin/bash", "-c"]),
    ("", "OnBuild", ["RUN true"]),
    ("", "Healthcheck", {"Test": ["CMD", "true"]}),
    ("HostConfig", "StorageOpt", {"size": "1G"}),
])
def test_a_set_unsupported_field_is_refused_by_name(where: str, key: str, value: Any) -> None:
    body = copy.deepcopy(CLI_BODY)
    (body[where] if where else body)[key] = value
    path = f"{where}.{key}" if where else key
    with pytest.raises(UnsupportedSetting, match=f"setting {path} ") as err:
        container_spec(body)
    assert err.value.status == 400


def test_networking_config_becomes_the_containers_networking() -> None:
    from events.netspecs import EndpointSettings
    from moor.api.netcreate import networking_spec

    body = copy.deepcopy(CLI_BODY)
    assert networking_spec(body, "bridge") is None  # the CLI's empty endpoint: nothing set
    body["NetworkingConfig"]["EndpointsConfig"]["other"] = {
        "Aliases": ["db"], "IPAMConfig": {"IPv4Address": "10.213.77.9"}}
    body["HostConfig"]["ExtraHosts"] = ["gw=10.0.0.1"]
    container_spec(body)
    net = networking_spec(body, "bridge")
    assert net is not None and net.extra_hosts == ("gw:10.0.0.1",)
    assert net.endpoints == {"other": EndpointSettings(aliases=("db",),
                                                       ipv4_address="10.213.77.9")}
    body["NetworkingConfig"]["EndpointsConfig"]["other"]["DriverOpts"] = {"x": "1"}
    with pytest.raises(UnsupportedSetting, match="EndpointsConfig.other.DriverOpts"):
        container_spec(body)


@pytest.mark.parametrize(("body", "message"), [
    (None, "config cannot be empty in order to create a container"),
    ([], "config cannot be empty in order to create a container"),
    ({"Image": 3}, "invalid JSON: Image must be a string"),
    ({"Image": "b", "Cmd": [1]}, "invalid JSON: Cmd must be a string or a list of strings"),
    ({"Image": "b", "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "x"}]}}},
     'invalid port specification: "x"'),
    ({"Image": "b", "HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "nope"}]}}},
     "invalid IP address: nope"),
])
def test_malformed_bodies_are_400s(body: Any, message: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        container_spec(body)
    assert err.value.message == message


def test_unset_values() -> None:
    unset: tuple[Any, ...] = (None, False, 0, "", [], {}, [0, 0], {"A": {"B": []}})
    assert all(is_unset(v) for v in unset)
    assert not any(is_unset(v) for v in (True, 1, "x", [1], {"A": 1}))
    # A map's keys are settings: a volume, a sysctl or a label with an empty value is set.
    assert not is_unset({"/data": {}}, "Volumes")
    assert not is_unset({"Key": ""}, "HostConfig.Sysctls")
    assert not is_unset({"net.core.somaxconn": ""})
    assert is_unset([0, 0], "HostConfig.ConsoleSize") and not is_unset(-1)


def test_mounts_map_onto_the_specs() -> None:
    body = copy.deepcopy(CLI_BODY)
    body["Volumes"] = {"/anon": {}}
    body["HostConfig"] |= {
        "Binds": ["/srv:/srv:ro", "data:/data"], "VolumesFrom": ["other:ro"],
        "Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/host-etc", "ReadOnly": True,
                    "BindOptions": {"Propagation": "rslave"}},
                   {"Type": "volume", "Source": "v", "Target": "/v",
                    "VolumeOptions": {"NoCopy": True, "Labels": {"a": "b"}}},
                   {"Type": "tmpfs", "Target": "/t",
                    "TmpfsOptions": {"SizeBytes": 65536, "Mode": 0o700}}]}
    config, host = container_spec(body)
    assert config.volumes == ("/anon",)
    assert host.binds == ("/srv:/srv:ro", "data:/data")
    assert host.volumes_from == ("other:ro",)
    assert host.mounts == (
        Mount(type="bind", source="/etc", target="/host-etc", read_only=True,
              propagation="rslave"),
        Mount(type="volume", source="v", target="/v", no_copy=True, labels={"a": "b"}),
        Mount(type="tmpfs", target="/t", tmpfs_size=65536, tmpfs_mode=0o700))
    body["HostConfig"]["Mounts"] = [{"Type": "volume", "Target": "/x",
                                     "BindOptions": {"Propagation": "rslave"}}]
    with pytest.raises(InvalidParameter, match='invalid mount config for type "volume": '
                                               "field BindOptions must not be specified"):
        container_spec(body)
