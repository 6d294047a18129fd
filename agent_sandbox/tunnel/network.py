"""Where the connector may connect: upstream addresses checked against allowed networks.

The check runs when a connection is opened, on the addresses the name resolves to *then*, and
the connection goes to an address that passed: a DNS answer that changes between a check and the
connect (DNS rebinding) cannot slip through. A name is refused when *any* of its addresses is
outside the allowed networks.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence

import anyio
import httpcore

__all__ = ["DEFAULT_NETWORKS", "AddressPolicy", "UpstreamRefused"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_NETWORKS: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
"""Private ranges (RFC 1918, IPv6 unique local): the default allowed networks."""

_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class UpstreamRefused(httpcore.ConnectError):
    """An upstream address lies outside the allowed networks (no connection was made)."""


class AddressPolicy:
    """Which upstream addresses the connector may reach.

    Args:
        networks: allowed networks (CIDR); default :data:`DEFAULT_NETWORKS`.
        allow_loopback: also allow 127.0.0.0/8 and ::1 (off by default: the connector's own
            host is rarely the intended upstream and often holds admin endpoints).

    Link-local (cloud metadata endpoints live there), multicast, unspecified and reserved
    addresses are never allowed, whatever ``networks`` says. Loopback is allowed only by
    ``allow_loopback``.

    Raises:
        ValueError: a network is not valid CIDR.
    """

    def __init__(
        self, networks: Iterable[str] | None = None, *, allow_loopback: bool = False
    ) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False)
            for n in (DEFAULT_NETWORKS if networks is None else networks)
        )
        self.allow_loopback = allow_loopback

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be reached, or ``None`` when it may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in net for net in _LOOPBACK):
            return None if self.allow_loopback else f"{address} is loopback (not allowed)"
        if address.is_link_local or address.is_multicast or address.is_unspecified:
            return f"{address} is link-local, multicast or unspecified (never allowed)"
        if address.is_reserved:
            return f"{address} is reserved (never allowed)"
        if any(address.version == net.version and address in net for net in self.networks):
            return None
        return f"{address} is outside the allowed networks"

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``, all checked.

        Raises:
            UpstreamRefused: an address is not allowed, or the name does not resolve.
        """
        try:
            literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addresses: Sequence[str] = [str(literal)]
        else:
            try:
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise UpstreamRefused(f"cannot resolve upstream {host!r}: {exc}") from exc
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise UpstreamRefused(f"upstream {host!r} has no address")
        for address in addresses:
            reason = self.refusal(ipaddress.ip_address(address.split("%", 1)[0]))
            if reason is not None:
                raise UpstreamRefused(f"upstream {host!r} refused: {reason}")
        return list(addresses)


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses an :class:`AddressPolicy` allows.

    TLS still verifies the upstream's certificate against its *name*: httpcore passes the
    original host as the server name, only the address dialled is pinned.
    """

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve ``host``, check every address, connect to the first that answers."""
        addresses = await self.policy.resolve(host, port)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Unix sockets are not upstreams."""
        raise UpstreamRefused("unix sockets are not allowed upstreams")

    async def sleep(self, seconds: float) -> None:
        """Sleep (httpcore's retry pause)."""
        await anyio.sleep(seconds)
