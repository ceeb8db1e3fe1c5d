"""The thread policy: a worker's threads from the CPUs it may use, one test per source."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpo.service.cpus import (
    CpuLimits,
    busy_cpus,
    cgroup_quota,
    read_cpu_limits,
    threads_per_worker,
)


def cgroups(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup tree and a /proc/self/cgroup as the kernel writes them."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc_cgroup = tmp_path / "proc-self-cgroup"
    proc_cgroup.write_text(proc)
    return root, proc_cgroup


def test_a_quiet_laptop_gives_every_core() -> None:
    assert CpuLimits(affinity=8, load=0.2, machine=8).usable() == 8
    assert threads_per_worker(2, CpuLimits(affinity=8, load=0.2, machine=8)) == 4


def test_the_affinity_mask_limits_the_cpus() -> None:
    # taskset -c 0,1 on an 8-core machine
    assert CpuLimits(affinity=2, machine=8, load=0.0).usable() == 2


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_the_real_affinity_mask_is_read() -> None:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        assert read_cpu_limits(environ={}, load=0.0).usable() == 1
    finally:
        os.sched_setaffinity(0, before)


def test_a_cgroup_v2_quota_limits_the_cpus_as_docker_cpus_does(tmp_path: Path) -> None:
    # docker run --cpus 1.5: cpu.max "150000 100000" in the container's cgroup
    root, proc = cgroups(
        tmp_path,
        "0::/docker/abc\n",
        {"docker/abc/cpu.max": "150000 100000\n", "docker/cpu.max": "max 100000\n"},
    )
    assert cgroup_quota(root, proc) == 1.5
    assert CpuLimits(affinity=8, quota=1.5, machine=8, load=0.0).usable() == 1  # not 2


def test_the_smallest_quota_on_the_way_to_the_root_wins(tmp_path: Path) -> None:
    root, proc = cgroups(
        tmp_path,
        "0::/kubepods/pod1/c1\n",
        {
            "kubepods/pod1/c1/cpu.max": "max 100000\n",
            "kubepods/pod1/cpu.max": "300000 100000\n",  # the pod's limit: 3 CPUs
            "kubepods/cpu.max": "1600000 100000\n",
        },
    )
    assert cgroup_quota(root, proc) == 3.0


def test_a_cgroup_v1_quota_is_read_too(tmp_path: Path) -> None:
    root, proc = cgroups(
        tmp_path,
        "4:memory:/x\n2:cpu,cpuacct:/slurm/job1\n",
        {
            "cpu,cpuacct/slurm/job1/cpu.cfs_quota_us": "200000\n",
            "cpu,cpuacct/slurm/job1/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/slurm/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/slurm/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_quota(root, proc) == 2.0


def test_no_quota_and_unreadable_files_are_no_limit(tmp_path: Path) -> None:
    root, proc = cgroups(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_quota(root, proc) is None
    assert cgroup_quota(tmp_path / "nowhere", tmp_path / "no-proc-file") is None


def test_slurm_cpus_per_task_limits_a_task_that_no_cgroup_confines() -> None:
    limits = read_cpu_limits(environ={"SLURM_CPUS_PER_TASK": "1"}, load=0.0)
    assert limits.slurm == 1 and limits.usable() == 1
    assert read_cpu_limits(environ={"SLURM_CPUS_PER_TASK": "junk"}, load=0.0).slurm is None


def test_a_busy_machine_leaves_a_worker_only_the_idle_cpus() -> None:
    # two `yes > /dev/null` on a 2-core machine: one thread, never two fighting over a core
    assert CpuLimits(affinity=2, machine=2, load=2.1).usable() == 1
    assert CpuLimits(affinity=2, machine=2, load=1.0).usable() == 1
    assert CpuLimits(affinity=2, machine=2, load=0.4).usable() == 2  # a shell's blip
    # a SLURM task of 4 CPUs on a 64-core node that other jobs keep 40 cores busy on
    assert CpuLimits(affinity=64, slurm=4, machine=64, load=40.0).usable() == 4


def proc_stat(tmp_path: Path, running: int) -> Path:
    """A /proc/stat as Linux writes it, with ``running`` tasks running."""
    path = tmp_path / "stat"
    path.write_text(
        "cpu  2255 34 2290 22625563 6290 127 456 0 0 0\n"
        "intr 114930548 113199788 3 0 5 263 0 4 [...]\nctxt 1990473\nbtime 1062191376\n"
        f"processes 2915\nprocs_running {running}\nprocs_blocked 0\n"
    )
    return path


def test_busy_cpus_are_the_running_tasks_but_the_one_reading(tmp_path: Path) -> None:
    # two `yes > /dev/null` and this process: two busy
    assert busy_cpus(proc_stat(tmp_path, 3), samples=3, interval=0) == 2.0
    assert busy_cpus(proc_stat(tmp_path, 1), samples=3, interval=0) == 0.0


def test_busy_cpus_take_the_median_so_a_blip_is_outvoted(tmp_path: Path) -> None:
    path, readings = tmp_path / "stat", iter([1, 4, 1, 1, 2])
    real_read = Path.read_text

    def read(self: Path, *args: object, **kwargs: object) -> str:
        if self == path:
            return f"procs_running {next(readings)}\n"
        return real_read(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "read_text", read)
        assert busy_cpus(path, samples=5, interval=0) == 0.0


def test_no_proc_stat_falls_back_to_the_load_average(tmp_path: Path) -> None:
    assert busy_cpus(tmp_path / "missing") is None
    (tmp_path / "odd").write_text("cpu 1 2 3\n")
    assert busy_cpus(tmp_path / "odd") is None


@pytest.mark.slow
def test_a_process_busy_now_is_counted_at_once() -> None:
    # The 1-minute load average takes about a minute to count a job that just started;
    # the running tasks count it at once.
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        assert (busy_cpus() or 0) >= 1
        assert read_cpu_limits(environ={}).load is not None
    finally:
        busy.kill()
        busy.wait()


def test_hpo_cpus_says_it_outright() -> None:
    limits = read_cpu_limits(environ={"HPO_CPUS": "3"}, load=50.0)
    assert limits.usable() == 3
    assert threads_per_worker(3, limits) == 1
    assert threads_per_worker(8, limits) == 1  # at least one
