"""Which file system a path lives on, and the refusal of a SQLite storage on a network one.

SQLite locks its file with POSIX locks and, in WAL mode (which hpo turns on), shares an index
through memory-mapped ``-shm`` file: neither works across the machines of a network file
system (NFS, CIFS, Lustre, GPFS, BeeGFS, ...), so workers on two nodes would write the same
file unlocked and could run one grid point twice or corrupt the study. On a cluster the
storage is PostgreSQL: ``hpo db start`` gives a user one without root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hpo.errors import StorageError

#: Where the kernel lists this process's mounts.
MOUNT_TABLE = Path("/proc/self/mounts")

#: File system types (as the mount table names them) that span machines. ``fuse.X`` types are
#: matched by their ``X``.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "fhgfs",  # BeeGFS's older name
        "ceph",
        "cephfs",
        "glusterfs",
        "gfs2",
        "ocfs2",
        "afs",
        "panfs",
        "pvfs2",
        "orangefs",
        "wekafs",
        "quobyte",
        "sshfs",
        "9p",
        "davfs",
        "s3fs",
    }
)


@dataclass(frozen=True)
class Mount:
    """One line of the mount table: what is mounted where, and its type."""

    device: str
    point: str
    fstype: str

    @property
    def is_network(self) -> bool:
        kind = self.fstype.lower()
        return kind in NETWORK_FILESYSTEMS or kind.removeprefix("fuse.") in NETWORK_FILESYSTEMS


def parse_mounts(text: str) -> list[Mount]:
    """The mounts of a mount table's ``text`` (``/proc/self/mounts``, ``/etc/mtab``), in order.

    Spaces, tabs, newlines and backslashes in a field are octal escapes there (``\\040``).
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            device, point, fstype = (_unescape(field) for field in fields[:3])
            mounts.append(Mount(device, point, fstype))
    return mounts


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_of(path: str | Path, mounts: str | Path | None = None) -> Mount | None:
    """The mount that holds ``path``: the one whose mount point is the longest prefix of the
    path (component by component; the last listed wins a tie, as it hides the ones below it).

    Args:
        path: a file or folder; one that does not exist yet is placed by its nearest existing
            parent, symlinks resolved.
        mounts: the mount table: a ``Path`` to read, or its text. Default: ``MOUNT_TABLE``,
            ``/proc/self/mounts``.

    Returns:
        None where the table cannot be read or holds no mount for it.
    """
    if mounts is None:
        mounts = MOUNT_TABLE
    if isinstance(mounts, Path):
        try:
            mounts = mounts.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    where = _resolved(Path(path))
    best: Mount | None = None
    for mount in parse_mounts(mounts):
        point = Path(mount.point)
        if (where == point or point in where.parents) and (
            best is None or len(point.parts) >= len(Path(best.point).parts)
        ):
            best = mount
    return best


def _resolved(path: Path) -> Path:
    path = path.expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing.resolve() / path.relative_to(existing)


def network_mount(path: str | Path, mounts: str | Path | None = None) -> Mount | None:
    """The network file system ``path`` lives on, or None on a local one (or when unknown)."""
    mount = mount_of(path, mounts)
    return mount if mount is not None and mount.is_network else None


def refuse_sqlite_on_network_fs(url: str, mounts: str | Path | None = None) -> None:
    """Refuse a ``sqlite:///`` storage whose file lies on a network file system, saying why
    and what to use instead; any other storage passes.

    Args:
        url: a storage URL.
        mounts: the mount table, as ``mount_of`` takes it. Default: ``/proc/self/mounts``.

    Raises:
        StorageError: the SQLite file is on a network file system.
    """
    from hpo.service.storage import sqlite_path

    if not url.startswith("sqlite:"):
        return
    path = sqlite_path(url)
    if path is None:
        return
    mount = network_mount(path, mounts)
    if mount is None:
        return
    raise StorageError(
        f"the SQLite storage {path} is on a network file system ({mount.fstype} mounted at "
        f"{mount.point}): SQLite's file locks and its WAL index do not work across machines "
        "there, so workers on several nodes could run a trial twice or corrupt the study. Use "
        "PostgreSQL: `hpo db start` runs a private one without root (README, 'On a cluster'), "
        "then --storage postgresql+psycopg://…; or, for workers on one machine only, a SQLite "
        "file on a local disk (e.g. sqlite:////tmp/hpo.db)"
    )
