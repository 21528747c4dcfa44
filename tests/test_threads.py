"""Thread counts from the CPUs a process may use (affinity, cgroup quota), with fake cgroup files."""

from __future__ import annotations

import os

import pytest

from salmonn.model.threads import available_cpus, cgroup_cpu_limit, configure_threads


def test_cgroup_v2_and_v1_quotas(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2) == pytest.approx(1.5)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path / "v1") == pytest.approx(1.0)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path / "v1") is None
    assert cgroup_cpu_limit(tmp_path / "nothing") is None


def test_available_cpus_is_the_smaller_of_affinity_and_quota(tmp_path):
    mask = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: one thread
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(mask + 8) * 100000} 100000\n")
    assert available_cpus(tmp_path) == mask


def test_configure_threads_keeps_the_users_values():
    env = {"OMP_NUM_THREADS": "3"}
    assert configure_threads(env, cpus=2) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert env == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE"}
    fresh: dict[str, str] = {}
    configure_threads(fresh, cpus=2)
    assert fresh == {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}


def test_ray_workers_get_their_cpu_shares_threads():
    from salmonn.cluster.runner import _worker_threads

    assert _worker_threads(1) == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    assert _worker_threads(2.5)["OMP_NUM_THREADS"] == "3"
    assert _worker_threads(0.25)["OMP_NUM_THREADS"] == "1"
