"""The host cores this process may use: its CPU affinity, capped by its cgroup's CPU quota.

`os.cpu_count()` is the machine's, and `os.sched_getaffinity` the cores the scheduler may place
the process on; neither sees a container's CPU quota (cgroup v2 ``cpu.max``, v1
``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``), under which more processes than the quota
allows only take turns. The defaults that size process pools (extraction's rendering workers,
features' fold workers) read this.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cores(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """At least 1: the cores of this process's affinity, fewer if its CPU quota allows fewer."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def cpu_quota(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """Cores' worth of CPU time the process's cgroup may use (None: no quota, or none readable).
    The cgroup is looked for where /proc/self/cgroup says, then at the root (a container sees its
    own cgroup mounted there). Under v2 a cgroup's ancestors cap it too: the smallest quota from
    it up to the root counts."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    root = Path(cgroup_root)
    v2, v1 = [], []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if controllers == "":
            folder = root / path
            v2 += [folder, *[a for a in folder.parents if a.is_relative_to(root)]]
        elif "cpu" in controllers.split(","):
            v1 += [root / c / path for c in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
    v2.append(root)
    v1 += [root / "cpu", root / "cpu,cpuacct"]
    quotas = []
    for folder in dict.fromkeys(v2):  # (in order, each once)
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        quotas.append(None if quota == "max" else _cores(quota, period))
    if quotas:
        limits = [q for q in quotas if q is not None]
        return min(limits) if limits else None
    for folder in v1:
        try:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            continue
        return None if quota.startswith("-") else _cores(quota, period)
    return None


def _cores(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None
