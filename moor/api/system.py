"""System endpoints: `_ping`, `version`, `info`."""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
import uuid

from aiohttp import web

from engine.core.state import World
from moor.api.context import API_VERSION, ENGINE_VERSION, MIN_API_VERSION, ctx, run
from moor.api.http import json_response

__all__ = ["info", "ping", "ping_head", "version"]

_START = time.time()
_PING_HEADERS = {
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
    "Swarm": "inactive",
}


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="OK", content_type="text/plain", headers=_PING_HEADERS)


async def ping_head(request: web.Request) -> web.Response:
    return web.Response(status=200, headers={**_PING_HEADERS, "Content-Length": "0"})


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _build_time() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000+00:00", time.gmtime(_START))


async def version(request: web.Request) -> web.Response:
    from importlib import metadata

    try:
        moorage = metadata.version("moorage")
    except metadata.PackageNotFoundError:
        moorage = "dev"
    kernel = os.uname().release
    details = {"ApiVersion": API_VERSION, "Arch": _arch(), "BuildTime": _build_time(),
               "Experimental": "false", "GitCommit": "moorage", "GoVersion": _python(),
               "KernelVersion": kernel, "MinAPIVersion": MIN_API_VERSION, "Os": "linux"}
    return json_response({
        "Platform": {"Name": f"moorage {moorage} (Docker Engine API {API_VERSION})"},
        "Components": [
            {"Name": "Engine", "Version": ENGINE_VERSION, "Details": details},
            {"Name": "moorage", "Version": moorage,
             "Details": {"Description": "event-sourced container engine; state in Redis"}},
        ],
        "Version": ENGINE_VERSION, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "moorage", "GoVersion": _python(), "Os": "linux", "Arch": _arch(),
        "KernelVersion": kernel, "BuildTime": _build_time(),
    })


def _python() -> str:
    return f"python{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def _counts(world: World) -> dict[str, int]:
    ctrs = list(world.containers.values())
    running = sum(1 for c in ctrs if c.running and not c.paused)
    paused = sum(1 for c in ctrs if c.paused)
    return {"Containers": len(ctrs), "ContainersRunning": running, "ContainersPaused": paused,
            "ContainersStopped": len(ctrs) - running - paused, "Images": len(world.images)}


async def info(request: web.Request) -> web.Response:
    context = ctx(request)
    world = await run(context.world)
    # A stable id per engine (key prefix) and host, shaped like dockerd's.
    engine_id = uuid.uuid5(uuid.NAMESPACE_URL, f"moorage:{context.keys.prefix}:"
                           f"{socket.gethostname()}")
    return json_response({
        "ID": str(engine_id), **_counts(world),
        "Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "moorage overlay"]],
        "Plugins": {"Volume": [], "Network": ["bridge", "host", "none"],
                    "Authorization": None, "Log": ["json-file"]},
        "MemoryLimit": True, "SwapLimit": False, "CpuCfsPeriod": True, "CpuCfsQuota": True,
        "CPUShares": False, "CPUSet": False, "PidsLimit": True, "IPv4Forwarding": True,
        "Debug": False, "NFd": len(os.listdir("/proc/self/fd")), "OomKillDisable": False,
        "NGoroutines": 0, "SystemTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z",
                                                      time.gmtime()),
        "LoggingDriver": "json-file", "CgroupDriver": "cgroupfs", "CgroupVersion": "2",
        "NEventsListener": 0, "KernelVersion": os.uname().release,
        "OperatingSystem": f"{_os_name()} (moorage)", "OSVersion": "", "OSType": "linux",
        "Architecture": platform.machine(), "IndexServerAddress": "https://index.docker.io/v1/",
        "NCPU": os.cpu_count() or 1, "MemTotal": _mem_total(),
        "DockerRootDir": context.data_root, "HttpProxy": "", "HttpsProxy": "", "NoProxy": "",
        "Name": socket.gethostname(), "Labels": [f"moorage.key-prefix={context.keys.prefix}"],
        "ExperimentalBuild": False, "ServerVersion": ENGINE_VERSION,
        "Runtimes": {"moorage": {"path": "moorage-supervisor"}}, "DefaultRuntime": "moorage",
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive",
                  "ControlAvailable": False, "Error": "", "RemoteManagers": None},
        "LiveRestoreEnabled": True, "Isolation": "", "InitBinary": "",
        "ContainerdCommit": {"ID": ""}, "RuncCommit": {"ID": ""}, "InitCommit": {"ID": ""},
        "SecurityOptions": [], "Warnings": None, "CDISpecDirs": [],
    })
