"""Pure parts of the distribution client: references, manifest choice, auth headers,
registry settings, progress messages and the registry error texts."""

from __future__ import annotations

import base64
import json

import pytest

from moor.distribution.auth import AuthConfig, decode_registry_auth, parse_challenges
from moor.distribution.client import registry_error
from moor.distribution.errors import (
    BadPlatform,
    InvalidReference,
    RegistryError,
    RegistryNotFound,
    Unauthorized,
)
from moor.distribution.manifest import (
    Descriptor,
    Index,
    Platform,
    parse_platform,
    select_manifest,
)
from moor.distribution.progress import bar, human_size
from moor.distribution.reference import parse_reference
from moor.distribution.settings import Endpoint, Settings, endpoints_for

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(("text", "name", "familiar"), [
    ("busybox", "docker.io/library/busybox", "busybox:latest"),
    ("library/busybox:1.36", "docker.io/library/busybox", "busybox:1.36"),
    ("index.docker.io/foo/bar", "docker.io/foo/bar", "foo/bar:latest"),
    ("localhost/app", "localhost/app", "localhost/app:latest"),
    ("127.0.0.1:5000/a/b:v1", "127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:v1"),
    ("Registry/app", "Registry/app", "Registry/app:latest"),  # upper case: a domain
    (f"foo@{D}", "docker.io/library/foo", f"foo@{D}"),
    ("[::1]:5000/x", "[::1]:5000/x", "[::1]:5000/x:latest"),
])
def test_references_normalise_as_docker(text: str, name: str, familiar: str) -> None:
    ref = parse_reference(text)
    assert (ref.name, ref.familiar) == (name, familiar)


@pytest.mark.parametrize(("text", "message"), [
    ("Foo", "invalid reference format: repository name (library/Foo) must be lowercase"),
    ("a" * 64, f"invalid repository name ({'a' * 64}), cannot specify 64-byte hexadecimal "
               "strings"),
    ("foo:bad tag", "invalid reference format"),
    ("foo//bar", "invalid reference format"),
    ("", "repository name must have at least one component"),
    ("x/" + "a" * 260, "repository name must not be more than 255 characters"),
])
def test_references_refused_with_dockers_texts(text: str, message: str) -> None:
    with pytest.raises(InvalidReference) as err:
        parse_reference(text)
    assert err.value.message == message


def _index(*plats: Platform | None) -> Index:
    return Index(manifests=[Descriptor(digest=f"sha256:{n:064x}", platform=p)
                            for n, p in enumerate(plats)])


def test_manifest_selection_picks_the_platform() -> None:
    idx = _index(Platform(os="linux", architecture="arm64", variant="v8"),
                 Platform(os="linux", architecture="amd64"),
                 Platform(os="unknown", architecture="unknown"))
    assert select_manifest(idx, parse_platform("")).digest.endswith("1")
    assert select_manifest(idx, parse_platform("linux/arm64")).digest.endswith("0")
    arm = _index(Platform(os="linux", architecture="arm", variant="v6"),
                 Platform(os="linux", architecture="arm", variant="v7"))
    assert select_manifest(arm, parse_platform("linux/arm/v7")).digest.endswith("1")
    with pytest.raises(RegistryNotFound, match="^no matching manifest for linux/s390x in the "
                                               "manifest list entries$"):
        select_manifest(idx, parse_platform("linux/s390x"))
    # An entry without a platform matches, after exact ones.
    assert select_manifest(_index(None, Platform(os="linux", architecture="amd64")),
                           parse_platform("")).digest.endswith("1")
    with pytest.raises(BadPlatform):
        parse_platform("windows/amd64")


def test_auth_headers() -> None:
    got = parse_challenges('Bearer realm="https://auth.example/token",service="reg",'
                           'scope="repository:a/b:pull",error="insufficient_scope"')
    assert got[0].scheme == "bearer"
    assert got[0].params == {"realm": "https://auth.example/token", "service": "reg",
                             "scope": "repository:a/b:pull", "error": "insufficient_scope"}
    assert parse_challenges('Basic realm="x \\"y\\""')[0].params == {"realm": 'x "y"'}
    raw = json.dumps({"username": "u", "password": "p?>", "serveraddress": "r"}).encode()
    header = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert decode_registry_auth(header).credentials() == ("u", "p?>")
    assert decode_registry_auth("%%%not-base64") == AuthConfig()  # anonymous, as dockerd
    assert decode_registry_auth(None) == AuthConfig()
    pair = AuthConfig(auth=base64.b64encode(b"me:pw").decode())
    assert pair.credentials() == ("me", "pw")


def test_insecure_registries_and_mirrors() -> None:
    s = Settings.from_env({"MOOR_INSECURE_REGISTRIES": "reg.lan:5000,10.9.0.0/16",
                           "MOOR_REGISTRY_MIRRORS": "https://mirror.example/"})
    assert s.is_insecure("127.0.0.1:5000") and s.is_insecure("localhost:1")
    assert s.is_insecure("[::1]:5000") and s.is_insecure("reg.lan:5000")
    assert s.is_insecure("10.9.3.4:443") and not s.is_insecure("10.8.0.1")
    assert not s.is_insecure("docker.io") and not s.is_insecure("example.com")
    assert endpoints_for("127.0.0.1:9", s) == [Endpoint("https://127.0.0.1:9", False),
                                               Endpoint("http://127.0.0.1:9")]
    assert endpoints_for("example.com", s) == [Endpoint("https://example.com")]
    hub = endpoints_for("docker.io", s)
    assert hub[0] == Endpoint("https://mirror.example", mirror=True)
    assert hub[-1].url == "https://registry-1.docker.io"
    assert endpoints_for("docker.io", s, push=True)[0].url == "https://registry-1.docker.io"


def test_registry_error_texts() -> None:
    unknown = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN",
                                      "message": "manifest unknown"}]}).encode()
    err = registry_error(404, unknown, "", what="r/a:x", name="r/a")
    assert isinstance(err, RegistryNotFound)
    assert str(err) == "manifest for r/a:x not found: manifest unknown: manifest unknown"
    denied = registry_error(401, b"", 'Bearer realm="x",error="insufficient_scope"',
                            what="r/a:x", name="r/a")
    assert str(denied) == ("pull access denied for r/a, repository does not exist or may "
                           "require 'docker login': denied: requested access to the "
                           "resource is denied")
    assert isinstance(registry_error(401, b"", 'Bearer realm="x"', what="", name=""),
                      Unauthorized)
    assert isinstance(registry_error(500, b"boom", "", what="", name=""), RegistryError)


def test_progress_text() -> None:
    assert human_size(1_234_567) == "1.235MB" and human_size(999) == "999B"
    assert bar(5, 10).startswith("[" + "=" * 24 + ">")
    assert bar(10, 10).endswith("] 10B/10B")
