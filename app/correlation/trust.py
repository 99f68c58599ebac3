"""Whose correlation IDs to keep: ``CORRELATION_TRUST_INBOUND``.

An ID taken from any client lets that client write lines into someone else's trail (and Envoy,
for one, does not keep an external ``x-request-id`` by default for that reason). So the edge of
a system can refuse what clients send, while internal services keep what their callers send:

- ``private`` (the default): peers on private networks and this machine (:data:`PRIVATE_NETWORKS`:
  RFC 1918, loopback, IPv6 unique-local) are trusted, anyone else is treated as ``none``. So the
  services of one system keep each other's IDs, and a service that the internet reaches directly
  starts its own trail, as Envoy does by default for requests from outside its internal ranges.
  A service behind a proxy or load balancer on a private address trusts what that proxy passes on:
  set ``none`` on such an edge, or have the proxy drop the header;
- ``all``: keep inbound IDs from anyone (right only behind an edge that drops or replaces the
  header; it was the default before ``private``);
- ``none``: always start a fresh trail; a valid client value is kept as ``client_correlation_id``
  (access line and structured metadata) so support can still search by what the client saw;
- a comma-separated list of CIDR ranges (``10.0.0.0/8,192.168.0.0/16``): peers inside are
  trusted, the rest are treated as ``none``. The peer is the socket's address (``REMOTE_ADDR``),
  never a forwarded-for header, which the client writes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_VERDICTS_MAX = 4096

#: ``private``: RFC 1918, IPv4 and IPv6 loopback, IPv6 unique-local addresses (RFC 4193).
PRIVATE_NETWORKS: tuple[Network, ...] = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128", "fc00::/7")
)


@dataclass(frozen=True)
class TrustPolicy:
    """``networks`` None: trust everyone; empty: no one; else the peers inside them. The library's
    default is :meth:`private`."""

    networks: tuple[Network, ...] | None = None
    #: peer -> verdict, so a request costs a dict lookup (hashing the networks, as a cache keyed
    #: on them would, takes microseconds). Cleared when full: a bound, not an eviction order.
    _verdicts: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def private(cls) -> TrustPolicy:
        """Trust peers on private networks and this machine only (the default)."""
        return cls(PRIVATE_NETWORKS)

    @classmethod
    def parse(cls, text: str) -> TrustPolicy:
        """``private``, ``all``, ``none`` or CIDR ranges separated by commas; ValueError says what
        is wrong. Empty is the default, ``private``."""
        value = text.strip().lower()
        if value in ("", "private"):
            return cls.private()
        if value == "all":
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
        verdict = self._verdicts.get(peer)
        if verdict is None:
            verdict = _inside(self.networks, peer)
            if len(self._verdicts) >= _VERDICTS_MAX:
                self._verdicts.clear()
            self._verdicts[peer] = verdict
        return verdict

    def __str__(self) -> str:
        if self.networks is None:
            return "all"
        if self.networks == PRIVATE_NETWORKS:
            return "private"
        return ",".join(str(n) for n in self.networks) or "none"


def _inside(networks: tuple[Network, ...], peer: str) -> bool:
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.1.2.3 is 10.1.2.3
    return any(address in network for network in networks)
