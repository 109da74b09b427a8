"""Guarded fetch: real traffic goes ONLY to servers this test starts on loopback addresses."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from server.net.fetch import FetchError, fetch_bytes, post_bytes
from server.net.ssrf import UrlPolicy

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host", "")))
        path = self.path
        if path == "/image.png":
            self._send(200, PNG_BYTES, {"Content-Type": "image/png; charset=binary"})
        elif path == "/host":
            self._send(200, self.headers.get("Host", "").encode())
        elif path.startswith("/bytes/"):  # N bytes, no Content-Length: the body ends when the socket closes
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x" * int(path.rsplit("/", 1)[1]))
        elif path == "/declared-huge":
            self._send(200, b"tiny", {"Content-Length": str(10**9)})
        elif path == "/slow":
            self.server.release.wait(10)
            self._send(200, b"late")
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"nope")
        elif path.startswith("/chain/"):  # /chain/N redirects N times, then answers
            left = int(path.rsplit("/", 1)[1])
            if left:
                self._send(302, headers={"Location": f"/chain/{left - 1}"})
            else:
                self._send(200, b"end of chain")
        elif path.startswith("/redirect?to="):
            self._send(302, headers={"Location": path.split("=", 1)[1]})
        else:
            self._send(404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.server.posted.append((self.path, self.rfile.read(length), dict(self.headers)))
        self._send(204)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, 0), _Handler)
        self.seen: list[tuple[str, str]] = []
        self.posted: list[tuple[str, bytes, dict[str, str]]] = []
        self.release = threading.Event()
        self.host = host

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str, scheme: str = "http") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{path}"


@pytest.fixture
def serve() -> Iterator[Callable[..., _Server]]:
    servers: list[_Server] = []

    def start(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> _Server:
        server = _Server(host)
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


class FakeDns:
    """Made-up host names with successive answers (the last one repeats) and a count of lookups."""

    def __init__(self) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.calls: dict[str, int] = {}

    def __setitem__(self, host: str, answers: list[list[str]]) -> None:
        self.answers[host] = answers

    def lookup(self, host: str, port: int) -> list[tuple]:
        answers = self.answers[host]
        answer = answers[min(self.calls.get(host, 0), len(answers) - 1)]
        self.calls[host] = self.calls.get(host, 0) + 1
        if not answer:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answer]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    dns = FakeDns()
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        return dns.lookup(host, port) if host in dns.answers else real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return dns


def _fetch(url: str, policy: UrlPolicy, **kwargs: object) -> tuple[bytes, str | None]:
    return asyncio.run(fetch_bytes(url, policy, **kwargs))  # type: ignore[arg-type]


def _fetch_error(url: str, policy: UrlPolicy, **kwargs: object) -> FetchError:
    with pytest.raises(FetchError) as info:
        _fetch(url, policy, **kwargs)
    return info.value


ALLOW_LOOPBACK = UrlPolicy(allow=("127.0.0.1", "::1"))


def test_allow_listed_fetch_returns_body_and_media_type(serve) -> None:
    server = serve()
    body, media_type = _fetch(server.url("/image.png"), ALLOW_LOOPBACK)
    assert body == PNG_BYTES
    assert media_type == "image/png"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_loopback_servers_are_refused_without_a_request(serve, host: str) -> None:
    server = serve(host)
    error = _fetch_error(server.url("/image.png"), UrlPolicy())
    assert (error.status_code, error.error_type) == (422, "url_not_allowed")
    assert "loopback" in error.message
    assert server.seen == []
    assert _fetch(server.url("/image.png"), ALLOW_LOOPBACK)[0] == PNG_BYTES  # the allow-list lifts it


def test_mapped_and_named_loopback_are_refused(serve) -> None:
    server = serve()
    for url in (
        f"http://[::ffff:127.0.0.1]:{server.port}/image.png",
        f"http://localhost:{server.port}/image.png",
    ):
        error = _fetch_error(url, UrlPolicy())
        assert error.error_type == "url_not_allowed", url
    assert server.seen == []


def test_redirect_to_loopback_is_refused(serve) -> None:
    # The first hop (127.0.0.2) is allow-listed; its redirect target (127.0.0.1) is not.
    first, target = serve("127.0.0.2"), serve("127.0.0.1")
    for location in (target.url("/image.png"), f"http://localhost:{target.port}/image.png"):
        url = first.url(f"/redirect?to={location}")
        error = _fetch_error(url, UrlPolicy(allow=("127.0.0.2/32",)))
        assert error.error_type == "url_not_allowed"
        assert "loopback" in error.message
    assert len(first.seen) == 2
    assert target.seen == []
    body, _ = _fetch(first.url(f"/redirect?to={target.url('/image.png')}"), UrlPolicy(allow=("127.0.0.0/30",)))
    assert body == PNG_BYTES
    assert target.seen == [("/image.png", f"127.0.0.1:{target.port}")]


def test_redirect_limit(serve) -> None:
    server = serve()
    policy = UrlPolicy(allow=("127.0.0.1",), max_redirects=3)
    assert _fetch(server.url("/chain/3"), policy)[0] == b"end of chain"
    error = _fetch_error(server.url("/chain/4"), policy)
    assert error.error_type == "file_download_error"
    assert "more than 3 redirects" in error.message
    assert [path for path, _ in server.seen[-4:]] == ["/chain/4", "/chain/3", "/chain/2", "/chain/1"]


def test_redirect_to_other_scheme_is_refused(serve) -> None:
    server = serve()
    error = _fetch_error(server.url("/redirect?to=file:///etc/passwd"), ALLOW_LOOPBACK)
    assert error.error_type == "invalid_url"


def test_byte_cap_streamed_and_declared(serve) -> None:
    server = serve()
    assert _fetch(server.url("/bytes/1000"), ALLOW_LOOPBACK, max_bytes=1000)[0] == b"x" * 1000
    error = _fetch_error(server.url("/bytes/1001"), ALLOW_LOOPBACK, max_bytes=1000)
    assert error.error_type == "file_too_large"
    error = _fetch_error(server.url("/declared-huge"), UrlPolicy(allow=("127.0.0.1",), max_bytes=10_000))
    assert error.error_type == "file_too_large"
    assert str(10**9) in error.message


def test_total_timeout_is_bounded(serve) -> None:
    server = serve()
    started = time.monotonic()
    error = _fetch_error(server.url("/slow"), UrlPolicy(allow=("127.0.0.1",), total_timeout=0.5))
    assert error.error_type == "file_download_timeout"
    assert time.monotonic() - started < 3


def test_origin_errors_and_refused_connections(serve) -> None:
    server = serve()
    error = _fetch_error(server.url("/status/404"), ALLOW_LOOPBACK)
    assert error.error_type == "file_download_error"
    assert "HTTP 404" in error.message
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    error = _fetch_error(f"http://127.0.0.1:{port}/", ALLOW_LOOPBACK)
    assert error.error_type == "file_download_error"


def test_bad_scheme_and_unresolvable_host(fake_dns) -> None:
    assert _fetch_error("file:///etc/passwd", UrlPolicy()).error_type == "invalid_url"
    assert _fetch_error("ftp://127.0.0.1/x", ALLOW_LOOPBACK).error_type == "invalid_url"
    fake_dns["does-not-exist.test"] = [[]]
    error = _fetch_error("http://does-not-exist.test/x.png", UrlPolicy())
    assert error.error_type == "file_download_error"


def test_connection_is_pinned_to_the_checked_address(serve, fake_dns) -> None:
    # First answer passes the policy; any later lookup would point at a different (closed) address.
    server = serve("127.0.0.1")
    fake_dns["images.test"] = [["127.0.0.1"], ["127.0.0.3"]]
    policy = UrlPolicy(allow=("127.0.0.1",))
    body, _ = _fetch(f"http://images.test:{server.port}/host", policy)
    assert body == f"images.test:{server.port}".encode()  # the Host header keeps the original name
    assert fake_dns.calls["images.test"] == 1
    # A host whose later answer is blocked: the checked (first) answer is used, the connection works.
    fake_dns["rebind.test"] = [["127.0.0.1"], ["10.0.0.1"]]
    assert _fetch(f"http://rebind.test:{server.port}/image.png", policy)[0] == PNG_BYTES
    assert fake_dns.calls["rebind.test"] == 1


def test_next_checked_address_is_tried_when_refused(serve, fake_dns) -> None:
    server = serve("127.0.0.1")
    fake_dns["multi.test"] = [["127.0.0.3", "127.0.0.1"]]  # nothing listens on 127.0.0.3
    body, _ = _fetch(f"http://multi.test:{server.port}/image.png", UrlPolicy(allow=("127.0.0.0/8",)))
    assert body == PNG_BYTES
    fake_dns["half.test"] = [["127.0.0.1", "10.0.0.1"]]  # a fallback is never an unchecked address
    error = _fetch_error(f"http://half.test:{server.port}/image.png", UrlPolicy(allow=("127.0.0.0/8",)))
    assert error.error_type == "url_not_allowed"


def _tls_material(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway CA and a server certificate for `name` only (no IP SAN). Returns (server, client)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server_ctx, client_ctx


def test_tls_uses_original_name_for_sni_and_verification(serve, fake_dns, tmp_path: Path) -> None:
    server_ctx, client_ctx = _tls_material(tmp_path, "images.test")
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    server = serve("127.0.0.1", tls=server_ctx)
    fake_dns["images.test"] = [["127.0.0.1"], ["127.0.0.3"]]
    fake_dns["other.test"] = [["127.0.0.1"]]
    policy = UrlPolicy(allow=("127.0.0.1",))
    # The certificate names images.test only, so this succeeds only if SNI + hostname check use the name.
    body, _ = _fetch(f"https://images.test:{server.port}/host", policy, verify=client_ctx)
    assert body == f"images.test:{server.port}".encode()
    assert sni == ["images.test"]
    assert fake_dns.calls["images.test"] == 1
    # Verification is really on: the same server under another name fails the certificate check.
    error = _fetch_error(f"https://other.test:{server.port}/host", policy, verify=client_ctx)
    assert error.error_type == "file_download_error"
    assert "certificate" in error.message.lower()


def test_post_bytes_to_allowed_and_refused_urls(serve) -> None:
    server = serve()
    status = asyncio.run(
        post_bytes(server.url("/hook"), ALLOW_LOOPBACK, b'{"ok":1}', headers={"Content-Type": "application/json"})
    )
    assert status == 204
    path, body, received = server.posted[0]
    assert (path, body, received["Content-Type"]) == ("/hook", b'{"ok":1}', "application/json")
    with pytest.raises(FetchError) as info:
        asyncio.run(post_bytes(server.url("/hook"), UrlPolicy(), b"{}"))
    assert info.value.error_type == "url_not_allowed"
    assert len(server.posted) == 1


def test_fetch_error_detail_item() -> None:
    error = FetchError(422, "too big", "file_too_large")
    assert error.to_detail(["body", "image_url"], "http://x") == {
        "loc": ["body", "image_url"],
        "msg": "too big",
        "type": "file_too_large",
        "input": "http://x",
    }
