"""The cores this process may use (arclens/cores.py), on cgroup trees written by the test: v2's
cpu.max and v1's cfs quota, found where /proc/self/cgroup says or at the root, or none."""

from __future__ import annotations

import os

import pytest

from arclens.cores import cpu_quota, usable_cores


def _proc(tmp_path, text: str) -> str:
    p = tmp_path / "cgroup"
    p.write_text(text)
    return str(p)


def _write(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def test_v2_quota_of_the_process_cgroup(tmp_path):
    root = tmp_path / "fs"
    _write(root / "kubepods" / "pod1", cpu_max="250000 100000\n")
    _write(root, cpu_max="max 100000\n")
    assert cpu_quota(str(root), _proc(tmp_path, "0::/kubepods/pod1\n")) == 2.5
    assert usable_cores(str(root), _proc(tmp_path, "0::/kubepods/pod1\n")) == min(3, len(os.sched_getaffinity(0)))


def test_v2_an_ancestors_smaller_quota_caps_the_cgroup(tmp_path):
    root = tmp_path / "fs"
    _write(root / "slice", cpu_max="150000 100000\n")
    _write(root / "slice" / "job", cpu_max="400000 100000\n")
    assert cpu_quota(str(root), _proc(tmp_path, "0::/slice/job\n")) == 1.5


def test_v2_without_a_quota_and_a_container_seeing_its_own_at_the_root(tmp_path):
    root = tmp_path / "fs"
    _write(root, cpu_max="max 100000\n")
    assert cpu_quota(str(root), _proc(tmp_path, "0::/\n")) is None
    _write(root, cpu_max="100000 100000\n")  # (the process's path is not there: the root's own file)
    assert cpu_quota(str(root), _proc(tmp_path, "0::/elsewhere\n")) == 1.0


@pytest.mark.parametrize("folder", ["cpu", "cpu,cpuacct"])
def test_v1_cfs_quota(tmp_path, folder):
    root = tmp_path / "fs"
    _write(root / folder / "docker" / "abc", cpu_cfs_quota_us="150000\n", cpu_cfs_period_us="100000\n")
    proc = _proc(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cpu_quota(str(root), proc) == 1.5
    assert usable_cores(str(root), proc) == min(2, len(os.sched_getaffinity(0)))
    _write(root / folder / "docker" / "abc", cpu_cfs_quota_us="-1\n")
    assert cpu_quota(str(root), proc) is None


def test_nothing_readable_is_no_quota(tmp_path):
    assert cpu_quota(str(tmp_path / "none"), str(tmp_path / "none" / "cgroup")) is None
    assert usable_cores(str(tmp_path / "none"), str(tmp_path / "none" / "cgroup")) == len(os.sched_getaffinity(0))
    _write(tmp_path / "bad", cpu_max="garbage\n")
    assert cpu_quota(str(tmp_path / "bad"), _proc(tmp_path, "0::/\n")) is None


def test_this_machine_answers():
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)
