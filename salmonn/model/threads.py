"""How many CPU threads torch should use: the CPUs this process may actually run on.

``os.cpu_count()`` counts the machine's cores, not this process's share: a CPU affinity mask
(``taskset``, a batch scheduler) or a cgroup quota (a container's ``--cpus``, a Ray worker's slot)
gives fewer. Too many threads on too few cores make OpenMP's workers spin and wait on each other, so
a busy neighbour slows a run far more than the CPU it takes. :func:`configure_threads` sets the thread
count and OpenMP's passive wait policy in the environment; it must run before torch is imported. No
torch import here.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``None`` when unlimited or unknown).

    Reads cgroup v2's ``cpu.max`` (``"200000 100000"``: 2 CPUs; ``"max 100000"``: unlimited), else
    cgroup v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``.
    """
    try:
        max_quota, max_period = (root / "cpu.max").read_text().split()[:2]
        if max_quota == "max":
            return None
        return int(max_quota) / int(max_period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may use: its affinity mask, capped by its cgroup quota (rounded up)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)


def configure_threads(
    environ: MutableMapping[str, str] | None = None, cpus: int | None = None
) -> dict[str, str]:
    """Set ``OMP_NUM_THREADS`` (the available CPUs, or ``cpus``) and ``OMP_WAIT_POLICY=PASSIVE`` in
    ``environ`` (default: this process's), keeping any value the user set. Returns what it set.

    Call it before torch is imported (OpenMP reads these once, when it starts).
    """
    environ = os.environ if environ is None else environ
    wanted = {
        "OMP_NUM_THREADS": str(cpus if cpus is not None else available_cpus()),
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    set_here = {k: v for k, v in wanted.items() if not environ.get(k)}
    environ.update(set_here)
    return set_here
