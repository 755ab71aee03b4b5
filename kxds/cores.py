"""How many cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a pod's CPU
limit), as Go's automaxprocs does for GOMAXPROCS."""

from __future__ import annotations

import os
from pathlib import Path


def available_cores(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a pod's CPU
    limit) rounded down, at least one. Under a one-CPU limit a second process only splits that CPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit(proc_cgroup, root)
    return cores if limit is None else max(1, min(cores, int(limit)))


def cgroup_cpu_limit(proc_cgroup: Path, root: Path) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup or its ancestors, v2 (`cpu.max`)
    or v1 (`cpu.cfs_quota_us`); None when there is none or it cannot be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "-", "")
        if controllers == "":
            for directory in _ancestors(root, path):
                quota, _, period = _read(directory / "cpu.max").partition(" ")
                if quota not in ("", "max") and period:
                    limits.append(_ratio(quota, period))
        elif "cpu" in controllers.split(","):
            for directory in _ancestors(root / controllers, path):
                quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
                if quota and period and not quota.startswith("-"):
                    limits.append(_ratio(quota, period))
    usable = [limit for limit in limits if limit is not None]
    return min(usable) if usable else None


def _ancestors(base: Path, path: str) -> list[Path]:
    """The cgroup's directory and each parent up to `base` (inside a container, `base` itself is
    the container's cgroup)."""
    parts = [p for p in path.split("/") if p]
    return [base.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]


def _read(file: Path) -> str:
    try:
        return file.read_text().strip()
    except OSError:
        return ""


def _ratio(quota: str, period: str) -> float | None:
    try:
        return int(quota) / int(period) if int(period) > 0 else None
    except ValueError:
        return None
