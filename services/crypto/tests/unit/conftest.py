"""Shared fixtures for the crypto unit tests: a real keyring file in tmp_path, no sockets."""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from palisade.common.aad import associated_data
from palisade.common.clock import ManualClock
from palisade.common.db import create_engine
from palisade.common.migrations import upgrade
from palisade.crypto.keyring import Keyring
from palisade.crypto.keyring_file import KeyringHolder, create_keyring
from palisade.crypto.metrics import CryptoMetrics
from palisade.crypto.service import CryptoService, Limits
from palisade.crypto.store import MIGRATIONS_PACKAGE, MemoryUsageStore
from palisade.crypto.subject_store import DatabaseSubjectStore
from palisade.crypto.usage import UsageTracker

WORKSPACE = "ws_1"
RECORD = "v_1"


@dataclass
class Crypto:
    """A CryptoService with everything it was built from, and a few keyring operations."""

    service: CryptoService
    holder: KeyringHolder
    usage: UsageTracker
    store: MemoryUsageStore
    metrics: CryptoMetrics
    registry: CollectorRegistry
    clock: ManualClock
    path: Path
    subjects: DatabaseSubjectStore | None
    reloads: list[tuple[Keyring, bool]] = field(default_factory=list)

    @property
    def keyring(self) -> Keyring:
        return self.holder.current

    def rotate_data(self) -> Keyring:
        self.clock.advance(60)
        return self.holder.update(lambda k: replace(k, data=k.data.rotated(self.clock.now())))

    def retire_data_below(self, version: int) -> Keyring:
        return self.holder.update(lambda k: replace(k, data=k.data.retired_below(version)))

    def rotate_index(self) -> Keyring:
        self.clock.advance(60)
        return self.holder.update(lambda k: replace(k, index=k.index.rotated(self.clock.now())))

    def retire_index_below(self, version: int) -> Keyring:
        return self.holder.update(lambda k: replace(k, index=k.index.retired_below(version)))

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def outcome(self, operation: str, outcome: str) -> float:
        return self.sample("palisade_crypto_items_total", operation=operation, outcome=outcome)


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def aad():
    return associated_data("visitors", WORKSPACE, RECORD, "email")


@pytest.fixture
def keyring_path(tmp_path, clock):
    path = tmp_path / "keys" / "keyring.json"
    assert create_keyring(path, clock) is True
    return path


@pytest.fixture
async def subject_engine(tmp_path):
    """The crypto database's subject_keys on a SQLite file, migrated as the service does."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'crypto.db'}")
    await upgrade(engine, MIGRATIONS_PACKAGE)
    yield engine
    await engine.dispose()


@pytest.fixture
def make_crypto(tmp_path, clock, subject_engine):
    """Builds an independent service (own keyring file, usage store, registry) per call; they
    share one subject table unless built with subjects=False."""
    counter = itertools.count()
    shared_subjects = DatabaseSubjectStore(engine=subject_engine)

    def make(
        *,
        warn: int = 10_000,
        rotate: int = 20_000,
        hard: int = 30_000,
        max_items: int = 16,
        max_item_bytes: int = 4096,
        auto_rotate: bool = True,
        store: MemoryUsageStore | None = None,
        lease_size: int = 1,
        subjects: bool = True,
    ) -> Crypto:
        path = tmp_path / f"svc{next(counter)}" / "keys" / "keyring.json"
        assert create_keyring(path, clock) is True
        reloads: list[tuple[Keyring, bool]] = []
        holder = KeyringHolder(path, on_reload=lambda k, ok: reloads.append((k, ok)))
        store = store if store is not None else MemoryUsageStore()
        usage = UsageTracker(
            store=store,
            warn_threshold=warn,
            rotate_threshold=rotate,
            hard_limit=hard,
            lease_size=lease_size,
        )
        registry = CollectorRegistry()
        metrics = CryptoMetrics(registry)
        service = CryptoService(
            keyring=holder,
            usage=usage,
            limits=Limits(max_items=max_items, max_item_bytes=max_item_bytes),
            metrics=metrics,
            clock=clock,
            auto_rotate=auto_rotate,
            subjects=shared_subjects if subjects else None,
        )
        return Crypto(
            service,
            holder,
            usage,
            store,
            metrics,
            registry,
            clock,
            path,
            shared_subjects if subjects else None,
            reloads,
        )

    return make


@pytest.fixture
def crypto(make_crypto):
    return make_crypto()


@pytest.fixture
def key_forms():
    """Every way a key could leak into text: hex, base64, base64url, bytes repr (and prefixes)."""

    def forms(key: bytes) -> list[str]:
        full = [
            key.hex(),
            key.hex().upper(),
            base64.b64encode(key).decode().rstrip("="),
            base64.urlsafe_b64encode(key).decode().rstrip("="),
            repr(key)[2:-1],
        ]
        return full + [f[:16] for f in full]

    return forms


@pytest.fixture
def assert_no_keys(key_forms):
    """Asserts that text shows no key of the keyring (data or index, any version)."""

    def check(text: str, keyring: Keyring) -> None:
        for keys in (keyring.data, keyring.index):
            for kv in keys.keys.values():
                for form in key_forms(kv.key):
                    assert form not in text, f"key version {kv.version} leaked as {form!r}"

    return check
