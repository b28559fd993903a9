"""A client of the OCI distribution API (https://github.com/opencontainers/distribution-spec): manifests
and blobs over HTTP(S), with the authentication registries use.

Authentication follows the challenge in a 401 answer: `Bearer realm=...,service=...,scope=...` (Docker
Hub's token flow: ask the realm for a token, with the credentials if there are any) or `Basic`. Tokens are
kept per scope for the client's life. Credentials come from the caller (`--username` with
`--password-stdin`, or `--creds`), else from the first auth file that has the registry
(containers-auth.json(5): `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
`~/.config/containers/auth.json`, then Docker's `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).

A 401 names where to authenticate, so a hostile registry could ask for the password anywhere. Credentials
therefore go only to the registry itself and to https token realms (`may_send_credentials`): over
https, or over plain http only to the registry's own loopback address (a test registry; another port of
127.0.0.1 may be anyone's). Never across a redirect (blob downloads are often redirected to a storage
service), and never to a realm that is not http(s) (urllib would read `file://` realms from disk).

Registries on a loopback address are spoken to over plain HTTP, as Docker does; others over HTTPS unless
the caller asks for plain HTTP. Only stdlib: `urllib.request` is imported when a client is made.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from veneer.errors import ImageError, UsageError

if TYPE_CHECKING:
    import urllib.request

logger = logging.getLogger(__name__)

_CHALLENGE_RE = re.compile(r'(\w+)="([^"]*)"')
_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """A user name and password (or token) for one registry."""

    username: str
    password: str

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def parse_creds(text: str) -> Credentials:
    """`USER:PASSWORD` from the command line."""
    username, sep, password = text.partition(":")
    if not sep or not username:
        raise UsageError("Invalid --creds value", hint="Pass --creds USER:PASSWORD.")
    return Credentials(username=username, password=password)


def docker_config_path(env: Mapping[str, str]) -> Path:
    """Where Docker keeps its client configuration: $DOCKER_CONFIG/config.json or ~/.docker/config.json."""
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    return Path(env.get("HOME") or Path.home()) / ".docker" / "config.json"


def auth_file_paths(env: Mapping[str, str]) -> list[Path]:
    """The auth files to look in, in order (containers-auth.json(5), then Docker's config)."""
    home = Path(env.get("HOME") or Path.home())
    paths = []
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        paths.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    paths.append(Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "containers" / "auth.json")
    paths.append(docker_config_path(env))
    return paths


def load_default_credentials(registry: str, env: Mapping[str, str]) -> Credentials | None:
    """The credentials `podman login` or `docker login` stored for `registry`, if any."""
    for path in auth_file_paths(env):
        creds = load_docker_credentials(registry, path)
        if creds is not None:
            logger.debug("Credentials for '%s' from '%s'", registry, path)
            return creds
    return None


def parse_password(username: str, text: str) -> Credentials:
    """`--username USER` with the password read from stdin (its first line)."""
    password = text.splitlines()[0] if text else ""
    if not username or not password:
        raise UsageError(
            "No user name or no password given", hint="Pass --username USER and the password on stdin."
        )
    return Credentials(username=username, password=password)


def load_docker_credentials(registry: str, config: Path) -> Credentials | None:
    """The credentials stored for `registry` in the auth file `config` (Docker's or containers'), if any."""
    try:
        data = json.loads(config.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ImageError(
            f"Cannot read the credentials in '{config}': {e}",
            hint="Fix or remove that file, or pass --username USER --password-stdin.",
        ) from e
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return None
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == "docker.io":
        keys = ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"]
    for key in keys:
        entry = auths.get(key) or auths.get(key.rstrip("/"))
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError) as e:
                raise ImageError(
                    f"The credentials for '{registry}' in '{config}' are garbled: {e}",
                    hint="Log in again (podman login / docker login), or pass --password-stdin.",
                ) from e
            return Credentials(username=username, password=password)
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return Credentials(username=entry["username"], password=entry["password"])
    if data.get("credsStore") or data.get("credHelpers"):
        logger.debug("'%s' names credential helpers, which veneer does not run, ignoring.", config)
    return None


def is_loopback(host: str) -> bool:
    """Whether `host` (with an optional :port) is this machine: localhost, 127.0.0.0/8 or [::1]."""
    import ipaddress

    name = host.split("]", 1)[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def may_send_credentials(url: str, registry_host: str) -> bool:
    """Whether credentials for the registry at `registry_host` may go to `url` (see the module doc)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and parts.netloc == registry_host and is_loopback(registry_host)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="..."` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_RE.findall(rest))


class Response:
    """An open HTTP answer: status, headers, and a body to read (close it)."""

    def __init__(self, raw: IO[bytes], status: int, headers: Iterable[tuple[str, str]]) -> None:
        self.body = raw
        self.status = status
        # Lower-case names: HTTP header names are case-insensitive.
        self.headers = {name.lower(): value for name, value in headers}

    def read(self, size: int = -1) -> bytes:
        return self.body.read(size)

    def read_some(self, size: int) -> bytes:
        """Up to `size` bytes, as soon as some arrived (a stalled download keeps what it received)."""
        read1 = getattr(self.body, "read1", None)
        return bytes(read1(size)) if read1 is not None else self.body.read(size)

    def close(self) -> None:
        self.body.close()


class RegistryClient:
    """One registry and one repository; safe to share between download threads."""

    def __init__(
        self,
        host: str,
        repository: str,
        *,
        registry_name: str,
        creds: Credentials | None,
        plain_http: bool = False,
    ) -> None:
        import urllib.request  # Lazily: the CLI's start-up stays cheap.

        scheme = "http" if plain_http or is_loopback(host) else "https"
        self.host = host
        self.name = registry_name
        self.repository = repository
        self.base = f"{scheme}://{host}/v2/{repository}"
        self.creds = creds
        self._opener: urllib.request.OpenerDirector = urllib.request.build_opener()
        self._auth: str | None = None
        self._lock = threading.Lock()

    def _open(self, url: str, headers: Mapping[str, str], auth: str | None) -> Response:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(url, headers=dict(headers))
        if auth is not None:
            # Unredirected: a redirect to a blob store must not carry the registry's credentials.
            request.add_unredirected_header("Authorization", auth)
        try:
            raw = self._opener.open(request, timeout=_TIMEOUT)
        except urllib.error.HTTPError as e:
            return Response(e, e.code, e.headers.items())
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ImageError(
                f"Cannot reach registry '{self.name}': {reason}",
                hint="Check the registry name and port in the reference, and that it is up.",
            ) from e
        return Response(raw, raw.status, raw.headers.items())

    def get(self, path: str, *, headers: Mapping[str, str] | None = None, what: str) -> Response:
        """GET `path` below the repository, authenticating once if challenged; raise on errors."""
        url = f"{self.base}/{path}"
        headers = dict(headers or {})
        with self._lock:
            auth = self._auth
        response = self._open(url, headers, auth)
        if response.status == 401:
            challenge = response.headers.get("www-authenticate", "")
            response.close()
            auth = self._authenticate(challenge, failed=auth)
            response = self._open(url, headers, auth)
        if response.status in (200, 206):
            return response
        response.close()
        raise self._error(response, what)

    def _error(self, response: Response, what: str) -> ImageError:
        if response.status == 401:
            return ImageError(
                f"Registry '{self.name}' refused access to {what}",
                hint="Pass --username USER --password-stdin, or log in (podman login / docker login) and "
                "try again.",
            )
        if response.status in (403, 404):
            return ImageError(
                f"Registry '{self.name}' has no {what} (HTTP {response.status})",
                hint="Check the repository and tag; a private repository also answers this way without "
                "credentials (--username USER --password-stdin).",
            )
        return ImageError(
            f"Registry '{self.name}' failed to serve {what}: HTTP {response.status}",
            hint="Try again later; an interrupted pull resumes its downloads.",
        )

    def _authenticate(self, challenge: str, *, failed: str | None) -> str:
        """Answer a 401 challenge; returns the Authorization header to retry with."""
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self.creds is None:
                raise ImageError(
                    f"Registry '{self.name}' needs credentials",
                    hint="Pass --username USER --password-stdin, or log in with podman login / docker "
                    "login.",
                )
            if not may_send_credentials(self.base, self.host):
                raise ImageError(
                    f"Not sending the credentials for '{self.name}' over plain HTTP",
                    hint="Leave out --plain-http: credentials go over HTTPS only (or to a loopback "
                    "registry).",
                )
            auth = self.creds.basic()
        elif scheme == "bearer" and params.get("realm"):
            auth = "Bearer " + self._token(params)
        else:
            raise ImageError(
                f"Registry '{self.name}' asks for an unsupported authentication: '{challenge or 'none'}'",
                hint="veneer speaks Basic and Bearer (token) authentication.",
            )
        if auth == failed:
            raise ImageError(
                f"Registry '{self.name}' refused the credentials",
                hint="Check the user name and password (--password-stdin, --creds or the auth file).",
            )
        with self._lock:
            self._auth = auth
        return auth

    def _token(self, params: Mapping[str, str]) -> str:
        import urllib.parse

        realm = params["realm"]
        if urllib.parse.urlsplit(realm).scheme not in ("http", "https"):
            raise ImageError(
                f"Registry '{self.name}' names a token service that is not a web address: '{realm}'",
                hint="The registry is misconfigured or hostile; nothing was pulled.",
            )
        query = {"service": params.get("service", ""), "scope": params.get("scope", "")}
        if not query["scope"]:
            query["scope"] = f"repository:{self.repository}:pull"
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        auth = None
        if self.creds is not None:
            if may_send_credentials(realm, self.host):
                auth = self.creds.basic()
            else:
                logger.warning(
                    "Not sending the credentials for '%s' to its token service %s: credentials go to "
                    "https token services only; asking without them.",
                    self.name,
                    realm,
                )
        logger.debug("Asking %s for a token", realm)
        response = self._open(url, {}, auth)
        try:
            if response.status != 200:
                if response.status in (401, 403):
                    raise ImageError(
                        f"Token service of '{self.name}' refused access (HTTP {response.status})",
                        hint="Check the credentials (--password-stdin or the auth file) and "
                        "the repository name.",
                    )
                raise ImageError(
                    f"The token service of registry '{self.name}' failed: HTTP {response.status}",
                    hint="Try again later.",
                )
            body = response.read(1 << 20)
        finally:
            response.close()
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise ImageError(
                f"The token service of registry '{self.name}' sent no token",
                hint="Check the registry's authentication setup.",
            )
        return token


def client_for(
    host: str,
    repository: str,
    *,
    registry_name: str,
    creds: Credentials | None,
    plain_http: bool,
    authfile: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> RegistryClient:
    """A client with the given credentials, else those stored in `authfile`, else those `podman login`
    or `docker login` stored."""
    if creds is None and authfile is not None:
        if not authfile.is_file():
            raise UsageError(f"No auth file at '{authfile}'", hint="Pass the auth.json of podman login.")
        creds = load_docker_credentials(registry_name, authfile)
    elif creds is None:
        creds = load_default_credentials(registry_name, env if env is not None else os.environ)
    return RegistryClient(host, repository, registry_name=registry_name, creds=creds, plain_http=plain_http)
