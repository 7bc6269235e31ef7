"""The failed-authentication throttle and where a request comes from (no network)."""

from __future__ import annotations

import pytest

from daemon.api.throttle import BucketTable, FailureThrottle, SourceResolver, parse_networks, source_key


def test_a_failure_takes_from_every_bucket_or_from_none() -> None:
    now = [0.0]
    table = BucketTable(100, clock=lambda: now[0])
    assert table.take(["a", "t1"], rate=1.0, burst=2) == 0
    assert table.take(["a", "t2"], rate=1.0, burst=2) == 0
    # The address is spent: refused, and the fresh token bucket is not drawn on.
    assert table.take(["a", "t3"], rate=1.0, burst=2) == pytest.approx(1.0)
    assert table.take(["b", "t3"], rate=1.0, burst=2) == 0
    assert table.take(["b", "t3"], rate=1.0, burst=2) == 0
    # t3 spent too: its use from yet another address is refused.
    assert table.take(["c", "t3"], rate=1.0, burst=2) > 0
    now[0] = 1.0
    assert table.take(["a", "t4"], rate=1.0, burst=2) == 0


def test_refused_requests_do_not_delay_the_refill() -> None:
    now = [0.0]
    table = BucketTable(10, clock=lambda: now[0])
    assert table.take(["a"], rate=2.0, burst=1) == 0
    for _ in range(1000):
        assert table.take(["a"], rate=2.0, burst=1) > 0
    now[0] = 0.5
    assert table.take(["a"], rate=2.0, burst=1) == 0


def test_bucket_memory_is_bounded_least_recently_used_first() -> None:
    now = [0.0]
    table = BucketTable(50, clock=lambda: now[0])
    table.take(["hot"], rate=0.001, burst=1)
    for i in range(10_000):
        # An attacker rotating keys, while "hot" keeps being used.
        table.take([f"k{i}"], rate=0.001, burst=1)
        if i % 10 == 0:
            assert table.take(["hot"], rate=0.001, burst=1) > 0
        assert len(table) <= 50
    assert table.take(["hot"], rate=0.001, burst=1) > 0  # still remembered: still spent


def test_failure_throttle_keys_addresses_and_unknown_tokens() -> None:
    now = [0.0]
    throttle = FailureThrottle(1.0, 3, 1000, clock=lambda: now[0])
    assert [throttle.take("192.0.2.1", f"d{i}") for i in range(4)][-1] > 0  # rotating tokens
    assert throttle.take("192.0.2.2", None) == 0
    # One bad token from many addresses.
    assert [throttle.take(f"198.51.100.{i}", "same") for i in range(4)][-1] > 0
    # An IPv6 host is one /64.
    assert [throttle.take(f"2001:db8:1:2::{i:x}", None) for i in range(4)][-1] > 0
    assert throttle.take("2001:db8:1:3::1", None) == 0
    assert FailureThrottle(None, 1, 10).take("192.0.2.1", "x") == 0


def test_source_keys() -> None:
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert source_key("unknown") == "unknown"


def test_x_forwarded_for_is_read_only_from_trusted_proxies() -> None:
    none = SourceResolver()
    assert none.client("127.0.0.1", ["203.0.113.5"]) == "127.0.0.1"
    assert none.client(None) == "unknown"
    proxies = SourceResolver(parse_networks(["10.0.0.0/8", "192.0.2.1"]))
    # The rightmost hop that is not a trusted proxy is the client; what it claims is ignored.
    assert proxies.client("10.1.1.1", ["6.6.6.6, 203.0.113.5, 10.2.2.2"]) == "203.0.113.5"
    assert proxies.client("10.1.1.1", ["6.6.6.6", "203.0.113.5", "192.0.2.1"]) == "203.0.113.5"
    assert proxies.client("10.1.1.1", ["[2001:db8::5]:443"]) == "2001:db8::5"
    assert proxies.client("10.1.1.1", ["203.0.113.5:8080"]) == "203.0.113.5"
    # A peer that is not a proxy: its header means nothing.
    assert proxies.client("203.0.113.9", ["198.51.100.1"]) == "203.0.113.9"
    # Garbage in the chain: the nearest hop that could be checked answers for it.
    assert proxies.client("10.1.1.1", ["203.0.113.5, not-an-ip, 10.2.2.2"]) == "10.2.2.2"
    assert proxies.client("10.1.1.1", []) == "10.1.1.1"
    assert proxies.client("::ffff:10.1.1.1", ["203.0.113.5"]) == "203.0.113.5"
    with pytest.raises(ValueError, match=r"\[1\] 'nope'"):
        parse_networks(["10.0.0.0/8", "nope"])
