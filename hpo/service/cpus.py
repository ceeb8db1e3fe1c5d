"""How many torch threads a worker takes: the one thread policy.

A worker sizes itself by the CPUs it may use, not by the machine's core count
(``os.cpu_count()``): a process that runs torch on more threads than it has cores is many
times slower (15-25× measured under load), since its threads wait on each other. The CPUs a
process may use are the fewest of every limit placed on it:

- its CPU affinity (``taskset``, ``docker --cpuset-cpus``, SLURM's task affinity);
- its cgroup's CPU quota (``docker --cpus``, Kubernetes' CPU limit, systemd's ``CPUQuota``;
  cgroup v2's ``cpu.max`` or v1's ``cpu.cfs_quota_us``, in its own cgroup and every parent);
- SLURM's ``SLURM_CPUS_PER_TASK`` (``--cpus-per-task``), which a cluster without cgroups
  does not enforce;

and of those, a worker takes only the ones other processes leave idle (at least one), so a
single worker on a busy machine does not take threads it cannot get. Busy is counted now, not
as the 1-minute load average, which lags by a minute both ways: after a job ends it still
counts the job (one worker started then got one thread of two idle cores and ran a CNN trial
1.3× slower than the plain loop on two, docs/benchmarks.md), and a job just started it does
not count yet. Linux's ``procs_running`` (``/proc/stat``) is sampled a few times and the
median kept, so a blip (a shell, a daemon's tick) is outvoted; the load average stands in
where there is no ``/proc/stat``. ``threads_per_worker`` shares them among a run's workers.
``HPO_CPUS=N`` says how many CPUs hpo may use instead of all this; ``--threads`` (or
``HPO_THREADS``) on ``hpo worker`` and ``hpo run`` sets each worker's threads outright.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: The environment variable that says how many CPUs hpo may use, instead of reading them.
CPUS_ENV = "HPO_CPUS"

#: Where the cgroup file systems are mounted.
CGROUP_ROOT = Path("/sys/fs/cgroup")

#: Where Linux says how many tasks are running now (``procs_running``).
PROC_STAT = Path("/proc/stat")
#: Samples of ``procs_running`` ``busy_cpus`` takes, and the seconds between them.
BUSY_SAMPLES = 5
BUSY_INTERVAL_S = 0.02


@dataclass(frozen=True)
class CpuLimits:
    """The limits on the CPUs this process may use; None where there is none.

    Attributes:
        affinity: CPUs in the process's affinity mask.
        quota: CPUs' worth of time its cgroups allow (fractional: ``--cpus 1.5``).
        slurm: ``SLURM_CPUS_PER_TASK``.
        load: the machine's CPUs that other processes keep busy (``busy_cpus``, or the
            1-minute load average where it cannot be read).
        machine: the machine's CPUs (``os.cpu_count()``), which the load is counted against.
        declared: ``HPO_CPUS``: the CPUs a user says hpo may use, instead of all the above.
    """

    affinity: int | None = None
    quota: float | None = None
    slurm: int | None = None
    load: float | None = None
    machine: int | None = None
    declared: int | None = None

    def usable(self) -> int:
        """The CPUs a worker may use: the fewest of the limits, and no more than the
        machine's CPUs that other processes leave idle, at least one; ``declared`` when set."""
        if self.declared is not None:
            return self.declared
        machine = self.machine or 1
        cpus = min(limit for limit in (self.affinity, self.slurm, machine) if limit is not None)
        if self.quota is not None:
            cpus = min(cpus, max(1, math.floor(self.quota)))  # 1.5 CPUs: one thread, not two
        if self.load is not None:
            # Busy CPUs are counted over the whole machine (a container's or a SLURM task's
            # too), so they are held against the machine's CPUs; half a CPU rounds away.
            idle = machine - int(self.load + 0.5)
            cpus = min(cpus, max(1, idle))
        return max(1, cpus)


def read_cpu_limits(
    *,
    environ: Mapping[str, str] | None = None,
    cgroup_root: Path = CGROUP_ROOT,
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    load: float | None = None,
) -> CpuLimits:
    """This process's ``CpuLimits``, read from the system.

    Args:
        environ: the environment to read SLURM's variable from. Default: ``os.environ``.
        cgroup_root: where the cgroup file systems are mounted (a test passes its own).
        proc_cgroup: the file naming this process's cgroups.
        load: the CPUs other processes keep busy. Default: ``busy_cpus()``, or where there
            is no ``/proc/stat`` ``os.getloadavg()``'s 1-minute figure.
    """
    environ = os.environ if environ is None else environ
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    slurm = _positive_int(environ.get("SLURM_CPUS_PER_TASK"))
    declared = _positive_int(environ.get(CPUS_ENV))
    if load is None and declared is None:  # HPO_CPUS wins: no readings to wait for
        load = busy_cpus()
    if load is None and hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
    quota = cgroup_quota(cgroup_root, proc_cgroup)
    return CpuLimits(affinity, quota, slurm, load, os.cpu_count(), declared)


def busy_cpus(
    proc_stat: Path = PROC_STAT, samples: int = BUSY_SAMPLES, interval: float = BUSY_INTERVAL_S
) -> float | None:
    """The CPUs other processes keep busy now: the median over ``samples`` readings, every
    ``interval`` seconds, of the tasks Linux has running (``procs_running``, threads
    included), less this one, which is running as it reads; None where it cannot be read."""
    counts = []
    for sample in range(samples):
        if sample:
            time.sleep(interval)
        try:
            found = re.search(r"^procs_running (\d+)$", proc_stat.read_text(), re.MULTILINE)
        except OSError:
            return None
        if found is None:
            return None
        counts.append(max(0, int(found[1]) - 1))
    return float(statistics.median(counts))


def threads_per_worker(workers: int = 1, limits: CpuLimits | None = None) -> int:
    """Torch threads for each of ``workers`` workers on this machine: the usable CPUs
    (``CpuLimits.usable``) shared out, at least one.

    Small nets are dominated by per-step overhead, so one thread per worker and one worker
    per usable CPU beats several threads fighting over the same cores.
    """
    limits = read_cpu_limits() if limits is None else limits
    return max(1, limits.usable() // max(1, workers))


def cgroup_quota(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """CPUs' worth of time this process's cgroups allow (the smallest quota on the way from
    its cgroup to the root), or None when none is set or the files cannot be read."""
    quotas = []
    for kind, relative in _cgroups(proc_cgroup):
        if kind == "v2":
            folders = [cgroup_root / relative, *(cgroup_root / relative).parents]
            for folder in folders:
                if not folder.is_relative_to(cgroup_root):
                    break
                quota = _v2_quota(folder / "cpu.max")
                if quota is not None:
                    quotas.append(quota)
        else:
            base = cgroup_root / kind
            for folder in [base / relative, *(base / relative).parents]:
                if not folder.is_relative_to(base):
                    break
                quota = _v1_quota(folder)
                if quota is not None:
                    quotas.append(quota)
    return min(quotas) if quotas else None


def _cgroups(proc_cgroup: Path) -> list[tuple[str, str]]:
    """(``v2`` or the v1 controller folder, the cgroup's path) for the CPU controller."""
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        relative = path.lstrip("/")
        if controllers == "":
            found.append(("v2", relative))
        elif "cpu" in controllers.split(","):
            found.append((controllers, relative))
    return found


def _v2_quota(cpu_max: Path) -> float | None:
    try:
        quota, period = cpu_max.read_text(encoding="utf-8").split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return _ratio(quota, period)


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = (folder / "cpu.cfs_quota_us").read_text(encoding="utf-8").strip()
        period = (folder / "cpu.cfs_period_us").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return None if quota.startswith("-") else _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        value = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None
