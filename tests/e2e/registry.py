"""A private `docker-registry` (Debian's distribution 2.8) for the registry tests.

Started on a free loopback port with a temporary storage dir and its own config file,
never the system service; stopped by PID. With `token=True` it trusts a small token
server run here (a thread): RS256 JWTs signed by a throw-away self-signed certificate
(sent in the `x5c` header, trusted through `rootcertbundle`); the server grants pull and
push only to `user:password` and answers anonymous requests with a token without access,
so the registry answers `insufficient_scope`, as a private repository does.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.conftest import free_port, missing_capability
from tests.e2e.conftest import wait_for

REGISTRY = "/usr/bin/docker-registry"
SKOPEO = "/usr/bin/skopeo"
USER, PASSWORD = "moor", "s3cret-pass"
SERVICE = "moor-test-registry"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """Sign registry tokens with a fresh RSA key and self-signed certificate."""

    def __init__(self, workdir: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
        from cryptography.x509.oid import NameOID

        self._padding, self._hashes = padding, hashes
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moor-test-token")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(self.key, hashes.SHA256()))
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.bundle = os.path.join(workdir, "token.crt")
        with open(self.bundle, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))

    def token(self, subject: str, access: list[dict[str, Any]]) -> str:
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.cert_der).decode()]}
        now = int(time.time())
        claims = {"iss": "moor-test-issuer", "sub": subject, "aud": SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        sig = self.key.sign(signing.encode(), self._padding.PKCS1v15(), self._hashes.SHA256())
        return f"{signing}.{_b64(sig)}"


def _token_handler(issuer: TokenIssuer, log: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            query = parse_qs(urlparse(self.path).query)
            auth = self.headers.get("Authorization", "")
            user = ""
            if auth.startswith("Basic "):
                got = base64.b64decode(auth[6:]).decode()
                if got != f"{USER}:{PASSWORD}":
                    log.append("refused")
                    self.send_response(401)
                    self.end_headers()
                    self.wfile.write(b'{"details":"incorrect username or password"}')
                    return
                user = USER
            access = []
            for scope in query.get("scope", []):
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                if user:
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
            log.append(f"token user={user or '-'} scopes={query.get('scope', [])}")
            body = json.dumps({"token": issuer.token(user or "anonymous", access),
                               "expires_in": 300}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

    return Handler


@dataclass
class Registry:
    """A running registry: its host:port, storage dir and (token mode) the server's log."""

    host: str
    storage: str
    proc: subprocess.Popen[bytes]
    log_path: str
    token_log: list[str]

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def log_tail(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return "\n".join(f.read().splitlines()[-20:])

    def blob_path(self, digest: str) -> str:
        hexpart = digest.removeprefix("sha256:")
        return os.path.join(self.storage, "docker/registry/v2/blobs/sha256", hexpart[:2],
                            hexpart, "data")

    def skopeo_copy(self, archive: str, ref: str, *extra: str) -> None:
        subprocess.run([SKOPEO, "--insecure-policy", "copy", *extra, "--dest-tls-verify=false",
                        f"docker-archive:{archive}", f"docker://{self.host}/{ref}"],
                       check=True, capture_output=True, timeout=120)

    def skopeo_inspect(self, ref: str, *extra: str) -> dict[str, Any]:
        out = subprocess.run([SKOPEO, "inspect", "--tls-verify=false", *extra,
                              f"docker://{self.host}/{ref}"],
                             check=True, capture_output=True, text=True, timeout=60).stdout
        return dict(json.loads(out))

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url(path), data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()


def start_registry(workdir: str, *, token: bool = False) -> Iterator[Registry]:
    """Run docker-registry on a free loopback port until the generator is closed."""
    if not os.path.exists(REGISTRY) or not os.path.exists(SKOPEO):
        missing_capability("docker-registry and skopeo (apt-get install docker-registry skopeo)")
    base = tempfile.mkdtemp(prefix="registry-", dir=workdir)
    storage = os.path.join(base, "storage")
    port = free_port()
    token_log: list[str] = []
    server = None
    auth = ""
    if token:
        issuer = TokenIssuer(base)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(issuer, token_log))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        auth = (f"auth:\n  token:\n    realm: http://127.0.0.1:{server.server_port}/token\n"
                f"    service: {SERVICE}\n    issuer: moor-test-issuer\n"
                f"    rootcertbundle: {issuer.bundle}\n")
    config = os.path.join(base, "config.yml")
    with open(config, "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n"
                f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
                f"  delete:\n    enabled: true\n"
                f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(16)}\n{auth}")
    log_path = os.path.join(base, "registry.log")
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([REGISTRY, "serve", config], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    reg = Registry(f"127.0.0.1:{port}", storage, proc, log_path, token_log)

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"docker-registry exited {proc.returncode}\n{reg.log_tail()}")
        try:
            return reg.request("GET", "/v2/")[0] in (200, 401)
        except OSError:
            return False

    try:
        wait_for(answers, 20, "docker-registry to answer /v2/", reg.log_tail)
        yield reg
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if server is not None:
            server.shutdown()
            server.server_close()
        shutil.rmtree(base, ignore_errors=True)
