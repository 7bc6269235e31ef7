"""Usable CPUs from the affinity mask and the cgroup v1/v2 CPU quota, on laid-out /proc and /sys trees.

Each test writes the files the kernel would show into a temp directory used as the filesystem
root: /proc/self/cgroup, /proc/self/mountinfo and the cgroup files under /sys/fs/cgroup.
"""

from __future__ import annotations

import os
from pathlib import Path

from daemon.cpus import usable_cpus

POD = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope"


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v2_host(root: Path, cgroup: str = POD) -> Path:
    """A cgroup v2 host without a cgroup namespace: the process sees its full cgroup path."""
    write(root, "/proc/self/cgroup", f"0::{cgroup}\n")
    write(
        root,
        "/proc/self/mountinfo",
        "22 1 0:21 / / rw,relatime - overlay overlay rw\n"
        "30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate\n",
    )
    base = root / "sys/fs/cgroup"
    (base / cgroup.lstrip("/")).mkdir(parents=True)
    write(root, "/sys/fs/cgroup/cpu.max", "max 100000\n")  # the root cgroup has no cpu.max; harmless
    return base


def test_a_v2_limit_on_an_ancestor_applies_to_the_container(tmp_path: Path) -> None:
    v2_host(tmp_path)
    pod = POD.rsplit("/", 1)[0]
    write(tmp_path, f"/sys/fs/cgroup{POD}/cpu.max", "max 100000\n")
    write(tmp_path, f"/sys/fs/cgroup{pod}/cpu.max", "200000 100000\n")
    found = usable_cpus(tmp_path, affinity=64)
    assert found.count == 2
    assert "cgroup v2" in found.reason and "200000 100000" in found.reason
    assert f"/sys/fs/cgroup{pod}:" in found.reason


def test_v2_fractional_quota_rounds_up_and_the_tightest_level_wins(tmp_path: Path) -> None:
    v2_host(tmp_path)
    write(tmp_path, f"/sys/fs/cgroup{POD}/cpu.max", "250000 100000\n")  # 2.5 CPUs -> 3
    write(tmp_path, "/sys/fs/cgroup/kubepods.slice/cpu.max", "800000 100000\n")
    assert usable_cpus(tmp_path, affinity=64).count == 3
    write(tmp_path, f"/sys/fs/cgroup{POD}/cpu.max", "50000 100000\n")  # half a CPU -> 1
    assert usable_cpus(tmp_path, affinity=64).count == 1


def test_v2_max_everywhere_means_the_affinity_mask_decides(tmp_path: Path) -> None:
    v2_host(tmp_path)
    write(tmp_path, f"/sys/fs/cgroup{POD}/cpu.max", "max 100000\n")
    found = usable_cpus(tmp_path, affinity=6)
    assert found.count == 6 and "affinity" in found.reason


def test_affinity_below_the_quota_wins(tmp_path: Path) -> None:
    v2_host(tmp_path)
    write(tmp_path, f"/sys/fs/cgroup{POD}/cpu.max", "400000 100000\n")
    found = usable_cpus(tmp_path, affinity=3)
    assert found.count == 3 and "affinity" in found.reason


def test_v2_in_a_cgroup_namespace_reads_the_mount_root(tmp_path: Path) -> None:
    # With a cgroup namespace (the default for containers on cgroup v2) the process's cgroup
    # is "/" and /sys/fs/cgroup is the container's own cgroup.
    write(tmp_path, "/proc/self/cgroup", "0::/\n")
    write(tmp_path, "/proc/self/mountinfo", "30 22 0:26 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n")
    write(tmp_path, "/sys/fs/cgroup/cpu.max", "100000 100000\n")
    found = usable_cpus(tmp_path, affinity=64)
    assert found.count == 1 and "cgroup v2" in found.reason


def test_v1_quota_on_the_container_cgroup(tmp_path: Path) -> None:
    cgroup = "/kubepods/burstable/pod1/abc"
    write(tmp_path, "/proc/self/cgroup", f"4:memory:{cgroup}\n3:cpu,cpuacct:{cgroup}\n0::/\n")
    # Docker and kubelet on v1 bind the container's own cgroup at the controller's mount point.
    write(
        tmp_path,
        "/proc/self/mountinfo",
        "25 22 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
        f"27 25 0:24 {cgroup} /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
        f"28 25 0:25 {cgroup} /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n",
    )
    write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "200000\n")
    write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    found = usable_cpus(tmp_path, affinity=64)
    assert found.count == 2
    assert "cgroup v1" in found.reason and "cpu.cfs_quota_us" in found.reason


def test_v1_without_a_namespace_walks_up_to_a_limited_ancestor(tmp_path: Path) -> None:
    write(tmp_path, "/proc/self/cgroup", "2:cpuacct:/\n1:cpu:/batch/job7\n0::/\n")
    write(tmp_path, "/proc/self/mountinfo", "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n")
    write(tmp_path, "/sys/fs/cgroup/cpu/batch/job7/cpu.cfs_quota_us", "-1\n")
    write(tmp_path, "/sys/fs/cgroup/cpu/batch/job7/cpu.cfs_period_us", "100000\n")
    write(tmp_path, "/sys/fs/cgroup/cpu/batch/cpu.cfs_quota_us", "150000\n")
    write(tmp_path, "/sys/fs/cgroup/cpu/batch/cpu.cfs_period_us", "100000\n")
    write(tmp_path, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n")
    write(tmp_path, "/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    found = usable_cpus(tmp_path, affinity=64)
    assert found.count == 2 and "/sys/fs/cgroup/cpu/batch" in found.reason


def test_v1_unlimited_quota_and_no_mountinfo_fall_back_to_the_usual_mount(tmp_path: Path) -> None:
    write(tmp_path, "/proc/self/cgroup", "3:cpu,cpuacct:/\n")
    write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert usable_cpus(tmp_path, affinity=5).count == 5
    write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "300000\n")
    found = usable_cpus(tmp_path, affinity=5)
    assert found.count == 3 and "cgroup v1" in found.reason


def test_nothing_readable_means_the_affinity_mask_and_at_least_one(tmp_path: Path) -> None:
    found = usable_cpus(tmp_path, affinity=4)
    assert found.count == 4 and "affinity" in found.reason
    # Garbage where the kernel's files should be is ignored, never a crash.
    write(tmp_path, "/proc/self/cgroup", "0::/\n")
    write(tmp_path, "/sys/fs/cgroup/cpu.max", "lots 0\n")
    assert usable_cpus(tmp_path, affinity=4).count == 4
    write(tmp_path, "/sys/fs/cgroup/cpu.max", "0 100000\n")
    assert usable_cpus(tmp_path, affinity=4).count == 1


def test_the_real_system_gives_at_most_the_affinity_mask() -> None:
    found = usable_cpus()
    assert 1 <= found.count <= len(os.sched_getaffinity(0))
    assert found.reason
