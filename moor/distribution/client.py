"""Talk to one repository of a registry over the v2 API (aiohttp).

`Repository.open` pings the registry's endpoints in order (mirrors, https, then http for
insecure ones) and keeps the first that answers; the 401 of the ping tells the auth scheme.
Bearer tokens are fetched from the challenge's realm for the scopes an operation needs
(with Basic credentials when the caller has them) and cached per scope set. Every body that
is named by a digest is checked against it before anyone uses it.

Errors are translated here (`registry_error`) into Docker's texts and classes:
MANIFEST_UNKNOWN, NAME_UNKNOWN and denied access are 404, a refused login 401, the rest 500.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
from yarl import URL

from moor.distribution.auth import AuthConfig, Challenge, basic_header, parse_challenges
from moor.distribution.errors import (
    DigestMismatch,
    RegistryError,
    RegistryNotFound,
    Unauthorized,
)
from moor.distribution.manifest import ACCEPT, check_digest, kind_of
from moor.distribution.settings import Endpoint, Settings

__all__ = ["Repository", "connect", "new_session", "registry_error"]

_CHUNK = 1 << 20
Progress = Callable[[int], Awaitable[None] | None]


def new_session(settings: Settings) -> aiohttp.ClientSession:
    """Return a session for registry traffic (no overall timeout: layers can be large)."""
    ctx = ssl.create_default_context()
    if settings.ca_file:
        ctx.load_verify_locations(settings.ca_file)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=120)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=16),
                                 timeout=timeout, auto_decompress=False,
                                 headers={"User-Agent": "moorage/0.1 (docker-compatible)"})


class _Errors(msgspec.Struct):
    errors: list[dict[str, Any]] = []


def _registry_errors(body: bytes) -> list[dict[str, Any]]:
    try:
        return msgspec.json.decode(body, type=_Errors).errors
    except msgspec.DecodeError:
        return []


def registry_error(status: int, body: bytes, challenge: str, *, what: str, name: str,
                   push: bool = False) -> Exception:
    """Return Docker's error for a failed registry answer (`distribution/errors.go`)."""
    errors = _registry_errors(body)
    codes = [str(x.get("code", "")) for x in errors]
    denied = "DENIED" in codes or any(
        c.params.get("error") == "insufficient_scope" for c in parse_challenges(challenge))
    if status in (401, 403) and denied:
        if push:
            return Unauthorized("denied: requested access to the resource is denied")
        return RegistryNotFound(
            f"pull access denied for {name}, repository does not exist or may require "
            "'docker login': denied: requested access to the resource is denied")
    first = errors[0] if errors else {}
    message = str(first.get("message", "")) or body.decode(errors="replace").strip()
    if "MANIFEST_UNKNOWN" in codes:
        return RegistryNotFound(f"manifest for {what} not found: manifest unknown: {message}")
    if "NAME_UNKNOWN" in codes:
        return RegistryNotFound(f"repository {name} not found: name unknown: {message}")
    if status == 404 and not codes:
        return RegistryNotFound(f"manifest for {what} not found: manifest unknown: "
                                "manifest unknown")
    if status == 401:
        return Unauthorized(f"unauthorized: {message or 'authentication required'}")
    code = codes[0].lower().replace("_", " ") if codes else f"status {status}"
    return RegistryError(f"{code}: {message}" if message else code)


class Repository:
    """One repository (`path`) on one registry endpoint, with its credentials."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: Endpoint, path: str,
                 auth: AuthConfig, *, familiar: str = "", push: bool = False) -> None:
        self.session = session
        self.endpoint = endpoint
        self.path = path
        self.auth = auth
        self.familiar = familiar or path
        self.push = push
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], str] = {}
        self._ssl: Any = None if endpoint.verify_tls else False

    @property
    def base(self) -> str:
        return f"{self.endpoint.url}/v2/{self.path}"

    # --- auth ---

    async def ping(self) -> None:
        """GET /v2/: learn the auth scheme (a connection error means: next endpoint)."""
        async with self.session.get(f"{self.endpoint.url}/v2/", ssl=self._ssl,
                                    allow_redirects=False) as resp:
            await resp.read()
            if resp.status == 401:
                found = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
                self._challenge = found[0] if found else None
            elif resp.status >= 500 or resp.status == 404:
                raise RegistryError(f"{self.endpoint.url}/v2/ answered {resp.status}")

    def scopes(self, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
        actions = "pull,push" if self.push else "pull"
        return (f"repository:{self.path}:{actions}", *extra)

    async def _token(self, scopes: tuple[str, ...]) -> str:
        cached = self._tokens.get(scopes)
        if cached is not None:
            return cached
        assert self._challenge is not None
        params = self._challenge.params
        realm = params.get("realm", "")
        if not realm:
            raise RegistryError("the registry's Bearer challenge names no realm")
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        query += [("scope", s) for s in scopes]
        creds = self.auth.credentials()
        headers = {}
        if self.auth.identitytoken:
            form = {"grant_type": "refresh_token", "refresh_token": self.auth.identitytoken,
                    "service": params.get("service", ""), "scope": " ".join(scopes),
                    "client_id": "docker"}
            request = self.session.post(realm, data=form, ssl=self._ssl)
        else:
            if creds is not None:
                headers["Authorization"] = basic_header(*creds)
                query.append(("account", creds[0]))
            request = self.session.get(realm, params=query, headers=headers, ssl=self._ssl)
        async with request as resp:
            body = await resp.read()
            if resp.status in (401, 403):
                raise Unauthorized(f"unauthorized: {_message(body) or 'authentication required'}")
            if resp.status != 200:
                raise RegistryError(f"token server {realm} answered {resp.status}: "
                                    f"{_message(body)}")
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise RegistryError(f"token server {realm} answered no JSON") from e
        token = doc.get("access_token") or doc.get("token") or ""
        if not token:
            raise RegistryError(f"token server {realm} answered no token")
        self._tokens[scopes] = token
        return str(token)

    async def _authorize(self, headers: dict[str, str], extra: tuple[str, ...] = ()) -> None:
        if self._challenge is None:
            return
        if self._challenge.scheme == "bearer":
            headers["Authorization"] = "Bearer " + await self._token(self.scopes(extra))
        elif self._challenge.scheme == "basic":
            creds = self.auth.credentials()
            if creds is not None:
                headers["Authorization"] = basic_header(*creds)

    async def request(self, method: str, url: str, *, what: str = "", extra: tuple[str, ...] = (),
                      ok: tuple[int, ...] = (200,), **kw: Any) -> aiohttp.ClientResponse:
        """Send an authorised request; return the response if its status is in `ok`
        (the caller releases it), else raise Docker's error for it."""
        headers = dict(kw.pop("headers", {}) or {})
        await self._authorize(headers, extra)
        resp = await self.session.request(method, url, headers=headers, ssl=self._ssl, **kw)
        if resp.status in ok:
            return resp
        body = await resp.read()
        resp.release()
        raise registry_error(resp.status, body, resp.headers.get("WWW-Authenticate", ""),
                             what=what or self.familiar, name=self.familiar, push=self.push)

    async def login(self) -> None:
        """Check the credentials as `docker login` does: a token (or /v2/) must accept them."""
        creds = self.auth.credentials()
        if self._challenge is None:
            return
        if self._challenge.scheme == "bearer":
            self._tokens.clear()
            if creds is None and not self.auth.identitytoken:
                raise Unauthorized("unauthorized: authentication required")
            await self._token(())
            return
        headers = {"Authorization": basic_header(*creds)} if creds else {}
        async with self.session.get(f"{self.endpoint.url}/v2/", headers=headers,
                                    ssl=self._ssl) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise Unauthorized(f"login attempt to {self.endpoint.url}/v2/ failed with "
                                   f"status: {resp.status} {resp.reason}: {_message(body)}")

    # --- reading ---

    async def manifest(self, reference: str, what: str) -> tuple[bytes, str, str]:
        """Return (body, media type, digest) of a manifest, its digest verified."""
        resp = await self.request("GET", f"{self.base}/manifests/{reference}", what=what,
                                  headers={"Accept": ACCEPT})
        try:
            body = await resp.read()
            content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            header = resp.headers.get("Docker-Content-Digest", "")
        finally:
            resp.release()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:"):
            check_digest(body, reference, f"manifest {reference}")
        elif header.startswith("sha256:") and header != digest:
            raise DigestMismatch(f"manifest for {what}: digest mismatch: got {digest}, "
                                 f"registry said {header}")
        return body, kind_of(body, content_type), digest

    async def blob_bytes(self, digest: str, limit: int = 32 << 20) -> bytes:
        """Return a small blob (a config), its digest verified."""
        resp = await self.request("GET", f"{self.base}/blobs/{digest}")
        try:
            body = await resp.content.read(limit + 1)
        finally:
            resp.release()
        if len(body) > limit:
            raise RegistryError(f"blob {digest} is larger than {limit} bytes")
        check_digest(body, digest, f"blob {digest}")
        return body

    async def download(self, digest: str, size: int, dest: str,
                       progress: Callable[[int], None]) -> None:
        """Stream a blob into dest, verifying its digest; dest is removed if it fails."""
        h = hashlib.sha256()
        done = 0
        try:
            resp = await self.request("GET", f"{self.base}/blobs/{digest}")
            try:
                with open(dest, "wb") as f:
                    async for chunk in resp.content.iter_chunked(_CHUNK):
                        h.update(chunk)
                        f.write(chunk)
                        done += len(chunk)
                        progress(done)
            finally:
                resp.release()
            if "sha256:" + h.hexdigest() != digest or (size >= 0 and done != size):
                raise DigestMismatch(f"filesystem layer verification failed for digest {digest}")
        except BaseException:
            try:
                os.unlink(dest)
            except FileNotFoundError:
                pass
            raise

    # --- writing ---

    async def has_blob(self, digest: str) -> bool:
        resp = await self.request("HEAD", f"{self.base}/blobs/{digest}", ok=(200, 404))
        resp.release()
        return resp.status == 200

    async def mount(self, digest: str, source: str) -> str | None:
        """Try a cross-repository mount; return None if mounted, else an upload URL."""
        resp = await self.request(
            "POST", f"{self.base}/blobs/uploads/", ok=(201, 202),
            params={"mount": digest, "from": source},
            extra=(f"repository:{source}:pull",))
        resp.release()
        if resp.status == 201:
            return None
        return self._location(resp)

    async def start_upload(self) -> str:
        resp = await self.request("POST", f"{self.base}/blobs/uploads/", ok=(202,))
        resp.release()
        return self._location(resp)

    def _location(self, resp: aiohttp.ClientResponse) -> str:
        loc = resp.headers.get("Location", "")
        if not loc:
            raise RegistryError("the registry started an upload without a Location")
        return str(resp.url.join(URL(loc)))

    async def upload(self, location: str, path: str, digest: str, size: int, chunk: int,
                     progress: Callable[[int], None]) -> None:
        """Upload a blob file: one PUT if it fits a chunk, else PATCHes then a PUT."""
        sep = "&" if "?" in location else "?"
        if size <= chunk:
            with open(path, "rb") as f:
                data = f.read()
            resp = await self.request("PUT", f"{location}{sep}digest={digest}", ok=(201,),
                                      data=data, headers={
                                          "Content-Type": "application/octet-stream"})
            resp.release()
            progress(size)
            return
        offset = 0
        with open(path, "rb") as f:
            while offset < size:
                data = f.read(chunk)
                end = offset + len(data) - 1
                resp = await self.request("PATCH", location, ok=(202,), data=data, headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{end}"})
                resp.release()
                location = self._location(resp)
                offset += len(data)
                progress(offset)
        sep = "&" if "?" in location else "?"
        resp = await self.request("PUT", f"{location}{sep}digest={digest}", ok=(201,),
                                  headers={"Content-Length": "0"})
        resp.release()

    async def put_manifest(self, reference: str, body: bytes, media_type: str) -> str:
        resp = await self.request("PUT", f"{self.base}/manifests/{reference}", ok=(201,),
                                  data=body, headers={"Content-Type": media_type})
        resp.release()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        said = resp.headers.get("Docker-Content-Digest", digest)
        if said != digest:
            raise DigestMismatch(f"the registry stored manifest {said}, expected {digest}")
        return digest


def _message(body: bytes) -> str:
    errors = _registry_errors(body)
    if errors:
        return str(errors[0].get("message", ""))
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:200]
    return str(doc.get("details") or doc.get("error") or "") if isinstance(doc, dict) else ""


async def connect(session: aiohttp.ClientSession, endpoints: list[Endpoint], path: str,
                  auth: AuthConfig, *, familiar: str = "", push: bool = False) -> list[Repository]:
    """Return the repository on each endpoint that answers its ping, in order.

    An endpoint that cannot be reached (refused, TLS failure on an insecure registry's
    https, a timeout) is skipped, as dockerd falls back to the next one.
    """
    found: list[Repository] = []
    last: Exception | None = None
    for endpoint in endpoints:
        repo = Repository(session, endpoint, path, auth, familiar=familiar, push=push)
        try:
            await repo.ping()
        except (aiohttp.ClientError, OSError, TimeoutError, RegistryError) as e:
            last = e
            continue
        found.append(repo)
    if not found:
        where = endpoints[-1].url if endpoints else "?"
        raise RegistryError(f'Get "{where}/v2/": {last}') from last
    return found
