"""The aiohttp application: routes (bare and `/v1.NN/`), version negotiation, Docker's errors.

Every response carries dockerd's headers (`Api-Version`, `Server`, `Ostype`,
`Docker-Experimental`). A versioned path outside 1.24–1.51 is refused with dockerd's
texts; an unknown route is `404 {"message":"page not found"}`; a MoorError becomes
`{"message": ...}` with the status of its class.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import redis as redislib
from aiohttp import web

from engine.errors import InvalidParameter, MoorError
from moor.api import (
    archive,
    attach,
    build,
    commit,
    containers,
    distribution,
    execs,
    imageops,
    images,
    networks,
    prune,
    streams,
    system,
    update,
    volumes,
)
from moor.api import stats as stats_api
from moor.api.context import API_VERSION, CONTEXT, ENGINE_VERSION, MIN_API_VERSION, ApiContext
from moor.api.http import JSON, dumps

__all__ = ["ROUTES", "build_app", "parse_version"]

log = logging.getLogger("moorage.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/_ping", system.ping),
    ("HEAD", "/_ping", system.ping_head),
    ("GET", "/version", system.version),
    ("GET", "/info", system.info),
    ("GET", "/events", streams.events),
    ("GET", "/containers/json", containers.list_),
    ("POST", "/containers/create", containers.create),
    ("GET", "/containers/{id}/json", containers.inspect),
    ("POST", "/containers/{id}/start", containers.start),
    ("POST", "/containers/{id}/stop", containers.stop),
    ("POST", "/containers/{id}/restart", containers.restart),
    ("POST", "/containers/{id}/kill", containers.kill),
    ("POST", "/containers/{id}/wait", streams.wait),
    ("POST", "/containers/{id}/rename", containers.rename),
    ("POST", "/containers/{id}/attach", attach.attach),
    ("GET", "/containers/{id}/attach/ws", attach.attach_ws),
    ("POST", "/containers/{id}/resize", attach.resize),
    ("GET", "/containers/{id}/logs", streams.logs),
    ("GET", "/containers/{id}/stats", stats_api.stats),
    ("GET", "/containers/{id}/top", stats_api.top),
    ("DELETE", "/containers/{id}", containers.remove),
    ("DELETE", "/containers/{parent:/?[^/]+}/{alias}", containers.remove_link),
    ("HEAD", "/containers/{id}/archive", archive.head),
    ("GET", "/containers/{id}/archive", archive.get),
    ("PUT", "/containers/{id}/archive", archive.put),
    ("POST", "/containers/prune", prune.prune),
    ("GET", "/volumes", volumes.list_),
    ("POST", "/volumes/create", volumes.create),
    ("POST", "/volumes/prune", volumes.prune),
    ("GET", "/volumes/{name}", volumes.inspect),
    ("DELETE", "/volumes/{name}", volumes.remove),
    ("POST", "/containers/{id}/pause", execs.pause),
    ("POST", "/containers/{id}/unpause", execs.unpause),
    ("POST", "/containers/{id}/update", update.update),
    ("GET", "/containers/{id}/changes", commit.changes),
    ("POST", "/commit", commit.commit),
    ("POST", "/build", build.build),
    ("POST", "/containers/{id}/exec", execs.create),
    ("POST", "/exec/{id}/start", execs.start),
    ("POST", "/exec/{id}/resize", execs.resize),
    ("GET", "/exec/{id}/json", execs.inspect),
    ("GET", "/networks", networks.list_),
    ("POST", "/networks/create", networks.create),
    ("POST", "/networks/prune", networks.prune),
    ("GET", "/networks/{id}", networks.inspect),
    ("DELETE", "/networks/{id}", networks.remove),
    ("POST", "/networks/{id}/connect", networks.connect),
    ("POST", "/networks/{id}/disconnect", networks.disconnect),
    ("GET", "/images/json", images.list_),
    ("POST", "/images/load", images.load),
    ("POST", "/images/create", images.create),
    ("POST", "/images/prune", imageops.prune),
    ("GET", "/images/get", imageops.save),
    ("GET", "/images/{name:.+}/json", images.inspect),
    ("GET", "/images/{name:.+}/history", imageops.history),
    ("GET", "/images/{name:.+}/get", imageops.save_one),
    ("POST", "/images/{name:.+}/tag", distribution.tag),
    ("POST", "/images/{name:.+}/push", distribution.push_image),
    ("DELETE", "/images/{name:.+}", images.remove),
    ("POST", "/auth", distribution.auth),
]

_MAX = tuple(int(p) for p in API_VERSION.split("."))
_MIN = tuple(int(p) for p in MIN_API_VERSION.split("."))
_HEADERS = {"Api-Version": API_VERSION, "Server": f"Docker/{ENGINE_VERSION} (linux)",
            "Ostype": "linux", "Docker-Experimental": "false"}


def parse_version(text: str) -> tuple[int, ...]:
    """Return "1.44" as (1, 44); anything unparsable is a 400."""
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        raise InvalidParameter(f"invalid API version: {text}") from None


def _error(status: int, message: str) -> web.Response:
    if status == 304:
        return web.Response(status=304)
    return web.Response(status=status, body=dumps({"message": message}), content_type=JSON)


@web.middleware
async def docker_edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Negotiate the version, then map every failure to Docker's error shape."""
    try:
        text = request.match_info.get("version")
        if text is not None:
            version = parse_version(text)
            if version > _MAX:
                raise InvalidParameter(f"client version {text} is too new. Maximum supported "
                                       f"API version is {API_VERSION}")
            if version < _MIN:
                raise InvalidParameter(
                    f"client version {text} is too old. Minimum supported API version is "
                    f"{MIN_API_VERSION}, please upgrade your client to a newer version")
        return await handler(request)
    except MoorError as err:
        return _error(err.status, err.message)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        # dockerd answers a wrong method like an unknown path.
        return _error(404, "page not found")
    except web.HTTPException as exc:
        return _error(exc.status, exc.reason)
    except redislib.RedisError as exc:
        return _error(503, f"cannot reach the engine's Redis: {exc}")
    except (ConnectionResetError, BrokenPipeError):
        raise
    except Exception as exc:  # the daemon answers 500, as dockerd does for unclassified errors
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, str(exc) or type(exc).__name__)


async def _docker_headers(request: web.Request, response: web.StreamResponse) -> None:
    for key, value in _HEADERS.items():
        response.headers[key] = value


def build_app(context: ApiContext) -> web.Application:
    """Return the Engine API application bound to one engine."""
    app = web.Application(middlewares=[docker_edge], client_max_size=16 << 20)
    app[CONTEXT] = context
    app.on_response_prepare.append(_docker_headers)
    for method, path, handler in ROUTES:
        for prefix in ("", "/v{version:[0-9][0-9.]*}"):
            app.router.add_route(method, prefix + path, handler)
    return app
