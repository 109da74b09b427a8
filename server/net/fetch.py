"""Guarded outbound HTTP: SSRF-checked, pinned to the checked IP, size- and time-limited.

Each hop resolves and checks the host (server.net.ssrf), then connects to the checked address itself:
the request URL carries the IP while the Host header, TLS SNI and certificate verification use the
original host name, so no second DNS lookup happens between check and connect (DNS rebinding).
Redirects are followed by hand so that every hop is checked again. Proxy environment variables are
ignored (a proxy would connect on our behalf to whatever it resolves); SSL_CERT_FILE/DIR are honoured.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping

import anyio
import anyio.to_thread
import httpx

from server.net.ssrf import BlockedUrl, CheckedUrl, InvalidUrl, UrlPolicy, check_url, policy_from_settings

__all__ = ["FetchError", "fetch_bytes", "policy_from_settings", "post_bytes"]

USER_AGENT = "fal-onprem/0.1"
# Status code for input-URL failures: fal reports bad input files as 422 validation errors.
INPUT_ERROR_STATUS = 422


class FetchError(Exception):
    """A download failed; `error_type` names the cause for the API's error body.

    error_type: "url_not_allowed" (SSRF policy), "invalid_url" (malformed / scheme not allowed),
    "file_too_large", "file_download_timeout", "file_download_error" (origin HTTP error, connection or
    TLS failure, unresolvable host, too many redirects).
    """

    def __init__(self, status_code: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.error_type = error_type

    def to_detail(self, loc: list[str | int], input_value: object = None) -> dict[str, object]:
        """One fal-style validation-error item, e.g. loc=["body", "image_url"]."""
        detail: dict[str, object] = {"loc": loc, "msg": self.message, "type": self.error_type}
        if input_value is not None:
            detail["input"] = input_value
        return detail


def _error(message: str, error_type: str) -> FetchError:
    return FetchError(INPUT_ERROR_STATUS, message, error_type)


def _short(url: object, limit: int = 200) -> str:
    """URLs in messages are cut: they end up in job results and logs (and may carry signed tokens)."""
    text = str(url)
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def _check(url: str | httpx.URL, policy: UrlPolicy) -> CheckedUrl:
    """check_url in a worker thread (getaddrinfo blocks), with errors mapped to FetchError."""
    try:
        return await anyio.to_thread.run_sync(functools.partial(check_url, url, policy), abandon_on_cancel=True)
    except BlockedUrl as exc:
        raise _error(exc.reason, "url_not_allowed") from exc
    except InvalidUrl as exc:
        raise _error(str(exc), "invalid_url") from exc
    except (OSError, UnicodeError) as exc:
        raise _error(f"could not resolve host of {_short(url)}: {exc}", "file_download_error") from exc


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context(trust_env=True)  # certifi, or SSL_CERT_FILE / SSL_CERT_DIR when set


def _client(policy: UrlPolicy, verify: ssl.SSLContext | None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        trust_env=False,
        verify=verify if verify is not None else _default_ssl_context(),
        follow_redirects=False,
        timeout=httpx.Timeout(policy.total_timeout, connect=policy.connect_timeout),
        headers={"User-Agent": USER_AGENT},
    )


async def _send_pinned(
    client: httpx.AsyncClient,
    method: str,
    target: CheckedUrl,
    headers: Mapping[str, str] | None,
    content: bytes | None = None,
) -> httpx.Response:
    """Send to the checked addresses in resolver order (next one only when a connection is refused)."""
    request_headers = httpx.Headers(headers)
    request_headers["Host"] = target.url.netloc.decode("ascii")
    extensions = {}
    if target.url.scheme == "https" and not target.is_ip_literal:
        extensions["sni_hostname"] = target.host  # SNI + certificate hostname check use the real name
    for index, address in enumerate(target.addresses):
        request = client.build_request(
            method,
            target.url.copy_with(host=str(address)),
            headers=request_headers,
            content=content,
            extensions=extensions,
        )
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError:
            if index == len(target.addresses) - 1:
                raise
    raise AssertionError("CheckedUrl has no addresses")


async def _read_capped(response: httpx.Response, url: str, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _error(f"{_short(url)} is {int(declared)} bytes, more than the limit of {max_bytes}", "file_too_large")
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > max_bytes:
            raise _error(f"{_short(url)} is larger than the limit of {max_bytes} bytes", "file_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(response: httpx.Response) -> str | None:
    media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media_type or None


async def fetch_bytes(
    url: str,
    policy: UrlPolicy,
    *,
    max_bytes: int | None = None,
    headers: Mapping[str, str] | None = None,
    verify: ssl.SSLContext | None = None,
) -> tuple[bytes, str | None]:
    """GET `url` under `policy`; return (body, media type without parameters). Raises FetchError.

    `max_bytes` defaults to policy.max_bytes and caps the decoded body; policy.total_timeout bounds
    the whole download including DNS and redirects. `verify` overrides the trust store (tests).
    """
    limit = policy.max_bytes if max_bytes is None else max_bytes
    try:
        with anyio.fail_after(policy.total_timeout):
            return await _fetch(url, policy, limit, headers, verify)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise _error(f"downloading {_short(url)} timed out", "file_download_timeout") from exc
    except httpx.HTTPError as exc:
        raise _error(f"could not download {_short(url)}: {_describe(exc)}", "file_download_error") from exc


async def _fetch(
    url: str,
    policy: UrlPolicy,
    max_bytes: int,
    headers: Mapping[str, str] | None,
    verify: ssl.SSLContext | None,
) -> tuple[bytes, str | None]:
    current: str | httpx.URL = url
    async with _client(policy, verify) as client:
        for _hop in range(policy.max_redirects + 1):
            target = await _check(current, policy)
            response = await _send_pinned(client, "GET", target, headers)
            try:
                location = response.headers.get("location")
                if response.is_redirect and location:
                    current = target.url.join(location)
                    continue
                if response.status_code >= 400:
                    raise _error(
                        f"downloading {_short(url)} failed: HTTP {response.status_code} from {target.url.host}",
                        "file_download_error",
                    )
                return await _read_capped(response, url, max_bytes), _media_type(response)
            finally:
                await response.aclose()
    message = f"downloading {_short(url)} failed: more than {policy.max_redirects} redirects"
    raise _error(message, "file_download_error")


async def post_bytes(
    url: str,
    policy: UrlPolicy,
    content: bytes,
    *,
    headers: Mapping[str, str] | None = None,
    verify: ssl.SSLContext | None = None,
) -> int:
    """POST `content` to `url` (webhooks) under `policy`; return the HTTP status. Redirects are not followed.

    Raises FetchError for refused URLs, timeouts and connection failures; HTTP error statuses are returned.
    """
    try:
        with anyio.fail_after(policy.total_timeout):
            target = await _check(url, policy)
            async with _client(policy, verify) as client:
                response = await _send_pinned(client, "POST", target, headers, content)
                await response.aclose()  # the receiver's body is not needed (and not size-limited)
                return response.status_code
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise _error(f"POST to {_short(url)} timed out", "file_download_timeout") from exc
    except httpx.HTTPError as exc:
        raise _error(f"POST to {_short(url)} failed: {_describe(exc)}", "file_download_error") from exc
