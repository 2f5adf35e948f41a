"""Files that hold secrets: created 0600, replaced atomically, locked while read-modify-written."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

SECRET_FILE_MODE = 0o600
SECRET_DIR_MODE = 0o700


def ensure_private_dir(directory: Path) -> None:
    """Creates directory (and parents) readable by the owner only, if it does not exist."""
    directory.mkdir(mode=SECRET_DIR_MODE, parents=True, exist_ok=True)


def create_exclusive(path: Path, content: bytes) -> bool:
    """Writes content to a new file with mode 0600; returns False if the file already existed.

    O_EXCL makes concurrent first runs safe: exactly one process creates the file, and the
    mode is set at creation, so there is no moment when the secret is world-readable.
    """
    ensure_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def replace_atomically(path: Path, content: bytes) -> None:
    """Replaces path with content so readers see either the old or the new file, never half."""
    ensure_private_dir(path.parent)
    # mkstemp creates a fresh, unpredictable name with O_EXCL and mode 0600, so a leftover or
    # planted temp file can neither be reused nor lend the secret its wider mode.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Holds an exclusive advisory lock on <path>.lock for a read-modify-write of path."""
    ensure_private_dir(path.parent)
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, SECRET_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
