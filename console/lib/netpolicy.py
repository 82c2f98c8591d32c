"""Where the console may connect on a tenant's behalf: the address policy for provider URLs.

A project admin chooses a provider's base URL and IAM endpoint, so without a policy those URLs reach
whatever the console's own network reaches. Two classes of address:

- never: link-local (169.254.0.0/16, fe80::/10, where every cloud serves its instance metadata and
  credentials), the metadata services outside that range (fd00:ec2::254, 100.100.100.200,
  168.63.129.16), and addresses nothing legitimate listens on (unspecified, multicast, reserved);
- private: loopback, RFC 1918/4193, carrier-grade NAT and the other non-global ranges. Allowed by
  default, because self-hosted upstreams (vLLM, Ollama, a GPU box) live there; refused when
  UPSTREAM_ALLOW_PRIVATE is false, except the networks in UPSTREAM_ALLOWED_NETWORKS and the
  embedded model server (LOCAL_LLM_URL, that host and port only).

The same rules run twice: when a URL is saved (`url_problem`, a field error) and on every new
connection (`console.lib.http`), against the address actually connected to, so a name that
resolves differently later (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from typing import Literal
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Verdict = Literal["never", "private"] | None

# Instance-metadata and host services that are not in the link-local range.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

NEVER_MESSAGE = "link-local and cloud-metadata addresses are never reachable from the console"
PRIVATE_MESSAGE = (
    "loopback and private addresses are refused here (UPSTREAM_ALLOW_PRIVATE=false); "
    "a site admin can allow a network with UPSTREAM_ALLOWED_NETWORKS"
)


def _embedded(ip: IPAddress) -> IPAddress | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), which is where packets really go."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _classify_one(ip: IPAddress) -> Verdict:
    if ip.is_loopback:
        return "private"  # before is_reserved, which for IPv6 covers all of ::/8, ::1 included
    if ip.is_link_local or ip in METADATA_ADDRESSES or ip.is_unspecified or ip.is_multicast:
        return "never"
    if isinstance(ip, ipaddress.IPv4Address) and ip.is_reserved:  # 240.0.0.0/4, broadcast included
        return "never"
    if not ip.is_global or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return "private"
    return None


def classify(ip: IPAddress) -> Verdict:
    """ "never", "private", or None for a global address; an IPv6 address carrying an IPv4 one counts
    as the worse of the two."""
    verdicts = {_classify_one(ip)}
    inner = _embedded(ip)
    if inner is not None:
        verdicts.add(_classify_one(inner))
    if "never" in verdicts:
        return "never"
    return "private" if "private" in verdicts else None


@functools.lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)
    except ValueError as exc:
        raise ImproperlyConfigured(f"UPSTREAM_ALLOWED_NETWORKS holds a value that is not a network: {exc}") from None


@functools.lru_cache(maxsize=4)
def _embedded_server(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _is_embedded_server(ip: IPAddress, port: int) -> bool:
    server = _embedded_server(str(getattr(settings, "LOCAL_LLM_URL", "")))
    if server is None or server[1] != port:
        return False
    host = server[0]
    if host == "localhost":
        return ip.is_loopback
    try:
        return ipaddress.ip_address(host) == ip
    except ValueError:
        return False


def address_problem(ip: IPAddress, port: int) -> str | None:
    """Why the console must not connect to ip:port, or None when it may."""
    verdict = classify(ip)
    if verdict == "never":
        return NEVER_MESSAGE
    if verdict == "private" and not getattr(settings, "UPSTREAM_ALLOW_PRIVATE", True):
        allowed = _networks(tuple(getattr(settings, "UPSTREAM_ALLOWED_NETWORKS", ())))
        if not any(ip in network for network in allowed) and not _is_embedded_server(ip, port):
            return PRIVATE_MESSAGE
    return None


def parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address a name resolves to (blocking: for save-time checks, not the event loop).
    An empty list when it does not resolve here."""
    literal = parse_ip(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    found: list[IPAddress] = []
    for info in infos:
        ip = parse_ip(str(info[4][0]))
        if ip is not None and ip not in found:
            found.append(ip)
    return found


def url_problem(url: str) -> str | None:
    """Why a provider URL is refused, or None. A name that does not resolve from here is accepted:
    every connection is checked again, with the address it actually reaches."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return "Enter an http:// or https:// URL."
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "The port is not a number between 0 and 65535."
    for ip in resolve(parts.hostname, port):
        problem = address_problem(ip, port)
        if problem is not None:
            return f"Refused: {problem}."
    return None
