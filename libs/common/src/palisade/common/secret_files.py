"""Files that hold secrets: created 0600, replaced atomically, locked while read-modify-written."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

SECRET_FILE_MODE = 0o600
SECRET_DIR_MODE = 0o700
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class InsecureSecretPath(Exception):
    """A key file or its folder could be replaced by someone else: refuse to use it."""


def _trusted_owner(uid: int) -> bool:
    # Our own files, or root's (a Kubernetes Secret mount belongs to root).
    return uid in (os.geteuid(), 0)


def _check_folder(folder: Path) -> None:
    st = os.stat(folder)
    sticky = bool(st.st_mode & stat.S_ISVTX)  # others may not rename our files in it
    if not _trusted_owner(st.st_uid) or (st.st_mode & _WRITABLE_BY_OTHERS and not sticky):
        raise InsecureSecretPath(
            f"{folder} must belong to this user (or root) and not be writable by others"
        )


def check_secret_file(path: Path) -> None:
    """Refuses a secret file (or its folder) that another user could write or replace."""
    _check_folder(path.parent)
    st = os.stat(path)  # follows a Secret mount's symlink to the real file
    if not _trusted_owner(st.st_uid) or st.st_mode & _WRITABLE_BY_OTHERS:
        raise InsecureSecretPath(
            f"{path} must belong to this user (or root) and not be writable by others"
        )


def ensure_private_dir(directory: Path) -> None:
    """Creates directory (and parents) owner-only if missing; refuses one others can write."""
    directory.mkdir(mode=SECRET_DIR_MODE, parents=True, exist_ok=True)
    _check_folder(directory)


def harden_process() -> None:
    """Files this process creates (SQLite databases, journals, keys) are owner-only."""
    os.umask(0o077)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _synced_temp_file(path: Path, content: bytes, suffix: str) -> str:
    """A new file beside path holding content, synced to disk; returns its name.

    mkstemp creates a fresh, unpredictable name with O_EXCL and mode 0600, so a leftover or
    planted temp file can neither be reused nor lend the secret its wider mode.
    """
    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        os.write(fd, content)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def create_exclusive(path: Path, content: bytes) -> bool:
    """Creates path (mode 0600) holding content; returns False if it already existed.

    The content is written and synced under a temporary name first and then linked into
    place, which fails if the file exists: concurrent first runs are safe, and no reader ever
    sees a half-written file.
    """
    tmp = _synced_temp_file(path, content, ".new")
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    _fsync_folder(path.parent)
    return True


def replace_atomically(path: Path, content: bytes) -> None:
    """Replaces path with content so readers see either the old or the new file, never half."""
    tmp = _synced_temp_file(path, content, ".tmp")
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


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


# What identifies one version of a key file: a Secret mount swaps a symlink to a new file (a new
# inode), an editor rewrites in place (a new mtime or size).
FileSignature = tuple[int, int, int, int]


def file_signature(path: Path) -> FileSignature | None:
    """The signature of the file at path (following a Secret's symlink), None if there is none:
    a reloader compares it to the last one and re-reads only on a change."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
