"""The base URL that `send` and `query` share: with or without a path, never a crash."""

from __future__ import annotations

import pytest

from daemon.api.cli import ApiClientError, base_url


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("http://127.0.0.1:8787", "http://127.0.0.1:8787"),
        ("http://127.0.0.1:8787/", "http://127.0.0.1:8787"),
        ("http://127.0.0.1:8787/v1/events", "http://127.0.0.1:8787"),
        ("https://audit.example:8443/v1/events/", "https://audit.example:8443"),
        # Behind a reverse proxy under a prefix.
        ("https://gw.example/trailkeeper/v1/events", "https://gw.example/trailkeeper"),
        ("https://gw.example/trailkeeper", "https://gw.example/trailkeeper"),
    ],
)
def test_base_url_with_or_without_the_events_path(given: str, base: str) -> None:
    assert base_url(given) == base


@pytest.mark.parametrize("given", ["127.0.0.1:8787", "ftp://host", "http://", "http://h/v1/events?x=1"])
def test_anything_but_an_http_url_is_refused_with_the_shape_to_give(given: str) -> None:
    with pytest.raises(ApiClientError, match=r"http\(s\)://HOST:PORT"):
        base_url(given)
