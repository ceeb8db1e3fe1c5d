"""A SQLite storage on a network file system is refused (by hpo worker, hpo run and hpo slurm),
read from a mount table given as text: the longest mount point holding the file decides."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hpo.errors import StorageError
from hpo.service import filesystems
from hpo.service.cli import app
from hpo.service.filesystems import mount_of, parse_mounts, refuse_sqlite_on_network_fs

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
fileserver:/export/home /home nfs4 rw,relatime,vers=4.2,hard 0 0
/dev/sdb1 /home/alice/scratch xfs rw,relatime 0 0
10.0.0.5@tcp:/lfs /lustre lustre rw,flock 0 0
gpfs0 /gpfs gpfs rw,relatime 0 0
beegfs_nodev /mnt/beegfs beegfs rw,relatime 0 0
//nas/share /mnt/my\\040share cifs rw,relatime 0 0
alice@host:/data /mnt/sshfs fuse.sshfs rw,nosuid,nodev 0 0
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/home/alice/hpo.db", "nfs4"),
        ("/home/alice/scratch/hpo.db", "xfs"),  # the longer mount point wins
        ("/home/alice/scratchy/hpo.db", "nfs4"),  # a prefix of a name is no mount point
        ("/lustre/project/hpo.db", "lustre"),
        ("/gpfs/hpo.db", "gpfs"),
        ("/mnt/beegfs/runs/hpo.db", "beegfs"),
        ("/mnt/my share/hpo.db", "cifs"),  # \040 is a space in the table
        ("/mnt/sshfs/hpo.db", "fuse.sshfs"),
        ("/var/tmp/hpo.db", "ext4"),
    ],
)
def test_the_longest_mount_point_holding_a_path_gives_its_file_system(
    path: str, fstype: str
) -> None:
    mount = mount_of(path, MOUNTS)
    assert mount is not None and mount.fstype == fstype


def test_a_later_mount_on_the_same_point_hides_the_earlier() -> None:
    table = MOUNTS + "tmpfs /home tmpfs rw 0 0\n"
    mount = mount_of("/home/alice/hpo.db", table)
    assert mount is not None and mount.fstype == "tmpfs" and not mount.is_network


def test_the_mount_table_is_read_from_a_file(tmp_path: Path) -> None:
    table = tmp_path / "mounts"
    table.write_text(MOUNTS)
    assert mount_of("/gpfs/x.db", table).fstype == "gpfs"  # type: ignore[union-attr]
    assert mount_of("/gpfs/x.db", tmp_path / "missing") is None


def test_parse_mounts_skips_short_lines() -> None:
    assert [m.point for m in parse_mounts("garbage\n/dev/a /b ext4 rw 0 0\n")] == ["/b"]


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////home/alice/hpo.db",
        "sqlite:////lustre/p/hpo.db",
        "sqlite:////gpfs/hpo.db",
        "sqlite:////mnt/beegfs/hpo.db",
        "sqlite:///file:/home/alice/hpo.db?mode=ro&uri=true",
    ],
)
def test_a_sqlite_storage_on_a_network_file_system_is_refused_with_what_to_use(
    url: str,
) -> None:
    with pytest.raises(StorageError) as refused:
        refuse_sqlite_on_network_fs(url, MOUNTS)
    message = str(refused.value)
    assert "network file system" in message
    assert "hpo db start" in message and "PostgreSQL" in message
    assert "local disk" in message


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////home/alice/scratch/hpo.db",
        "sqlite:////var/tmp/hpo.db",
        "sqlite:///:memory:",
        "postgresql+psycopg://hpo@db-host/hpo",
        "grpc://127.0.0.1:13000",
    ],
)
def test_a_local_sqlite_file_and_other_storages_pass(url: str) -> None:
    refuse_sqlite_on_network_fs(url, MOUNTS)


@pytest.mark.parametrize(
    "command",
    [
        ["worker", "--study", "x"],
        ["slurm", "study.yaml", "--workers", "2", "--dry-run"],
        # (hpo run imports torch, which runs ldconfig)
        pytest.param(["run", "study.yaml"], marks=pytest.mark.slow),
    ],
    ids=["worker", "slurm", "run"],
)
def test_the_commands_that_run_workers_refuse_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], write_spec
) -> None:
    """The table says the temp folder is on NFS: each command refuses before it starts."""
    write_spec(name="study.yaml")
    (tmp_path / "hpo.db").touch()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        filesystems, "MOUNT_TABLE", f"/dev/sda1 / ext4 rw 0 0\nfiler:/t {tmp_path} nfs rw 0 0\n"
    )
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.delenv("HPO_STORAGE_PASSWORD_FILE", raising=False)
    root = logging.getLogger()  # a command's log handler writes to the runner's stderr,
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # closed after it: undo it
    result = CliRunner().invoke(app, [*command, "--storage", f"sqlite:///{tmp_path}/hpo.db"])
    assert result.exit_code == 1, result.output
    assert "network file system (nfs mounted at" in " ".join(result.output.split())
