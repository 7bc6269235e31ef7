"""Where a request comes from, and the throttle on failed authentication.

Source address: the TCP peer. ``X-Forwarded-For`` is read only when the peer is
one of ``auth.trusted_proxies``: the header is walked from the right (the hop
nearest to us) past every trusted proxy, and the first address that is not one
is the client. With no trusted proxy configured (the default) the header is
ignored, so a client cannot pick the address it is throttled and audited under.

Throttle: a request that fails authentication takes one token from the bucket
of its source address and, when it presented an unknown token, from the bucket
of that token (keyed by its SHA-256, never the token). When either bucket is
empty the request is answered 429 and takes nothing, so the buckets refill at
their sustained rate whatever the attacker sends. A valid token never draws on
these buckets: its own per-token limit is the only one it meets, from any
address, a flooding one included (an address may be a NAT or a proxy shared by
legitimate callers, and holding a valid token is what a legitimate caller is).

IPv6 sources are keyed by their /64 network: one host commonly holds a whole
/64, and keying by full address would give it 2^64 fresh buckets.

Memory: at most ``capacity`` buckets are held, least recently used first out.
A dropped bucket is as good as full, so dropping the oldest (most refilled)
costs an attacker who rotates keys nothing he did not already have: a fresh
source always starts with a full bucket.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from daemon import telemetry

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
UNKNOWN_ADDRESS = "unknown"


def parse_networks(values: Iterable[str]) -> list[IpNetwork]:
    """Parse addresses or CIDR networks; raises ValueError naming the first bad entry by index."""
    out: list[IpNetwork] = []
    for i, value in enumerate(values):
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"[{i}] {value!r}: not an IP address or CIDR network ({exc})") from exc
    return out


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = value.strip()
    if text.startswith("[") and "]" in text:
        # "[2001:db8::1]:443" as some proxies write it.
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        # "192.0.2.1:443"
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class SourceResolver:
    """The client address of a request: the peer, or what trusted proxies forwarded."""

    def __init__(self, trusted_proxies: Sequence[IpNetwork] = ()) -> None:
        self.trusted = tuple(trusted_proxies)

    def _is_trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address.version == net.version and address in net for net in self.trusted)

    def client(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> str:
        """The source address as a string (``unknown`` when the transport has no peer address)."""
        if not peer:
            return UNKNOWN_ADDRESS
        peer_ip = _ip(peer)
        if peer_ip is None:
            return peer
        if not self.trusted or not forwarded_for or not self._is_trusted(peer_ip):
            return str(peer_ip)
        hops = [h for header in forwarded_for for h in header.split(",") if h.strip()]
        client = peer_ip
        for hop in reversed(hops):
            address = _ip(hop)
            if address is None:
                # Garbage in the chain: what lies beyond it cannot be trusted; the last
                # hop we could verify (a trusted proxy) is held responsible.
                break
            client = address
            if not self._is_trusted(address):
                break
        return str(client)


def source_key(address: str) -> str:
    """The bucket (and audit summary) key of a source address: IPv6 by its /64."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return address


class BucketTable:
    """Token buckets by key, at most ``capacity`` of them (least recently used dropped)."""

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, keys: Sequence[str], rate: float, burst: int) -> float:
        """Take one token from every bucket in ``keys``, or none when any is empty.

        Returns 0 when taken, else the seconds until every bucket holds a token again.
        """
        now = self._clock()
        buckets = self._buckets
        levels: list[float] = []
        wait = 0.0
        for key in keys:
            tokens, last = buckets.get(key, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            levels.append(tokens)
            if tokens < 1.0:
                wait = max(wait, (1.0 - tokens) / rate)
        spend = 1.0 if wait == 0.0 else 0.0
        for key, tokens in zip(keys, levels, strict=True):
            buckets[key] = (tokens - spend, now)
            buckets.move_to_end(key)
        excess = len(buckets) - self.capacity
        for _ in range(max(0, excess)):
            buckets.popitem(last=False)
        if excess > 0:
            telemetry.AUTH_FAILURE_BUCKETS_EVICTED.inc(excess)
        telemetry.AUTH_FAILURE_BUCKETS.set(len(buckets))
        return wait


class FailureThrottle:
    """The buckets of failed authentication: per source address and per unknown token."""

    def __init__(
        self,
        rate: float | None,
        burst: int,
        capacity: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.table = BucketTable(capacity, clock)

    def take(self, address: str, token_digest: str | None) -> float:
        """Count one failure; 0 when it is within the limits, else the seconds to wait (answer 429)."""
        if self.rate is None:
            return 0.0
        keys = [f"a:{source_key(address)}"]
        if token_digest is not None:
            keys.append(f"t:{token_digest}")
        return self.table.take(keys, self.rate, self.burst)
