"""SSRF address policy: which URLs, host names and IP addresses the server may connect to.

Every outbound URL (input images, webhooks) is checked here before a connection is made. The host is
resolved once; if ANY resolved address is blocked the URL is refused, and the caller connects to the
checked address only (see server.net.fetch), so a second DNS answer cannot smuggle in another address.
An allow-list of CIDRs and host names lifts the policy for trusted internal origins.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedUrl(Exception):
    """The URL's host is, or resolves to, an address the policy refuses."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidUrl(ValueError):
    """The URL cannot be fetched at all (malformed, no host, scheme not allowed)."""


# Instance-metadata services: they hand out cloud credentials, so they are the first target of SSRF.
METADATA_ADDRESSES: dict[IPAddress, str] = {
    ipaddress.ip_address("169.254.169.254"): "AWS/GCP/Azure/OpenStack",
    ipaddress.ip_address("169.254.170.2"): "AWS ECS task",
    ipaddress.ip_address("fd00:ec2::254"): "AWS IPv6",
    ipaddress.ip_address("100.100.100.200"): "Alibaba Cloud",
    ipaddress.ip_address("168.63.129.16"): "Azure wire server",
}
METADATA_HOSTNAMES = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"}
)

_V4_BLOCKED: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), reason)
    for net, reason in (
        ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
        ("192.0.2.0/24", "reserved (documentation)"),
        ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("198.18.0.0/15", "reserved (benchmarking)"),
        ("198.51.100.0/24", "reserved (documentation)"),
        ("203.0.113.0/24", "reserved (documentation)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved / broadcast"),
    )
)
_V6_BLOCKED: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), reason)
    for net, reason in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("64:ff9b:1::/48", "private (local-use NAT64)"),
        ("100::/64", "reserved (discard-only)"),
        ("2001::/23", "reserved (IETF protocol assignments, Teredo)"),
        ("2001:db8::/32", "reserved (documentation)"),
        ("3fff::/20", "reserved (documentation)"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
    )
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that an IPv4-mapped, NAT64 (well-known prefix) or 6to4 address reaches."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def blocked_reason(ip: IPAddress) -> str | None:
    """Why the default policy refuses `ip` (no allow-list applied), or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(int(ip))  # drop any %scope
        inner = _embedded_v4(ip)
        if inner is not None:
            reason = blocked_reason(inner)
            return None if reason is None else f"{reason} ({inner} embedded in {ip})"
    if ip in METADATA_ADDRESSES:
        return f"cloud metadata service ({METADATA_ADDRESSES[ip]})"
    table = _V4_BLOCKED if isinstance(ip, ipaddress.IPv4Address) else _V6_BLOCKED
    for net, reason in table:
        if ip in net:
            return reason
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _V6_GLOBAL_UNICAST:
        return "reserved (not IPv6 global unicast)"
    return None


def _normalize_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def parse_allow_list(text: str) -> tuple[str, ...]:
    """Split a comma/whitespace separated allow-list setting into entries."""
    return tuple(entry for entry in text.replace(",", " ").split() if entry)


@dataclass(frozen=True)
class UrlPolicy:
    """Limits for outbound fetches.

    `allow` entries are CIDRs / single addresses ("10.1.0.0/16", "127.0.0.2", "fd00::1") or host names
    ("minio.internal"; ".corp.example" or "*.corp.example" also match every subdomain). An allow-listed
    host name skips the address checks for that name. A cloud-metadata address is lifted only by an
    entry naming exactly that address (a broad "169.254.0.0/16" entry does not expose it).
    """

    allow: tuple[str, ...] = ()
    max_redirects: int = 5
    connect_timeout: float = 5.0
    total_timeout: float = 30.0
    max_bytes: int = 50 * 1024 * 1024
    schemes: tuple[str, ...] = ("http", "https")
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)
    _names: frozenset[str] = field(init=False, repr=False, compare=False)
    _suffixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        networks: list[IPNetwork] = []
        names: set[str] = set()
        suffixes: list[str] = []
        for raw in self.allow:
            entry = _normalize_host(raw)
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith(("*.", ".")):
                suffix = "." + entry.lstrip("*.")
                _validate_name(raw, suffix[1:])
                suffixes.append(suffix)
            else:
                _validate_name(raw, entry)
                names.add(entry)
        object.__setattr__(self, "_networks", tuple(networks))
        object.__setattr__(self, "_names", frozenset(names))
        object.__setattr__(self, "_suffixes", tuple(suffixes))

    def allows_host(self, host: str) -> bool:
        name = _normalize_host(host)
        return name in self._names or any(name.endswith(suffix) for suffix in self._suffixes)

    def allows_address(self, ip: IPAddress, *, exact: bool = False) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address):
            inner = _embedded_v4(ipaddress.IPv6Address(int(ip)))
            if inner is not None:
                candidates.append(inner)
        return any(
            candidate in net and (not exact or net.num_addresses == 1)
            for candidate in candidates
            for net in self._networks
            if net.version == candidate.version
        )


class FetchSettings(Protocol):
    """The fields of server.config.Settings that shape the policy."""

    url_allow_list: str
    fetch_timeout_s: float
    max_image_bytes: int


def policy_from_settings(settings: FetchSettings) -> UrlPolicy:
    return UrlPolicy(
        allow=parse_allow_list(settings.url_allow_list),
        total_timeout=settings.fetch_timeout_s,
        max_bytes=settings.max_image_bytes,
    )


def _validate_name(raw: str, name: str) -> None:
    labels = name.split(".")
    if not name or any(not label or not all(c.isalnum() or c in "-_" for c in label) for label in labels):
        raise ValueError(f"allow-list entry {raw!r} is neither a CIDR/IP address nor a host name")


def check_address(ip: IPAddress | str, policy: UrlPolicy) -> str | None:
    """The reason `ip` is refused under `policy`, or None when a connection to it is allowed."""
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    reason = blocked_reason(address)
    if reason is None:
        return None
    if policy.allows_address(address, exact=reason.startswith("cloud metadata")):
        return None
    return reason


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    return list(dict.fromkeys(addresses))


def resolve_and_check(host: str, port: int, policy: UrlPolicy) -> list[IPAddress]:
    """Resolve `host` (getaddrinfo) and return its addresses; raise BlockedUrl if ANY of them is refused.

    Resolution failures propagate as socket.gaierror (an OSError). Literal IPs are not looked up.
    """
    name = _normalize_host(host)
    literal = _literal_ip(name)
    if literal is not None:
        addresses = [literal]
    else:
        if policy.allows_host(name):
            # An allowed name may reach private addresses, but never a metadata endpoint (those are
            # lifted only by an allow entry naming the exact address).
            addresses = _resolve(name, port)
            for address in addresses:
                reason = blocked_reason(address)
                if (
                    reason is not None
                    and reason.startswith("cloud metadata")
                    and not policy.allows_address(address, exact=True)
                ):
                    raise BlockedUrl(f"{host} resolves to {address}, which is not allowed: {reason}")
            return addresses
        if name in METADATA_HOSTNAMES:
            raise BlockedUrl(f"{host} is a cloud metadata host name")
        addresses = _resolve(name, port)
    for address in addresses:
        reason = check_address(address, policy)
        if reason is not None:
            shown = host if literal is not None else f"{host} resolves to {address}, which"
            raise BlockedUrl(f"{shown} is not allowed: {reason}")
    return addresses


def _resolve(name: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    addresses = _unique(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
    if not addresses:
        raise socket.gaierror(f"{name} has no addresses")
    return addresses


@dataclass(frozen=True)
class CheckedUrl:
    """A URL whose host passed the policy, with the addresses it resolved to (connect to these only)."""

    url: httpx.URL
    host: str  # IDNA-encoded host name or IP literal, without brackets
    port: int
    addresses: tuple[IPAddress, ...]

    @property
    def is_ip_literal(self) -> bool:
        return _literal_ip(self.host) is not None


def parse_url(url: str | httpx.URL, policy: UrlPolicy) -> httpx.URL:
    """Parse with the same parser the fetcher uses and check the scheme; raise InvalidUrl."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidUrl(f"invalid URL: {exc}") from exc
    if parsed.scheme not in policy.schemes:
        allowed = ", ".join(policy.schemes)
        raise InvalidUrl(f"URL scheme {parsed.scheme or '(none)'!r} is not supported (allowed: {allowed})")
    if not parsed.raw_host:
        raise InvalidUrl("URL has no host")
    return parsed


def check_url(url: str | httpx.URL, policy: UrlPolicy) -> CheckedUrl:
    """Parse `url`, check its scheme, resolve its host and check every address (no connection made).

    Raises InvalidUrl, BlockedUrl, or socket.gaierror when the host does not resolve.
    """
    parsed = parse_url(url, policy)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = resolve_and_check(host, port, policy)
    return CheckedUrl(url=parsed, host=_normalize_host(host), port=port, addresses=tuple(addresses))
