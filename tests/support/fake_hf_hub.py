"""A loopback stand-in for the Hugging Face Hub's file-resolve API, for tests of real download code.

Serves ``HEAD``/``GET /{repo_id}/resolve/{revision}/{path}`` (and ``/{repo_type}s/{repo_id}/...``) with
the headers huggingface_hub relies on: ``ETag`` (the sha256 of the content, as for LFS files),
``X-Repo-Commit``, ``Content-Length``, ``Accept-Ranges`` and 206 answers to ``Range``. Missing repos
and files answer 404 with the Hub's ``X-Error-Code``. Also plain ``GET /raw/<name>`` for URL sources.
Fault injection: ``drop_after[path] = n`` sends the first ``n`` bytes of the next full GET of that
file, then closes the connection (once); ``fail_after[path] = n`` does the same and then answers
503 to every later GET until cleared. ``require_token`` makes repos answer 401 without that bearer;
``cdn`` (another FakeHub) makes resolve answer 302 with ``X-Linked-Etag``/``X-Linked-Size`` to that
host, as the Hub does for LFS files.

Bounded: binds 127.0.0.1 only, daemon threads, socket timeouts, and at most ``max_requests``.

    with FakeHub() as hub:
        hub.add("org/model", "weights.bin", b"...")
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
"""

from __future__ import annotations

import hashlib
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _QuietServer(ThreadingHTTPServer):
    """A client that drops a cut-off download resets its connection: expected here, not worth a traceback
    (socketserver prints one to stderr, which the tests read for the CLI's own tracebacks)."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    max_requests: int = 500
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (repo_id, path) -> content
    raw: dict[str, bytes] = field(default_factory=dict)  # /raw/<name> -> content
    drop_after: dict[str, int] = field(default_factory=dict)
    fail_after: dict[str, int] = field(default_factory=dict)
    require_token: dict[str, str] = field(default_factory=dict)  # repo_id -> token
    cdn: FakeHub | None = None  # when set, resolve GETs/HEADs redirect there (302, like the Hub's LFS)
    xet: bool = False  # announce files as Xet-stored (X-Xet-Hash headers), as the Hub does for most LFS files
    requests: list[Request] = field(default_factory=list)

    def add(self, repo_id: str, path: str, content: bytes) -> str:
        """Serve ``content`` as ``repo_id/path``; returns its sha256."""
        self.files[(repo_id, path)] = content
        return hashlib.sha256(content).hexdigest()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def gets(self, path_suffix: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(path_suffix)]

    def bytes_served(self, path_suffix: str) -> int:
        return sum(self._served.get(r, 0) for r in self._served if r.endswith(path_suffix))

    # ---------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> FakeHub:
        hub = self
        self._served: dict[str, int] = {}
        self._lock = threading.Lock()

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------------------------ routing

    def _lookup(self, path: str) -> tuple[str, bytes | None, dict[str, str]]:
        """(error code or "", content, extra headers) for a request path."""
        if path.startswith("/raw/"):
            return ("", self.raw.get(path[5:]), {}) if path[5:] in self.raw else ("EntryNotFound", None, {})
        parts = path.lstrip("/").split("/")
        if parts and parts[0] in ("models", "datasets", "spaces"):
            parts = parts[1:]
        if len(parts) < 5 or parts[2] != "resolve":
            return "RepoNotFound", None, {}
        repo_id, path_in_repo = "/".join(parts[:2]), "/".join(parts[4:])
        if not any(r == repo_id for r, _ in self.files):
            return "RepoNotFound", None, {}
        content = self.files.get((repo_id, path_in_repo))
        if content is None:
            return "EntryNotFound", None, {"X-Repo-Commit": COMMIT}
        return "", content, {"X-Repo-Commit": COMMIT}


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds per socket operation: a stuck client cannot hold a thread forever

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        hub = self.hub
        path = unquote(urlsplit(self.path).path)
        auth = self.headers.get("Authorization")
        with hub._lock:
            hub.requests.append(Request(self.command, path, self.headers.get("Range"), auth))
            too_many = len(hub.requests) > hub.max_requests
        if too_many:
            return self._status(429, "TooManyRequests")
        error, content, extra = hub._lookup(path)
        repo = "/".join(path.lstrip("/").split("/")[:2])
        token = hub.require_token.get(repo)
        if token is not None and auth != f"Bearer {token}":
            return self._status(401, "GatedRepo", {"X-Error-Message": "Access to this repo is restricted."})
        if error:
            return self._status(404, error, extra)
        assert content is not None
        if send_body and path in hub.fail_after and self.headers.get("Range"):
            return self._status(503, "ServiceUnavailable")
        etag = hashlib.sha256(content).hexdigest()
        if hub.cdn is not None and not path.startswith("/raw/"):
            hub.cdn.raw[etag] = content
            return self._redirect(f"{hub.cdn.url}/raw/{etag}", etag, len(content), extra)
        start, end = 0, len(content)
        status = 200
        if send_body and (rng := self.headers.get("Range")):
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start = int(first)
            end = int(last) + 1 if last else len(content)
            status = 206
        self.send_response(status)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if hub.xet:
            self.send_header("X-Xet-Hash", etag)
            self.send_header("X-Xet-Refresh-Route", f"/api/models/{repo}/xet-read-token/{COMMIT}")
        for k, v in extra.items():
            self.send_header(k, v)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(content)}")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if not send_body:
            return
        body = content[start:end]
        cut = hub.drop_after.pop(path, None)
        if cut is None and path in hub.fail_after and start == 0:
            cut = hub.fail_after[path]
        if cut is not None:
            body = body[:cut]
        self.wfile.write(body)
        self.wfile.flush()
        with hub._lock:
            hub._served[path] = hub._served.get(path, 0) + len(body)
        if cut is not None:
            self.close_connection = True  # drop mid-file: the client sees a short body

    def _redirect(self, location: str, etag: str, size: int, extra: dict[str, str]) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("X-Linked-Etag", f'"{etag}"')
        self.send_header("X-Linked-Size", str(size))
        self.send_header("ETag", '"not-the-file"')
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _status(self, code: int, error: str, extra: dict[str, str] | None = None) -> None:
        body = f'{{"error": "{error}"}}'.encode()
        self.send_response(code)
        self.send_header("X-Error-Code", error)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
