"""Whose correlation IDs to keep: ``CORRELATION_TRUST_INBOUND``.

An ID taken from any client lets that client write lines into someone else's trail (and Envoy,
for one, does not keep an external ``x-request-id`` by default for that reason). So the edge of
a system can refuse what clients send, while internal services keep what their callers send:

- ``all``: keep inbound IDs from anyone (the default, right for services behind a trusted edge);
- ``none``: always start a fresh trail; a valid client value is kept as ``client_correlation_id``
  (access line and structured metadata) so support can still search by what the client saw;
- a comma-separated list of CIDR ranges (``10.0.0.0/8,192.168.0.0/16``): peers inside are
  trusted, the rest are treated as ``none``. The peer is the socket's address (``REMOTE_ADDR``),
  never a forwarded-for header, which the client writes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrustPolicy:
    """``networks`` None: trust everyone; empty: no one; else the peers inside them."""

    networks: tuple[Network, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> TrustPolicy:
        """``all``, ``none`` or CIDR ranges separated by commas; ValueError says what is wrong."""
        value = text.strip().lower()
        if value in ("", "all"):
            return cls(None)
        if value == "none":
            return cls(())
        networks = []
        for part in (p.strip() for p in value.split(",")):
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"{part!r} is not a CIDR range (e.g. 10.0.0.0/8)") from None
        return cls(tuple(networks))

    def trusts(self, peer: str | None) -> bool:
        """Whether IDs sent by ``peer`` (an IP address, or None when unknown) are kept."""
        if self.networks is None:
            return True
        if not self.networks or not peer:
            return False
        return _inside(self.networks, peer)

    def __str__(self) -> str:
        if self.networks is None:
            return "all"
        return ",".join(str(n) for n in self.networks) or "none"


@lru_cache(maxsize=1024)
def _inside(networks: tuple[Network, ...], peer: str) -> bool:
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.1.2.3 is 10.1.2.3
    return any(address in network for network in networks)
