"""Fetching and decoding input images for ``Pipeline.prepare`` (ARCHITECTURE.md §6).

Three kinds of URL: ``data:`` URIs, our own ``/files/`` URLs (read from disk, no HTTP hop), and
``http(s)`` URLs fetched through the SSRF guard. Every failure becomes a 422 naming the field.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from pipelines.common.image_io import DecodeLimits, ImageDecodeError, decode_image
from pipelines.contract import ImageLoader, ItemError
from server.config import Settings
from server.files import FILES_PREFIX, Files

# A data URI this short decodes in well under a millisecond: less work than handing it to a thread.
QUICK_DATA_URI_CHARS = 64 * 1024


def quick_to_prepare(inp: Any) -> bool:
    """Whether a job input (its JSON) names only short data URIs: nothing to fetch, read from disk or decode
    at length, so preparing it on the serve loop costs less than a hop to the prepare threads."""
    if isinstance(inp, str):
        if inp.startswith("data:"):
            return len(inp) <= QUICK_DATA_URI_CHARS
        return not inp.startswith(("http://", "https://"))
    if isinstance(inp, dict):
        return all(quick_to_prepare(v) for v in inp.values())
    if isinstance(inp, list):
        return all(quick_to_prepare(v) for v in inp)
    return True


def decode_data_uri(uri: str) -> bytes:
    """``data:[<mediatype>][;base64],<data>`` -> bytes."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise ValueError("malformed data URI (no comma)")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=False)
        except binascii.Error as exc:
            raise ValueError(f"malformed base64 in data URI: {exc}") from exc
    return unquote_to_bytes(payload)


def _own_files_url(url: str, settings: Settings) -> bool:
    """A ``/files/`` URL on a loopback host or on ``public_url``'s host: one of ours."""
    parts = urlsplit(url)
    if not parts.path.startswith(FILES_PREFIX) or not parts.hostname:
        return False
    own = {urlsplit(settings.public_url).hostname} if settings.public_url else set()
    if parts.hostname in own or parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def make_image_loader(settings: Settings, files: Files) -> ImageLoader:
    limits = DecodeLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)

    def fetch(url: str) -> bytes:
        if url.startswith("data:"):
            return decode_data_uri(url)
        stored = files.resolve_url(url)
        if stored is not None:
            if stored.size > limits.max_bytes:  # check before reading: uploads may be gigabytes
                raise ImageDecodeError(
                    f"image is {stored.size} bytes, more than the limit of {limits.max_bytes}", "file_too_large"
                )
            return stored.read_bytes()
        if _own_files_url(url, settings):  # ours, but not stored: say so (a fetch would say "loopback refused")
            raise ValueError("no such file on this server (it expired or was never uploaded)")
        if url.startswith(("http://", "https://")):
            from server.net.fetch import fetch_bytes, policy_from_settings

            data, _ = asyncio.run(fetch_bytes(url, policy_from_settings(settings), max_bytes=limits.max_bytes))
            return data
        raise ValueError("unsupported URL; use http(s)://, data: or a /files/ URL of this server")

    def load(url: str, loc: list[str | int]) -> Any:
        try:
            data = fetch(url)
            return decode_image(data, limits)
        except ImageDecodeError as exc:
            raise ItemError.invalid_input(loc, str(exc), exc.error_type) from exc
        except ItemError:
            raise
        except Exception as exc:
            status = getattr(exc, "status_code", 422)
            error_type = getattr(exc, "error_type", "file_download_error")
            if status != 422:
                raise ItemError(
                    status, [{"loc": ["body", *loc], "msg": str(exc), "type": error_type}], error_type
                ) from exc
            raise ItemError.invalid_input(loc, f"could not load {url[:100]!r}: {exc}", error_type) from exc

    return load
