"""Which origin addresses may be fetched: public unicast only, unless private ones are allowed.

Checked on the resolved addresses (so decimal, octal and hex spellings of 127.0.0.1, or DNS names that
resolve to it, are caught), and the fetch then connects to the very address that was checked.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket

from imgproxy.errors import Forbidden, OriginUnreachable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Special-purpose ranges (IANA registries) refused whatever the running Python's `ipaddress` tables say:
# older Pythons mark some of these global.
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "2002::/16",
        "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64, Teredo client), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Loopback, private (RFC 1918/4193), link-local (cloud metadata), multicast, reserved, unspecified,
    shared and documentation ranges are all not public."""
    inner = embedded_ipv4(address)
    if inner is not None and not is_public(inner):
        return False
    if any(address in network for network in _NOT_PUBLIC if network.version == address.version):
        return False
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def host_allowed(host: str, port: int, patterns: list[str]) -> bool:
    """Glob patterns match the host, or `host:port` when the pattern names a port: `img.example.com:8443`,
    `[::1]:8080`. A bare IPv6 literal (`::1`, `2001:db8::*`) is a host pattern."""
    host = host.lower().rstrip(".")
    with_port = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    for pattern in (p.lower() for p in patterns):
        names_port = pattern.startswith("[") or pattern.count(":") == 1
        glob = "[[]" + pattern[1:] if pattern.startswith("[") else pattern  # a literal bracket, not a glob class
        if fnmatch.fnmatchcase(with_port if names_port else host, glob):
            return True
    return False


async def resolve(host: str, port: int, allow_private: bool) -> str:
    """Resolve `host` and return an address to connect to; refuse the host if any address is not public."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise OriginUnreachable("the origin's host name does not resolve") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise OriginUnreachable("the origin's host name does not resolve")
    if not allow_private and not all(is_public(address) for address in addresses):
        raise Forbidden("the origin's address is not allowed (private, loopback, link-local or reserved)")
    return str(addresses[0])
