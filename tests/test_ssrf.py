"""SSRF address policy: decided on resolution alone, no connection is ever made here."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from server.net.ssrf import (
    BlockedUrl,
    InvalidUrl,
    UrlPolicy,
    blocked_reason,
    check_address,
    check_url,
    parse_allow_list,
    policy_from_settings,
    resolve_and_check,
)

DEFAULT = UrlPolicy()


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Host name -> addresses for made-up names; everything else goes to the real resolver."""
    table: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host in table:
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in table[host]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


# The rows the issue requires, plus the other special-purpose ranges and embedded-IPv4 forms.
REFUSED = [
    ("http://127.0.0.1/x.png", "loopback"),
    ("http://127.8.9.10:8080/x.png", "loopback"),
    ("http://[::1]/x.png", "loopback"),
    ("http://10.0.0.1/x.png", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://169.254.10.1/", "link-local"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
    ("http://[fd00::1]/", "unique local"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://100.100.100.200/", "cloud metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata host name"),
    ("http://METADATA.google.internal./", "metadata host name"),
    ("http://localhost:8000/x.png", "loopback"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://0.0.0.0/", "this network"),
    ("http://[::]/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://240.1.2.3/", "reserved"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[::127.0.0.1]/", "IPv4-compatible"),
    ("http://[64:ff9b::a00:1]/", "private"),  # NAT64 of 10.0.0.1
    ("http://[2002:7f00:1::1]/", "loopback"),  # 6to4 of 127.0.0.1
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "Teredo"),
    ("http://2130706433/", "loopback"),  # decimal 127.0.0.1, resolved by getaddrinfo
    ("https://[2001:db8::1]/", "documentation"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_refused_by_default(url: str, reason: str) -> None:
    with pytest.raises(BlockedUrl) as info:
        check_url(url, DEFAULT)
    assert reason.lower() in info.value.reason.lower()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://8.8.8.8/a.png", "8.8.8.8"),
        ("https://[2606:4700:4700::1111]/a.png", "2606:4700:4700::1111"),
        ("http://[::ffff:8.8.8.8]/", "::ffff:8.8.8.8"),
        ("http://[64:ff9b::808:808]/", "64:ff9b::808:808"),
        ("http://[2002:808:808::1]/", "2002:808:808::1"),
    ],
)
def test_public_addresses_pass(url: str, expected: str) -> None:
    checked = check_url(url, DEFAULT)
    assert checked.addresses == (ipaddress.ip_address(expected),)


def test_hostname_resolution_is_checked(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["images.example"] = ["93.184.216.34", "2606:2800:220:1::1"]
    fake_dns["rebind.example"] = ["127.0.0.1"]
    fake_dns["mixed.example"] = ["93.184.216.34", "10.1.2.3"]
    checked = check_url("https://images.example/a.png", DEFAULT)
    assert checked.host == "images.example"
    assert checked.port == 443
    assert [str(a) for a in checked.addresses] == ["93.184.216.34", "2606:2800:220:1::1"]
    with pytest.raises(BlockedUrl, match=r"resolves to 127\.0\.0\.1"):
        check_url("http://rebind.example/", DEFAULT)
    # ANY blocked address refuses the host, even when a public one is listed first.
    with pytest.raises(BlockedUrl, match=r"10\.1\.2\.3"):
        check_url("http://mixed.example/", DEFAULT)


def test_allow_list_lifts_cidrs_and_names(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["minio.internal"] = ["10.20.0.5"]
    fake_dns["a.corp.example"] = ["192.168.3.3"]
    fake_dns["corp.example"] = ["192.168.3.4"]
    policy = UrlPolicy(allow=parse_allow_list("10.0.0.0/8, 127.0.0.2  fd00::/8,localhost,*.corp.example"))
    assert check_url("http://10.0.0.1/", policy).addresses == (ipaddress.ip_address("10.0.0.1"),)
    assert check_url("http://minio.internal/", policy).addresses == (ipaddress.ip_address("10.20.0.5"),)
    assert check_url("http://[fd00::1]/", policy).addresses
    assert check_url("http://127.0.0.2/", policy).addresses
    assert check_url("http://localhost/", policy).addresses
    assert check_url("http://a.corp.example/", policy).addresses
    with pytest.raises(BlockedUrl):
        check_url("http://corp.example/", policy)  # suffix entries match subdomains only
    with pytest.raises(BlockedUrl):
        check_url("http://127.0.0.1/", policy)  # only 127.0.0.2 was allowed
    with pytest.raises(BlockedUrl):
        check_url("http://192.168.0.1/", policy)


def test_allow_list_applies_to_embedded_ipv4() -> None:
    policy = UrlPolicy(allow=("127.0.0.1",))
    assert check_address("::ffff:127.0.0.1", policy) is None
    reason = check_address("::ffff:127.0.0.2", policy)
    assert reason is not None and reason.startswith("loopback (127.0.0.2 embedded in ::ffff:")


def test_metadata_needs_an_exact_allow_entry() -> None:
    assert check_address("169.254.169.254", UrlPolicy(allow=("169.254.0.0/16",))) is not None
    assert check_address("169.254.1.1", UrlPolicy(allow=("169.254.0.0/16",))) is None
    assert check_address("169.254.169.254", UrlPolicy(allow=("169.254.169.254",))) is None
    with pytest.raises(BlockedUrl):
        resolve_and_check("metadata.google.internal", 80, UrlPolicy(allow=("169.254.0.0/16",)))


def test_allowed_host_name_still_cannot_reach_metadata(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["sneaky.corp.example"] = ["169.254.169.254"]
    fake_dns["minio.corp.example"] = ["10.0.0.7"]
    policy = UrlPolicy(allow=("*.corp.example",))
    assert check_url("http://minio.corp.example/", policy).addresses
    with pytest.raises(BlockedUrl, match="metadata"):
        check_url("http://sneaky.corp.example/", policy)
    exact = UrlPolicy(allow=("*.corp.example", "169.254.169.254"))
    assert check_url("http://sneaky.corp.example/", exact).addresses


def test_blocked_reason_ignores_ipv6_scope() -> None:
    assert blocked_reason(ipaddress.ip_address("fe80::1%eth0")) == "link-local"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://8.8.8.8/x", "gopher://8.8.8.8/", "http:///nohost"])
def test_bad_scheme_or_url(url: str) -> None:
    with pytest.raises(InvalidUrl):
        check_url(url, DEFAULT)


def test_scheme_list_is_configurable() -> None:
    with pytest.raises(InvalidUrl, match="'http'"):
        check_url("http://8.8.8.8/", UrlPolicy(schemes=("https",)))


@pytest.mark.parametrize("entry", ["not a host", "10.0.0.0/33", "exa mple.com", "*."])
def test_invalid_allow_entries_are_rejected(entry: str) -> None:
    with pytest.raises(ValueError, match="allow-list entry"):
        UrlPolicy(allow=(entry,))


def test_policy_from_settings() -> None:
    from server.config import Settings

    settings = Settings(url_allow_list="10.0.0.0/8, minio.internal", fetch_timeout_s=7.5, max_image_bytes=1234)
    policy = policy_from_settings(settings)
    assert (policy.allow, policy.total_timeout, policy.max_bytes) == (("10.0.0.0/8", "minio.internal"), 7.5, 1234)
    assert check_address("10.0.0.1", policy) is None
