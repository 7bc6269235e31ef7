"""The config watch against a real directory laid out as the kubelet lays out a ConfigMap volume.

``trailkeeper.yaml`` is a symlink to ``..data/trailkeeper.yaml``; an update writes a new
timestamped directory and swaps ``..data`` with one ``os.replace``, then removes the old
directory. The path the daemon was given never changes, its inode does not either (it is the
key's symlink), and the file behind it is a different one after every update.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from daemon.config import ConfigError, parse_config
from daemon.configwatch import ConfigWatch, fingerprint
from tests.deploytools import kubelet_volume

GOOD = "rules: {builtin: true}\n"
OTHER = "rules: {builtin: true, disable: [cis.4.3-root-usage]}\n"
BROKEN = "rules: {builtin: maybe}\n"


class Reloads:
    """Stands in for App.reload: records each call and loads the file as the daemon does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: list[bool] = []

    async def __call__(self) -> bool:
        try:
            parse_config(await asyncio.to_thread(self.path.read_text))
        except (ConfigError, OSError):
            self.results.append(False)
        else:
            self.results.append(True)
        return self.results[-1]


def watch_of(config: Path, *extra: Path) -> tuple[ConfigWatch, Reloads]:
    reloads = Reloads(config)
    paths = [config, *extra]
    return ConfigWatch(lambda: paths, 0.01, reloads, fingerprint(paths)), reloads


def test_the_helper_lays_the_volume_out_as_the_kubelet_does(tmp_path: Path) -> None:
    volume = tmp_path / "config"
    kubelet_volume(volume, {"trailkeeper.yaml": GOOD})
    first = str((volume / "..data").readlink())
    kubelet_volume(volume, {"trailkeeper.yaml": OTHER})
    second = str((volume / "..data").readlink())
    assert first != second and first.startswith("..20") and second.startswith("..20")
    assert str((volume / "trailkeeper.yaml").readlink()) == "..data/trailkeeper.yaml"
    assert sorted(p.name for p in volume.iterdir()) == sorted(["..data", second, "trailkeeper.yaml"])
    assert (volume / "trailkeeper.yaml").read_text() == OTHER


async def test_a_swap_of_data_is_reloaded_once_and_a_broken_content_is_tried_once(tmp_path: Path) -> None:
    volume = tmp_path / "config"
    kubelet_volume(volume, {"trailkeeper.yaml": GOOD})
    config = volume / "trailkeeper.yaml"
    watch, reloads = watch_of(config)

    assert await watch.poll() is None  # the content in force: nothing to do
    kubelet_volume(volume, {"trailkeeper.yaml": OTHER})
    assert await watch.poll() is True
    assert await watch.poll() is None and reloads.results == [True]

    kubelet_volume(volume, {"trailkeeper.yaml": BROKEN})
    assert await watch.poll() is False
    for _ in range(3):  # the same broken content: not tried (nor logged) again
        assert await watch.poll() is None
    assert reloads.results == [True, False]

    # The same content under a new ..data directory is no change; a fix is.
    kubelet_volume(volume, {"trailkeeper.yaml": BROKEN})
    assert await watch.poll() is None
    kubelet_volume(volume, {"trailkeeper.yaml": GOOD})
    assert await watch.poll() is True
    assert reloads.results == [True, False, True]


async def test_the_running_watch_follows_swaps(tmp_path: Path) -> None:
    volume = tmp_path / "config"
    kubelet_volume(volume, {"trailkeeper.yaml": GOOD})
    watch, reloads = watch_of(volume / "trailkeeper.yaml")
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0.1)
        assert reloads.results == []
        kubelet_volume(volume, {"trailkeeper.yaml": OTHER})
        async with asyncio.timeout(5):
            while not reloads.results:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert reloads.results == [True]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_rule_files_and_directories_it_names_are_watched(tmp_path: Path) -> None:
    config = tmp_path / "trailkeeper.yaml"
    config.write_text(GOOD)
    rules_dir = tmp_path / "rules.d"
    rules_dir.mkdir()
    (rules_dir / "a.yaml").write_text("[]\n")
    watch, reloads = watch_of(config, rules_dir)
    (rules_dir / "notes.txt").write_text("not a rule file")
    assert await watch.poll() is None
    (rules_dir / "b.yml").write_text("[]\n")
    assert await watch.poll() is True
    (rules_dir / "a.yaml").write_text("# edited\n[]\n")
    assert await watch.poll() is True
    assert len(reloads.results) == 2


async def test_a_missing_file_is_one_change_and_its_return_another(tmp_path: Path) -> None:
    config = tmp_path / "trailkeeper.yaml"
    config.write_text(GOOD)
    watch, reloads = watch_of(config)
    config.rename(tmp_path / "aside.yaml")
    assert await watch.poll() is False  # the reload reports the unreadable file; the old config stays
    assert await watch.poll() is None
    (tmp_path / "aside.yaml").rename(config)
    assert await watch.poll() is True
    assert reloads.results == [False, True]


def test_config_watch_is_off_by_default_and_must_be_positive() -> None:
    assert parse_config("").config_watch is None
    assert parse_config("config_watch: 500ms").config_watch == 0.5
    with pytest.raises(ConfigError, match=r"config_watch: must be above 0.*null"):
        parse_config("config_watch: 0s")
