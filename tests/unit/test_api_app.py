"""The Engine API application over fakeredis and a reducer thread (no host worker).

Covers what needs no container process: version negotiation and headers, Docker's error
shapes and texts, create/inspect/list/rename, wait on a created container, events
history, and the 400s that come before any streaming starts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import fakeredis
import pytest
from aiohttp.test_utils import TestClient, TestServer

from commands.client import Client
from moor.api.app import build_app
from moor.api.context import ApiContext
from tests.harness import ReducerThread, cleanup, fresh_keys, seed

Check = Callable[[TestClient[Any, Any]], Awaitable[None]]


@pytest.fixture
def context(tmp_path: Any) -> Iterator[ApiContext]:
    redis = fakeredis.FakeRedis()
    keys = fresh_keys()
    with ReducerThread(redis, keys):
        seed(Client(redis, keys, timeout=5))
        yield ApiContext(redis=redis, keys=keys, data_root=str(tmp_path), timeout=5)
    cleanup(redis, keys)
    redis.close()


def serve(context: ApiContext, check: Check) -> None:
    """Run one check against the app on a test server (a private event loop)."""
    async def main() -> None:
        async with TestClient(TestServer(build_app(context))) as client:
            await check(client)

    asyncio.run(main())


async def body(resp: Any) -> Any:
    assert resp.headers["Content-Type"] == "application/json"  # exactly, for the moby client
    return json.loads(await resp.read())


def test_ping_headers_and_negotiation(context: ApiContext) -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/_ping")
        assert (resp.status, await resp.text()) == (200, "OK")
        for key, value in (("Api-Version", "1.51"), ("Ostype", "linux"),
                           ("Docker-Experimental", "false"), ("Swarm", "inactive"),
                           ("Server", "Docker/28.5.2 (linux)")):
            assert resp.headers[key] == value
        resp = await client.head("/v1.40/_ping")
        assert resp.status == 200 and resp.headers["Content-Length"] == "0"
        for path in ("/v1.24/version", "/v1.51/version", "/version"):
            resp = await client.get(path)
            assert resp.status == 200, path
            doc = await body(resp)
            assert doc["ApiVersion"] == "1.51" and doc["MinAPIVersion"] == "1.24"
        resp = await client.get("/v1.52/info")
        assert resp.status == 400 and resp.headers["Api-Version"] == "1.51"
        assert await body(resp) == {"message": "client version 1.52 is too new. Maximum "
                                               "supported API version is 1.51"}
        resp = await client.get("/v1.23/info")
        assert (await body(resp))["message"] == (
            "client version 1.23 is too old. Minimum supported API version is 1.24, please "
            "upgrade your client to a newer version")
        for method, path in (("GET", "/nope"), ("GET", "/v1.51/containers/x/nope"),
                             ("PUT", "/containers/json")):
            resp = await client.request(method, path)
            assert (resp.status, await body(resp)) == (404, {"message": "page not found"})

    serve(context, check)


def test_create_inspect_list_rename_and_errors(context: ApiContext) -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        spec = {"Image": "busybox", "Cmd": ["sleep", "60"], "Labels": {"team": "a"},
                "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}}
        resp = await client.post("/v1.50/containers/create?name=web", json=spec)
        assert resp.status == 201
        created = await body(resp)
        cid = created["Id"]
        assert len(cid) == 64 and created["Warnings"] == []

        resp = await client.post("/containers/create?name=web", json=spec)
        assert (resp.status, (await body(resp))["message"]) == (409, (
            f'Conflict. The container name "/web" is already in use by container "{cid}". '
            "You have to remove (or rename) that container to be able to reuse that name."))
        resp = await client.post("/containers/create?name=a", json=spec)
        assert (resp.status, (await body(resp))["message"]) == (
            400, "Invalid container name (a), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        bad = {**spec, "HostConfig": {"RestartPolicy": {"Name": "sometimes"}}}
        resp = await client.post("/containers/create", json=bad)
        assert (resp.status, (await body(resp))["message"]) == (
            400, "invalid restart policy: unknown policy 'sometimes'; use one of 'no', "
                 "'always', 'on-failure', or 'unless-stopped'")
        resp = await client.post("/containers/create", json={"Image": "nope", "Cmd": ["x"]})
        assert (resp.status, await body(resp)) == (404, {"message": "No such image: nope:latest"})
        resp = await client.post("/containers/create", data=b"{}",
                                 headers={"Content-Type": "text/plain"})
        assert (resp.status, (await body(resp))["message"]) == (
            400, "unsupported Content-Type header (text/plain): must be 'application/json'")
        resp = await client.post("/containers/create", data=b"",
                                 headers={"Content-Type": "application/json"})
        assert (await body(resp))["message"] == "invalid JSON: got EOF while reading request body"
        resp = await client.post("/containers/create",
                                 json={**spec, "HostConfig": {"OomScoreAdj": 500}})
        assert resp.status == 400
        assert "HostConfig.OomScoreAdj" in (await body(resp))["message"]

        resp = await client.get("/containers/web/json")
        doc = await body(resp)
        assert doc["Id"] == cid and doc["State"]["Status"] == "created"
        assert doc["HostConfig"]["LogConfig"]["Type"] == "json-file"
        resp = await client.get("/containers/nosuch/json")
        assert (resp.status, await body(resp)) == (404, {"message": "No such container: nosuch"})

        assert await body(await client.get("/containers/json")) == []
        items = await body(await client.get("/containers/json?all=1"))
        assert [i["Id"] for i in items] == [cid] and items[0]["Names"] == ["/web"]
        flt = json.dumps({"status": {"created": True}})
        assert len(await body(await client.get("/containers/json", params={"filters": flt})))
        flt = json.dumps({"bogus": ["x"]})
        resp = await client.get("/containers/json", params={"filters": flt})
        assert (resp.status, await body(resp)) == (400, {"message": "invalid filter 'bogus'"})

        resp = await client.post("/containers/web/rename?name=web2")
        assert resp.status == 204
        resp = await client.post("/containers/web2/rename?name=web2")
        assert (resp.status, (await body(resp))["message"]) == (
            400, "Renaming a container with the same name as its current name")

        resp = await client.post("/containers/web2/stop")
        assert resp.status == 304 and await resp.read() == b""
        resp = await client.post("/containers/web2/kill")
        assert (resp.status, (await body(resp))["message"]) == (
            409, f"cannot kill container: web2: container {cid} is not running")
        resp = await client.post("/containers/web2/start", data=b'{"Binds": []}')
        assert resp.status == 400
        resp = await client.delete("/containers/web2?link=1")
        assert resp.status == 500

        # A created container is not running: wait answers at once.
        resp = await client.post("/containers/web2/wait")
        assert (resp.status, await body(resp)) == (200, {"StatusCode": 0})
        resp = await client.post("/containers/web2/wait?condition=sometime")
        assert (resp.status, await body(resp)) == (400, {"message":
                                                         'invalid condition: "sometime"'})

    serve(context, check)


def test_events_history_and_stream_errors(context: ApiContext) -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        since = time.time()
        resp = await client.post("/containers/create?name=one", json={"Image": "busybox"})
        cid = (await body(resp))["Id"]
        assert (await client.post("/containers/one/rename?name=two")).status == 204
        params = {"since": f"{since:.6f}", "until": f"{time.time() + 0.5:.6f}",
                  "filters": json.dumps({"type": ["container"]})}
        resp = await client.get("/events", params=params)
        lines = (await resp.read()).decode().splitlines()
        events = [json.loads(line) for line in lines]
        assert [(ev["Action"], ev["Actor"]["Attributes"]["name"]) for ev in events] == [
            ("create", "one"), ("rename", "two")]
        assert events[0]["id"] == cid and events[0]["from"] == "busybox"

        resp = await client.get("/events", params={"since": "20", "until": "10"})
        assert (resp.status, await body(resp)) == (400, {
            "message": "`since` time (20) cannot be after `until` time (10)"})
        resp = await client.get("/events", params={"filters": json.dumps({"nope": ["x"]})})
        assert (resp.status, await body(resp)) == (400, {"message": "invalid filter 'nope'"})
        resp = await client.get("/containers/two/logs")
        assert (resp.status, await body(resp)) == (400, {
            "message": "Bad parameters: you must choose at least one stream"})
        resp = await client.get("/containers/two/logs?stdout=1")
        assert (resp.status, await resp.read()) == (200, b"")  # never ran: no log yet
        assert resp.headers["Content-Type"] == "application/vnd.docker.multiplexed-stream"

    serve(context, check)


def test_images_and_pull(context: ApiContext) -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        items = await body(await client.get("/images/json"))
        assert [i["RepoTags"] for i in items] == [["busybox:latest"]]
        doc = await body(await client.get("/images/busybox/json"))
        assert doc["RepoTags"] == ["busybox:latest"]
        doc = await body(await client.get("/v1.51/images/docker.io/library/busybox:latest/json"))
        assert doc["Id"] == items[0]["Id"]
        resp = await client.get("/images/nope/json")
        assert (resp.status, await body(resp)) == (404, {"message": "No such image: nope"})
        resp = await client.post("/images/create?fromImage=Alpine&tag=3")
        assert resp.status == 400
        assert (await body(resp))["message"] == (
            "invalid reference format: repository name (library/Alpine) must be lowercase")
        resp = await client.post("/images/load", data=b"not a tar",
                                 headers={"Content-Type": "application/x-tar"})
        assert resp.status == 400

    serve(context, check)
