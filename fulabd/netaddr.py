"""
Client addresses: the TCP peer, or behind trusted proxies the client they name
in `X-Forwarded-For`.
"""

from __future__ import annotations

import ipaddress


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A `--trusted-proxy` value: an address or a network (`10.0.0.0/8`)."""
    return ipaddress.ip_network(text.strip(), strict=False)


def _address(text: str):
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """`X-Forwarded-*` headers count only when the TCP peer is one of these proxies."""

    def __init__(self, networks=()):
        self.networks = list(networks)

    def trusts(self, host: str) -> bool:
        address = _address(host)
        return address is not None and any(address in network for network in self.networks)

    def client_address(self, host: str, forwarded_for: str | None) -> str:
        """The client's address: the TCP peer, or, behind trusted proxies, the last hop they were told of."""
        if not forwarded_for or not self.trusts(host):
            return str(_address(host) or host)
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return str(_address(hop) or hop)
        return str(_address(hops[0]) or hops[0]) if hops else host


def host_of(address) -> str:
    """The host of a peer address; `local` for a Unix socket."""
    return getattr(address, "host", None) or "local"
