"""The keyring on disk: created 0600 on first embedded run, updated under a lock, hot-reloaded.

In Kubernetes the file is a mounted Secret: the kubelet swaps it atomically through a symlink,
which changes the inode we watch, so a rotation applied to the Secret reaches every replica
without a restart. The keyring never goes to a database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from palisade.common.clock import Clock
from palisade.common.secret_files import (
    InsecureSecretPath,
    check_secret_file,
    create_exclusive,
    file_signature,
    locked,
    replace_atomically,
)
from palisade.crypto.errors import KeyringInvalid
from palisade.crypto.keyring import Keyring

log = logging.getLogger("palisade.crypto.keyring")


def read_keyring(path: Path) -> Keyring:
    try:
        check_secret_file(path)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KeyringInvalid(f"no keyring file at {path}") from None
    except OSError as exc:  # unreadable: wrong mode, a directory, an I/O error
        raise KeyringInvalid(f"cannot read the keyring file at {path}: {exc.strerror}") from None
    except InsecureSecretPath as exc:
        raise KeyringInvalid(str(exc)) from None
    return Keyring.from_json(raw)


def create_keyring(path: Path, clock: Clock) -> bool:
    """Creates a new keyring (mode 0600) unless one exists; returns whether it created it."""
    return create_exclusive(path, Keyring.generate(clock.now()).to_json())


def update_keyring(path: Path, change: Callable[[Keyring], Keyring]) -> Keyring:
    """Read-modify-write under an exclusive lock, so the CLI and a server never lose an update."""
    with locked(path):
        keyring = read_keyring(path)
        updated = change(keyring)
        if updated is not keyring:
            replace_atomically(path, updated.to_json())
    return updated


class KeyringHolder:
    """The keyring in use, replaced whole on reload (readers take one snapshot per batch)."""

    def __init__(self, path: Path, *, on_reload: Callable[[Keyring, bool], None]) -> None:
        self.path = path
        self._on_reload = on_reload
        self._signature = file_signature(path)
        self.current = read_keyring(path)

    def reload_if_changed(self) -> bool:
        """Loads the file if it changed; keeps the old keyring if the new file is invalid."""
        signature = file_signature(self.path)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            keyring = read_keyring(self.path)
            self.current.check_successor(keyring)
        except KeyringInvalid as exc:
            log.error(
                "keyring file changed but cannot be used; keeping the loaded keyring",
                extra={"reason": exc.message},
            )
            self._on_reload(self.current, False)
            return False
        self.current = keyring
        log.info(
            "keyring reloaded",
            extra={
                "primary_data_version": keyring.data.primary,
                "min_data_version": keyring.data.min_version,
            },
        )
        self._on_reload(keyring, True)
        return True

    def update(self, change: Callable[[Keyring], Keyring]) -> Keyring:
        """Changes the file under its lock, then loads the result at once."""
        update_keyring(self.path, change)
        self.reload_if_changed()
        return self.current

    async def watch(self, interval_seconds: float) -> None:
        """Polls the file until cancelled; no error ever stops the watching."""
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                self.reload_if_changed()
            except Exception:
                log.exception("keyring reload check failed; will retry")
