"""The files a user names, read and written one way: regular files only, reads bounded.

A study file, a password file and a dataset's files are read through ``open_input`` (or
``read_input``), and ``hpo export --out`` / ``hpo report --out`` written through
``write_output``, so that none of them hangs or runs without end:

- a FIFO, a device (``/dev/zero``, ``/dev/full``), a socket or a folder is refused before it
  is opened for use: reading a FIFO waits for a writer, ``/dev/zero`` never ends, and writing
  a FIFO waits for a reader;
- a file larger than its ``Bound`` (``hpo.spec.rules``) is refused before it is read;
- a write goes to a temporary file beside the target, renamed over it only once complete, so
  a full disk leaves the old file (or none) and not half a new one.

Every refusal is an ``OSError`` naming the file (``FileRefusedError``), which callers report as
they report a file that cannot be opened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

from hpo.spec.rules import Bound, shown


class FileRefusedError(OSError):
    """A named file is not a regular file, or is larger than hpo reads."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _refuse_special(path: str | Path, mode: int, verb: str) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "this is a folder, not a file", str(path))
    if not stat.S_ISREG(mode):
        raise FileRefusedError(
            errno.EINVAL,
            f"{_kind(mode)}, not a regular file: hpo {verb} only regular files, so that "
            f"nothing {'it reads can hang or run without end' if verb == 'reads' else 'hangs'}",
            str(path),
        )


def check_input(path: str | Path, bound: Bound) -> None:
    """Refuse ``path`` as ``open_input`` would, without opening it: for a file another
    library opens by name (torchvision's MNIST reader).

    Raises:
        As ``open_input``.
    """
    status = os.stat(path)
    _refuse_special(path, status.st_mode, "reads")
    _refuse_larger(path, status.st_size, bound)


def _refuse_larger(path: str | Path, size: int, bound: Bound) -> None:
    if size > bound.most:
        raise FileRefusedError(
            errno.EFBIG,
            f"{shown(size, 'bytes')}, larger than the {shown(bound.most, 'bytes')} hpo reads: "
            f"{bound.why}",
            str(path),
        )


def open_input(path: str | Path, bound: Bound) -> BinaryIO:
    """Open ``path`` to read, once it is known to be a regular file of at most ``bound``.

    Args:
        path: The file.
        bound: Its size bound in bytes (``hpo.spec.rules.SPEC_BYTES``, ``DATA_BYTES``, ...).

    Returns:
        The file, open in binary mode.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: it is a folder.
        FileRefusedError: it is a FIFO, a device or a socket, or larger than ``bound``.
        OSError: it cannot be opened.
    """
    # stat first: opening a device can act on it (a tape rewinds); then fstat what was
    # opened, as the path may have been swapped in between. O_NONBLOCK keeps the open of a
    # FIFO swapped in there from waiting for a writer.
    _refuse_special(path, os.stat(path).st_mode, "reads")
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        status = os.fstat(descriptor)
        _refuse_special(path, status.st_mode, "reads")
        _refuse_larger(path, status.st_size, bound)
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_input(path: str | Path, bound: Bound) -> bytes:
    """The bytes of ``path``, read through ``open_input`` (see there), and never more than
    ``bound`` of them, even from a file that grows while it is read."""
    with open_input(path, bound) as handle:
        data = handle.read(int(bound.most) + 1)
    if len(data) > bound.most:
        raise FileRefusedError(
            errno.EFBIG,
            f"grew past the {shown(bound.most, 'bytes')} hpo reads while it was read: {bound.why}",
            str(path),
        )
    return data


def check_output(path: str | Path) -> None:
    """Refuse ``path`` as a file to write when it exists and is not a regular file (a FIFO,
    a device such as ``/dev/full``, a socket, a folder); a missing path is fine.

    Raises:
        IsADirectoryError, FileRefusedError: as said.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # not there (yet): making its folder says what stands in the way
    _refuse_special(path, mode, "writes")


def write_output(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``: refused as ``check_output`` says, else written to
    a temporary file beside it and renamed over it once whole.

    Raises:
        OSError: naming ``path`` (a full disk: ``No space left on device``), with ``path``
            as it was before.
    """
    path = Path(path)
    check_output(path)
    data = text.encode("utf-8")
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        with contextlib.suppress(OSError):
            os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
