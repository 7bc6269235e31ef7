import pytest

from daemon.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [(262144, 262144), ("256KiB", 262144), ("2GiB", 2 * 1024**3), ("16MiB", 16 * 1024**2), ("1kb", 1000)],
)
def test_sizes(text: object, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("text", "value"), [("60s", 60.0), (5, 5.0), ("500ms", 0.5), ("1h30m", 5400.0), ("7d", 604800.0)]
)
def test_durations(text: object, value: float) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("bad", ["lots", "5 parsecs", -1, True, "1h30"])
def test_bad_values_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)
    with pytest.raises(ValueError):
        parse_duration(bad)
