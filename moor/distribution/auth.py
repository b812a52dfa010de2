"""Registry credentials and challenges: `X-Registry-Auth`, `WWW-Authenticate`. Pure.

`X-Registry-Auth` is base64url JSON of Docker's AuthConfig; an empty or undecodable header
means anonymous, as dockerd treats it. A 401's `WWW-Authenticate` names the scheme (Bearer
with realm, service, scope, error; or Basic); parameters may be quoted strings with escapes.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

import msgspec

__all__ = ["AuthConfig", "Challenge", "basic_header", "decode_registry_auth",
           "parse_challenges", "scope_for"]


class AuthConfig(msgspec.Struct, frozen=True):
    """Docker's AuthConfig (the JSON of `X-Registry-Auth` and of `POST /auth`)."""

    username: str = ""
    password: str = ""
    auth: str = ""  # base64 "user:password", as config.json keeps it
    email: str = ""
    serveraddress: str = ""
    identitytoken: str = ""
    registrytoken: str = ""

    def credentials(self) -> tuple[str, str] | None:
        """Return (user, password) from the explicit fields or the `auth` pair."""
        if self.username or self.password:
            return self.username, self.password
        if self.auth:
            try:
                user, _, password = base64.b64decode(self.auth).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return user, password
        return None


@dataclass(frozen=True)
class Challenge:
    """One scheme of a `WWW-Authenticate` header and its parameters (lower-case keys)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def decode_registry_auth(header: str | None) -> AuthConfig:
    """Decode `X-Registry-Auth`; anything undecodable is anonymous (dockerd's rule)."""
    if not header:
        return AuthConfig()
    raw = header.strip()
    try:
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        return msgspec.json.decode(data, type=AuthConfig)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return AuthConfig()


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*(,|$)')
_SCHEME = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a `WWW-Authenticate` value into challenges, in order."""
    out: list[Challenge] = []
    pos = 0
    while pos < len(header):
        m = _SCHEME.match(header, pos)
        if m is None:
            break
        scheme, pos = m.group(1).lower(), m.end()
        params: dict[str, str] = {}
        while pos < len(header):
            p = _PARAM.match(header, pos)
            if p is None:
                break
            quoted, bare = p.group(2), p.group(3)
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
            params[p.group(1).lower()] = value
            pos = p.end()
        out.append(Challenge(scheme, params))
        while pos < len(header) and header[pos] in ", ":
            pos += 1
    return out


def basic_header(user: str, password: str) -> str:
    """Return an `Authorization` value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def scope_for(repository: str, actions: tuple[str, ...]) -> str:
    """Return a token scope: `repository:<path>:pull[,push]`."""
    return f"repository:{repository}:{','.join(actions)}"
