"""Real parts for the image pull tests: Debian's `docker-registry` on 127.0.0.1 (anonymous, htpasswd basic
auth, or token auth behind the `TokenServer` below, Docker Hub's flow), and test images built with
buildah (not with veneer) and pushed with skopeo.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from veneer.util import proc

USER, PASSWORD = "alice", "s3cret"
SERVICE, ISSUER = "veneer-test-registry", "veneer-test-token-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A token service as Docker Hub runs one: Basic credentials in, a signed JWT for the scope out.

    alice gets pull and push; anonymous clients get pull only if `anonymous_pull`.
    """

    def __init__(self, directory: Path, *, anonymous_pull: bool) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = time.time()
        import datetime

        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(now - 3600, datetime.UTC))
            .not_valid_after(datetime.datetime.fromtimestamp(now + 86400, datetime.UTC))
            .sign(self.key, hashes.SHA256())
        )
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.bundle = directory / "token-ca.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.anonymous_pull = anonymous_pull
        self.requests: list[tuple[str | None, str]] = []  # (user, scope)
        self.port = free_port()
        # Over https, as veneer sends credentials to no plain-http realm but the registry's own: clients
        # trust `tls_bundle` (SSL_CERT_FILE for veneer, no verification for skopeo's pushes).
        self.realm = f"https://127.0.0.1:{self.port}/token"
        self.tls_bundle = directory / "token-tls.pem"
        tls_key = directory / "token-tls.key"
        tls_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(now - 3600, datetime.UTC))
            .not_valid_after(datetime.datetime.fromtimestamp(now + 86400, datetime.UTC))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.tls_bundle.write_bytes(tls_cert.public_bytes(serialization.Encoding.PEM))
        tls_key.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(self.tls_bundle, tls_key)
        self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def sign(self, claims: dict[str, object]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(request.path).query)
        user = None
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if (name, password) != (USER, PASSWORD):
                request.send_response(401)
                request.end_headers()
                return
            user = name
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            self.requests.append((user, scope))
            allowed = ["pull", "push"] if user else (["pull"] if self.anonymous_pull else [])
            granted = [a for a in actions.split(",") if a in allowed]
            access.append({"type": kind, "name": repo, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": query.get("service", [""])[0],
            "exp": now + 600,
            "nbf": now - 60,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        body = json.dumps({"token": self.sign(claims), "expires_in": 600}).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


@dataclass
class Registry:
    """A running docker-registry: its address, access log, and how to push to it."""

    host: str
    log: Path
    process: proc.Process
    creds: str | None = None
    token: TokenServer | None = None
    extra: list[str] = field(default_factory=list)

    def push(
        self, source: str, repo: str, *, all_platforms: bool = False, options: tuple[str, ...] = ()
    ) -> str:
        """skopeo copy `source` (a transport:reference) to this registry; returns the pushed reference."""
        ref = f"{self.host}/{repo}"
        argv = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", *options]
        if self.creds:
            argv.append(f"--dest-creds={self.creds}")
        if all_platforms:
            argv.append("--all")
        proc.run([*argv, source, f"docker://{ref}"], capture=True)
        return ref

    def blob_gets(self) -> list[str]:
        """The blob digests GET so far, in order (from the registry's access log)."""
        gets = []
        for line in self.log.read_text(errors="replace").splitlines():
            if '"GET /v2/' in line and "/blobs/sha256:" in line:
                uri = line.split('"GET ', 1)[1].split(" ", 1)[0]
                gets.append(uri.rsplit("/", 1)[-1])
        return gets


@contextlib.contextmanager
def run_registry(directory: Path, *, auth: str) -> Iterator[Registry]:
    """docker-registry on a free port of 127.0.0.1; `auth` is "none", "htpasswd" or "token"."""
    directory.mkdir(parents=True)
    port = free_port()
    config = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  accesslog:",
        "    disabled: false",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {directory / 'data'}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    token = None
    creds = None
    if auth == "htpasswd":
        proc.run(["htpasswd", "-Bbc", directory / "htpasswd", USER, PASSWORD], capture=True)
        config += ["auth:", "  htpasswd:", "    realm: test", f"    path: {directory / 'htpasswd'}"]
        creds = f"{USER}:{PASSWORD}"
    elif auth == "token":
        token = TokenServer(directory, anonymous_pull=False)
        config += [
            "auth:",
            "  token:",
            f"    realm: {token.realm}",
            f"    service: {SERVICE}",
            f"    issuer: {ISSUER}",
            f"    rootcertbundle: {token.bundle}",
        ]
        creds = f"{USER}:{PASSWORD}"
    (directory / "config.yml").write_text("\n".join(config) + "\n")
    log = directory / "registry.log"
    process = proc.spawn(
        ["sh", "-c", 'exec docker-registry serve "$0" >"$1" 2>&1', directory / "config.yml", log]
    )
    try:
        wait_port(port)
        yield Registry(host=f"127.0.0.1:{port}", log=log, process=process, creds=creds, token=token)
    finally:
        process.kill()
        process.wait()
        if token is not None:
            token.close()


@dataclass
class BuiltImages:
    """OCI layouts of the test images: `layers` (5 layers, deletions, opaque dir), `multi` (an index of
    amd64 and arm64 images), `other` (shares the first two layers of `layers`)."""

    layout: Path

    def source(self, tag: str) -> str:
        return f"oci:{self.layout}:{tag}"


BUSYBOX_APPLETS = ("sh", "ls", "cat", "rm", "mkdir", "echo", "id", "test", "stat")


def build_test_images(directory: Path) -> BuiltImages:
    """Build the test images with buildah (vfs storage of their own) into one OCI layout."""
    storage = directory / "storage"
    base: list[str | Path] = [
        "--root",
        storage / "root",
        "--runroot",
        storage / "run",
        "--storage-driver",
        "vfs",
    ]

    def buildah(*args: str | Path, check: bool = True) -> None:
        proc.run(["buildah", *base, *args], capture=True, check=check)

    ctx = directory / "ctx"
    (ctx / "rootfs" / "bin").mkdir(parents=True)
    (ctx / "rootfs" / "usr" / "bin").mkdir(parents=True)
    (ctx / "rootfs" / "etc").mkdir()
    proc.run(["cp", "/bin/busybox", ctx / "rootfs" / "bin" / "busybox"])
    for applet in BUSYBOX_APPLETS:
        (ctx / "rootfs" / "bin" / applet).symlink_to("busybox")
    (ctx / "hello").write_text("hello from a layer\n")
    (ctx / "gone").write_text("deleted in a later layer\n")
    (ctx / "Containerfile").write_text(
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "COPY hello gone /etc/\n"
        'RUN ["/bin/rm", "/etc/gone"]\n'
        'RUN ["/bin/sh", "-c", "mkdir -p /opt/d && echo a > /opt/d/a && echo b > /opt/d/b"]\n'
        'RUN ["/bin/sh", "-c", "rm -rf /opt/d && mkdir /opt/d && echo c > /opt/d/c"]\n'
    )
    (ctx / "Containerfile.other").write_text(
        "FROM scratch\nCOPY rootfs/ /\nCOPY hello gone /etc/\nCOPY hello /other\n"
    )
    (ctx / "Containerfile.arm").write_text("FROM scratch\nCOPY rootfs/ /\nCOPY gone /arm64-only\n")
    layout = directory / "layout"
    try:
        bud = ("bud", "--quiet", "--layers", "--isolation", "chroot")
        buildah(*bud, "-t", "layers", ctx)
        buildah(*bud, "-f", ctx / "Containerfile.other", "-t", "other", ctx)
        buildah(*bud, "--arch", "arm64", "-f", ctx / "Containerfile.arm", "-t", "arm", ctx)
        for tag in ("layers", "other"):
            buildah("push", "--quiet", tag, f"oci:{layout}:{tag}")
        buildah("manifest", "create", "multi")
        buildah("manifest", "add", "multi", "localhost/layers")
        buildah("manifest", "add", "multi", "localhost/arm")
        buildah("manifest", "push", "--quiet", "--all", "multi", f"oci:{layout}:multi")
    finally:
        buildah("rmi", "--all", "--force", check=False)
        proc.run(["rm", "-rf", "--one-file-system", storage], check=False)
    return BuiltImages(layout=layout)


def podman(storage: Path, *args: str | Path, run_flags: bool = False) -> proc.Completed:
    """podman with a store of its own under `storage`, and the flags this kind of host needs (see
    bench/README.md, "Podman flags"): runc for hybrid cgroups, cgroupfs without systemd, and limits no
    higher than this process's own (the runtime may lack CAP_SYS_RESOURCE)."""
    import resource

    flags: list[str | Path] = ["--root", storage / "root", "--runroot", storage / "run"]
    flags += ["--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
    flags += ["--events-backend", "file"]
    argv: list[str | Path] = ["podman", *flags, *args]
    if run_flags:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        nproc = 32768 if hard == resource.RLIM_INFINITY else min(hard, 32768)
        extra = ["--network=none", f"--ulimit=nofile={nofile}:{nofile}", f"--ulimit=nproc={nproc}:{nproc}"]
        argv = ["podman", *flags, args[0], *extra, *args[1:]]
    return proc.run(argv, capture=True)


def remove_podman_storage(storage: Path) -> None:
    proc.run(["podman", "--root", storage / "root", "--runroot", storage / "run", "--storage-driver", "vfs",
              "rmi", "--all", "--force"], check=False, capture=True)  # fmt: skip
    proc.run(["rm", "-rf", "--one-file-system", storage], check=False)


class LayoutRegistry:
    """A minimal read-only registry serving one OCI layout over plain HTTP, for faults a real registry
    does not make: it can stall a blob after `stall_after` bytes, and records the Range headers asked."""

    def __init__(self, layout: Path) -> None:
        self.layout = layout
        self.stall_after: int | None = None
        self.ranges: list[str | None] = []
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.port = free_port()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        path = request.path
        if path == "/v2/":
            return self.send(request, b"{}", "application/json")
        index = json.loads((self.layout / "index.json").read_text())
        if "/manifests/" in path:
            tag = path.rsplit("/", 1)[-1]
            for entry in index["manifests"]:
                if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                    data = (self.layout / "blobs" / "sha256" / entry["digest"][7:]).read_bytes()
                    return self.send(request, data, entry["mediaType"])
        if "/blobs/sha256:" in path:
            blob = self.layout / "blobs" / "sha256" / path.rsplit(":", 1)[-1]
            if blob.is_file():
                self.ranges.append(request.headers.get("Range"))
                return self.send_blob(request, blob.read_bytes())
        request.send_response(404)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def send(self, request: http.server.BaseHTTPRequestHandler, data: bytes, media_type: str) -> None:
        request.send_response(200)
        request.send_header("Content-Type", media_type)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def send_blob(self, request: http.server.BaseHTTPRequestHandler, data: bytes) -> None:
        start = 0
        asked = request.headers.get("Range")
        if asked and asked.startswith("bytes=") and asked.endswith("-"):
            start = int(asked[6:-1])
            request.send_response(206)
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            request.send_response(200)
        request.send_header("Content-Length", str(len(data) - start))
        request.end_headers()
        if self.stall_after is not None and len(data) - start > self.stall_after:
            request.wfile.write(data[start : start + self.stall_after])
            request.wfile.flush()
            self.stalled.set()
            self.release.wait(60)
            return
        request.wfile.write(data[start:])
