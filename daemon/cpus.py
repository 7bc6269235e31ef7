"""How many CPUs this process may actually use: the affinity mask and the cgroup CPU quota.

``os.cpu_count()`` counts the machine: a container limited to 2 CPUs on a 64-core node
would start 64 decode workers that the kernel then throttles to 2 CPUs' worth of time,
each holding its own memory. The usable count is the smallest of:

- the affinity mask (``taskset``, a cpuset cgroup, Kubernetes' static CPU manager);
- the cgroup v2 ``cpu.max`` quota (``quota period``: ceil(quota / period) CPUs; ``max``
  is no limit) of the process's cgroup and of every ancestor up to the mount point,
  since a limit may be set on the pod's cgroup rather than the container's;
- the cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1 is no limit), walked up
  the same way;

and never less than 1. The process's cgroup comes from ``/proc/self/cgroup``; where its
hierarchy is mounted, from ``/proc/self/mountinfo`` (the mount's root says which part of
the tree the container sees), falling back to the usual ``/sys/fs/cgroup`` layout. Every
path is read under ``root`` so that tests can lay out the kernel's files in a directory.
Unreadable or malformed files are ignored: the worst outcome is the affinity count.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_CGROUP_BASE = PurePosixPath("/sys/fs/cgroup")
_OCTAL = re.compile(r"\\([0-7]{3})")
# Where distributions mount the v1 cpu controller when mountinfo cannot tell.
_V1_CPU_MOUNTS = ("cpu,cpuacct", "cpuacct,cpu", "cpu")


@dataclass(frozen=True, slots=True)
class CpuCount:
    """``count`` usable CPUs (at least 1), and ``reason``: which limit set it, for the log."""

    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class _Mount:
    fstype: str
    root: PurePosixPath  # the part of the hierarchy this mount shows
    point: PurePosixPath  # where it is mounted
    options: frozenset[str]  # super options: v1 mounts list their controllers here


def _read(root: Path, path: PurePosixPath) -> str | None:
    try:
        return (root / path.relative_to("/")).read_text()
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def _mounts(root: Path) -> list[_Mount]:
    out = []
    for line in (_read(root, PurePosixPath("/proc/self/mountinfo")) or "").splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 5 or len(fields) < sep + 3:
            continue
        fstype = fields[sep + 1]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        out.append(
            _Mount(
                fstype,
                PurePosixPath(_unescape(fields[3])),
                PurePosixPath(_unescape(fields[4])),
                frozenset(fields[sep + 3].split(",")) if len(fields) > sep + 3 else frozenset(),
            )
        )
    return out


def _own_cgroups(root: Path) -> tuple[PurePosixPath | None, PurePosixPath | None]:
    """This process's cgroup in the v2 hierarchy and in the v1 cpu hierarchy, as listed."""
    v2: PurePosixPath | None = None
    v1: PurePosixPath | None = None
    for line in (_read(root, PurePosixPath("/proc/self/cgroup")) or "").splitlines():
        hierarchy, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep and sep2 and path.startswith("/")):
            continue
        if hierarchy == "0" and controllers == "":
            v2 = PurePosixPath(path)
        elif "cpu" in controllers.split(","):
            v1 = PurePosixPath(path)
    return v2, v1


def _locate(mount_point: PurePosixPath, mount_root: PurePosixPath, cgroup: PurePosixPath) -> PurePosixPath:
    """The directory of ``cgroup`` under a mount that shows ``mount_root`` of the hierarchy.

    A cgroup outside the mount's root (a container seeing only its own subtree, listed with
    its host path) is the mount point itself.
    """
    if cgroup == mount_root or mount_root in cgroup.parents:
        return mount_point / cgroup.relative_to(mount_root)
    return mount_point


def _chain(root: Path, start: PurePosixPath, top: PurePosixPath) -> list[PurePosixPath]:
    """``start`` and each parent up to ``top``, the existing ones only, innermost first."""
    if not (root / start.relative_to("/")).is_dir():
        start = top
    out = [start]
    while out[-1] != top and top in out[-1].parents:
        out.append(out[-1].parent)
    return out


def _v2_limit(root: Path, mounts: list[_Mount], cgroup: PurePosixPath) -> tuple[int, str] | None:
    candidates = [m for m in mounts if m.fstype == "cgroup2"]
    mount = candidates[0] if candidates else _Mount("cgroup2", PurePosixPath("/"), _CGROUP_BASE, frozenset())
    best: tuple[int, str] | None = None
    for directory in _chain(root, _locate(mount.point, mount.root, cgroup), mount.point):
        text = _read(root, directory / "cpu.max")
        if text is None:
            continue
        parts = text.split()
        if len(parts) != 2 or parts[0] == "max":
            continue
        cpus = _cpus(parts[0], parts[1])
        if cpus is not None and (best is None or cpus < best[0]):
            best = (cpus, f"cgroup v2 cpu.max at {directory}: {parts[0]} {parts[1]} ({cpus} CPUs)")
    return best


def _cpus(quota_text: str, period_text: str) -> int | None:
    """Whole CPUs a quota allows (rounded up: 1.5 CPUs of time keep two workers busy), or None
    for an unlimited or unreadable quota."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    if quota < 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _v1_limit(root: Path, mounts: list[_Mount], cgroup: PurePosixPath) -> tuple[int, str] | None:
    candidates = [m for m in mounts if m.fstype == "cgroup" and "cpu" in m.options]
    if candidates:
        mount = candidates[0]
    else:
        points = [_CGROUP_BASE / name for name in _V1_CPU_MOUNTS]
        point = next((p for p in points if (root / p.relative_to("/")).is_dir()), points[0])
        mount = _Mount("cgroup", PurePosixPath("/"), point, frozenset({"cpu"}))
    best: tuple[int, str] | None = None
    for directory in _chain(root, _locate(mount.point, mount.root, cgroup), mount.point):
        quota_text = _read(root, directory / "cpu.cfs_quota_us")
        period_text = _read(root, directory / "cpu.cfs_period_us")
        if quota_text is None or period_text is None:
            continue
        cpus = _cpus(quota_text, period_text)
        if cpus is not None and (best is None or cpus < best[0]):
            best = (
                cpus,
                f"cgroup v1 cpu.cfs_quota_us/cpu.cfs_period_us at {directory}: "
                f"{quota_text.strip()}/{period_text.strip()} ({cpus} CPUs)",
            )
    return best


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_cpus(root: Path = Path("/"), *, affinity: int | None = None) -> CpuCount:
    """The CPUs this process may use (see the module docstring); never raises.

    ``root`` is the filesystem root the kernel's files are read under; ``affinity`` the size
    of the affinity mask (None: this process's, from ``os.sched_getaffinity``).
    """
    mask = affinity if affinity is not None else _affinity()
    machine = os.cpu_count() or mask
    best = (max(1, mask), f"CPU affinity mask: {mask} of {machine} CPUs")
    mounts = _mounts(root)
    v2, v1 = _own_cgroups(root)
    limits = [
        _v2_limit(root, mounts, v2) if v2 is not None else None,
        _v1_limit(root, mounts, v1) if v1 is not None else None,
    ]
    for limit in limits:
        if limit is not None and limit[0] < best[0]:
            best = limit
    return CpuCount(best[0], best[1])
