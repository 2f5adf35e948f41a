"""Encryption leasing, the hard limit, and automatic rotation at the threshold."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest

from palisade.common.aad import associated_data
from palisade.common.errors import Unavailable
from palisade.crypto import keyring_file
from palisade.crypto.errors import KeyUsageExhausted
from palisade.crypto.keyring_file import read_keyring, update_keyring
from palisade.crypto.store import MemoryUsageStore
from palisade.crypto.usage import UsageTracker

AAD = associated_data("visitors", "ws_1", "v_1", "email")


class CountingStore(MemoryUsageStore):
    """A memory ledger that records its calls and can be made to fail like a lost database."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.leases: list[tuple[int, int]] = []

    async def lease(self, version, count):
        if self.down:
            raise ConnectionError("database is down")
        self.leases.append((version, count))
        return await super().lease(version, count)

    async def totals(self):
        if self.down:
            raise ConnectionError("database is down")
        return await super().totals()


class BlockingStore(MemoryUsageStore):
    """A ledger whose lease waits until released, like a slow database round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def lease(self, version, count):
        self.calls += 1
        self.entered.set()
        await self.release.wait()
        return await super().lease(version, count)


def _tracker(store=None, warn=3, rotate=5, hard=8, lease=1):
    return UsageTracker(
        store=store if store is not None else MemoryUsageStore(),
        warn_threshold=warn,
        rotate_threshold=rotate,
        hard_limit=hard,
        lease_size=lease,
    )


async def _encrypt(crypto, n=1):
    return await crypto.service.encrypt([(b"x", AAD)] * n)


def _auto_rotations(crypto) -> float:
    return crypto.sample("palisade_crypto_auto_rotations_total")


# -- UsageTracker ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("warn", "rotate", "hard"), [(5, 3, 8), (3, 8, 8), (3, 9, 8)])
def test_thresholds_must_be_ordered(warn, rotate, hard):
    with pytest.raises(ValueError, match="warn_threshold <= rotate_threshold < hard_limit"):
        _tracker(warn=warn, rotate=rotate, hard=hard)


def test_lease_size_must_be_positive():
    with pytest.raises(ValueError, match="lease_size"):
        _tracker(lease=0)


async def test_counts_per_version_are_leased_before_use():
    store = CountingStore()
    tracker = _tracker(store, hard=100)
    await tracker.reserve(1, 3)
    await tracker.reserve(2, 1)
    await tracker.reserve(1, 0)  # nothing to count, no lease
    assert tracker.totals() == {1: 3, 2: 1}
    assert await store.totals() == {1: 3, 2: 1}  # in the ledger before any encryption
    assert store.leases == [(1, 3), (2, 1)]


async def test_leases_come_in_blocks_and_are_spent_locally():
    store = CountingStore()
    tracker = _tracker(store, warn=50, rotate=60, hard=100, lease=10)
    for _ in range(10):
        await tracker.reserve(1, 1)
    assert store.leases == [(1, 10)]  # one round trip for ten encryptions
    assert tracker.available(1) == 0
    await tracker.reserve(1, 25)  # a batch larger than a block leases what it needs
    assert store.leases == [(1, 10), (1, 25)]
    assert tracker.total(1) == 35


def test_thresholds():
    tracker = _tracker(warn=3, rotate=5, hard=8)
    assert not tracker.needs_warning(1)
    tracker._totals[1] = 3
    assert tracker.needs_warning(1)
    assert not tracker.needs_rotation(1)
    tracker._totals[1] = 5
    assert tracker.needs_rotation(1)


async def test_hard_limit_is_inclusive_and_all_or_nothing():
    tracker = _tracker(hard=8)
    await tracker.reserve(1, 4)
    with pytest.raises(KeyUsageExhausted):
        await tracker.reserve(1, 5)  # 9 > 8: refused whole
    assert tracker.total(1) == 4
    await tracker.reserve(1, 4)  # exactly the limit is fine
    with pytest.raises(KeyUsageExhausted):
        await tracker.reserve(1, 1)
    assert tracker.total(1) == 8
    await tracker.reserve(2, 8)  # another version has its own budget


async def test_a_lease_across_the_hard_limit_is_only_spent_below_it():
    tracker = _tracker(warn=3, rotate=5, hard=8, lease=6)
    spent = 0
    for _ in range(20):
        try:
            await tracker.reserve(1, 1)
        except KeyUsageExhausted:
            break
        spent += 1
    assert spent == 8
    assert tracker.total(1) >= 8  # over-counted (the safe direction), never under


async def test_replicas_sharing_a_ledger_never_pass_the_hard_limit_together():
    store = MemoryUsageStore()
    replicas = [_tracker(store, hard=8, lease=4), _tracker(store, hard=8, lease=4)]
    spent = 0
    for _ in range(20):
        for replica in replicas:
            try:
                await replica.reserve(1, 1)
                spent += 1
            except KeyUsageExhausted:
                pass
    assert spent == 8


async def test_restarted_replicas_never_pass_the_hard_limit():
    store = MemoryUsageStore()
    spent = 0
    for _ in range(5):  # each "restart" forgets its unspent lease
        replica = _tracker(store, hard=8, lease=3)
        await replica.refresh()
        try:
            await replica.reserve(1, 1)
            spent += 1
        except KeyUsageExhausted:
            pass
    assert spent <= 8
    assert (await store.totals())[1] >= spent


async def test_ledger_down_spends_the_lease_then_fails_closed():
    store = CountingStore()
    tracker = _tracker(store, hard=100, lease=5)
    await tracker.reserve(1, 1)
    store.down = True
    for _ in range(4):
        await tracker.reserve(1, 1)  # already leased
    with pytest.raises(Unavailable):
        await tracker.reserve(1, 1)
    with pytest.raises(Unavailable):
        await tracker.reserve(1, 3)
    store.down = False
    await tracker.reserve(1, 1)
    assert tracker.total(1) == 10


async def test_concurrent_batches_lease_once():
    store = BlockingStore()
    tracker = _tracker(store, hard=100, lease=10)
    first = asyncio.create_task(tracker.reserve(1, 1))
    await store.entered.wait()
    second = asyncio.create_task(tracker.reserve(1, 1))
    await asyncio.sleep(0)
    store.release.set()
    await asyncio.gather(first, second)
    assert store.calls == 1
    assert tracker.available(1) == 8


async def test_refresh_learns_other_replicas_and_never_goes_down():
    store = MemoryUsageStore()
    mine, other = _tracker(store, hard=100, lease=2), _tracker(store, hard=100, lease=2)
    await mine.reserve(1, 1)
    await other.reserve(1, 1)
    await other.reserve(2, 1)
    await mine.refresh()
    assert mine.totals() == {1: 4, 2: 2}
    store._counts[1] = 0  # a ledger that lost data must not make totals shrink
    await mine.refresh()
    assert mine.total(1) == 4


# -- the service -----------------------------------------------------------------------------------


async def test_service_refuses_past_the_hard_limit_all_or_nothing(make_crypto):
    crypto = make_crypto(warn=3, rotate=5, hard=8, auto_rotate=False)
    await _encrypt(crypto, 6)
    result = None
    with pytest.raises(KeyUsageExhausted) as info:
        result = await _encrypt(crypto, 3)
    assert result is None
    assert info.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert crypto.usage.total(1) == 6
    assert crypto.outcome("encrypt", "ok") == 6
    ciphertexts, version = await _encrypt(crypto, 2)
    assert (len(ciphertexts), version) == (2, 1)
    with pytest.raises(KeyUsageExhausted):
        await _encrypt(crypto, 1)


async def test_sync_usage_below_the_thresholds_does_nothing(make_crypto):
    crypto = make_crypto(warn=3, rotate=5, hard=8)
    await _encrypt(crypto, 2)
    await crypto.service.sync_usage()
    assert crypto.keyring.data.primary == 1
    assert await crypto.store.totals() == {1: 2}
    assert crypto.sample("palisade_crypto_key_usage_warning") == 0
    assert crypto.sample("palisade_crypto_primary_key_version") == 1
    assert crypto.sample("palisade_crypto_key_encryptions", key_version="1") == 2
    assert _auto_rotations(crypto) == 0


async def test_sync_usage_warns_before_rotating(make_crypto):
    crypto = make_crypto(warn=3, rotate=5, hard=8)
    await _encrypt(crypto, 4)
    await crypto.service.sync_usage()
    assert crypto.keyring.data.primary == 1
    assert crypto.sample("palisade_crypto_key_usage_warning") == 1
    assert _auto_rotations(crypto) == 0


async def test_sync_usage_rotates_once_at_the_threshold(make_crypto):
    crypto = make_crypto(warn=3, rotate=5, hard=8)
    (old, *_), _ = await _encrypt(crypto, 5)
    await crypto.service.sync_usage()

    assert crypto.keyring.data.primary == 2
    on_disk = read_keyring(crypto.path)
    assert on_disk.data.primary == 2
    assert set(on_disk.data.keys) == {1, 2}
    assert on_disk.data.min_version == 1
    assert on_disk.index == crypto.keyring.index  # index keys untouched
    assert _auto_rotations(crypto) == 1
    assert crypto.sample("palisade_crypto_primary_key_version") == 1  # set before rotating

    await crypto.service.sync_usage()  # called again: no second rotation
    await crypto.service.sync_usage()
    assert crypto.keyring.data.primary == 2
    assert set(read_keyring(crypto.path).data.keys) == {1, 2}
    assert _auto_rotations(crypto) == 1
    assert crypto.sample("palisade_crypto_primary_key_version") == 2
    assert crypto.sample("palisade_crypto_key_usage_warning") == 0

    (new,), version = await _encrypt(crypto)
    assert version == 2
    assert new[1:5] == b"\x00\x00\x00\x02"
    assert await crypto.service.decrypt([(old, AAD), (new, AAD)]) == [b"x", b"x"]
    assert crypto.usage.totals() == {1: 5, 2: 1}


async def test_auto_rotation_keeps_encryption_going_past_one_keys_hard_limit(make_crypto):
    crypto = make_crypto(warn=3, rotate=5, hard=8)
    for _ in range(4):  # 20 encryptions in all, never refused
        await _encrypt(crypto, 5)
        await crypto.service.sync_usage()
    assert crypto.keyring.data.primary == 5
    assert crypto.usage.totals() == {1: 5, 2: 5, 3: 5, 4: 5}
    assert _auto_rotations(crypto) == 4


async def test_auto_rotate_off_never_rotates(make_crypto):
    crypto = make_crypto(warn=3, rotate=5, hard=8, auto_rotate=False)
    await _encrypt(crypto, 8)
    for _ in range(3):
        await crypto.service.sync_usage()
    assert crypto.keyring.data.primary == 1
    assert set(read_keyring(crypto.path).data.keys) == {1}
    assert _auto_rotations(crypto) == 0
    assert crypto.sample("palisade_crypto_key_usage_warning") == 1
    with pytest.raises(KeyUsageExhausted):
        await _encrypt(crypto)


async def test_auto_rotation_on_a_read_only_keyring_only_logs(make_crypto, monkeypatch):
    crypto = make_crypto(warn=3, rotate=5, hard=8)
    await _encrypt(crypto, 5)
    before = crypto.path.read_bytes()

    def read_only(path, content):
        raise PermissionError(30, "Read-only file system", str(path))

    monkeypatch.setattr(keyring_file, "replace_atomically", read_only)
    await crypto.service.sync_usage()  # does not raise
    assert crypto.keyring.data.primary == 1
    assert crypto.path.read_bytes() == before
    assert _auto_rotations(crypto) == 0


async def test_sync_usage_with_the_ledger_down_does_not_rotate_until_it_is_back(make_crypto):
    store = CountingStore()
    crypto = make_crypto(warn=3, rotate=5, hard=8, store=store)
    await _encrypt(crypto, 5)
    store.down = True
    with pytest.raises(ConnectionError):
        await crypto.service.sync_usage()
    assert crypto.usage.total(1) == 5
    assert crypto.keyring.data.primary == 1
    store.down = False
    await crypto.service.sync_usage()
    assert await store.totals() == {1: 5}
    assert crypto.keyring.data.primary == 2


async def test_auto_rotation_when_another_replica_rotated_first(make_crypto):
    # Two replicas share the keyring file and the usage store; the other one rotates first and
    # this holder has not reloaded yet. No second rotation may happen, and this replica must
    # not report a rotation it did not make.
    crypto = make_crypto(warn=3, rotate=5, hard=8)
    await _encrypt(crypto, 5)
    update_keyring(crypto.path, lambda k: replace(k, data=k.data.rotated(crypto.clock.now())))
    assert crypto.keyring.data.primary == 1  # not reloaded yet

    await crypto.service.sync_usage()
    assert crypto.keyring.data.primary == 2
    assert set(read_keyring(crypto.path).data.keys) == {1, 2}
    assert _auto_rotations(crypto) == 0
