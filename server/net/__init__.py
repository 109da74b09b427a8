"""Outbound network access: the SSRF address policy and the guarded, IP-pinned HTTP fetch."""

from server.net.fetch import FetchError, fetch_bytes, post_bytes
from server.net.ssrf import (
    BlockedUrl,
    UrlPolicy,
    check_address,
    check_url,
    parse_allow_list,
    policy_from_settings,
    resolve_and_check,
)

__all__ = [
    "BlockedUrl",
    "FetchError",
    "UrlPolicy",
    "check_address",
    "check_url",
    "fetch_bytes",
    "parse_allow_list",
    "policy_from_settings",
    "post_bytes",
    "resolve_and_check",
]
