"""Encryption counting, the hard limit, flushing, and automatic rotation at the threshold."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest

from palisade.common.aad import associated_data
from palisade.crypto import keyring_file
from palisade.crypto.errors import KeyUsageExhausted
from palisade.crypto.keyring_file import read_keyring, update_keyring
from palisade.crypto.store import MemoryUsageStore
from palisade.crypto.usage import UsageTracker

AAD = associated_data("visitors", "ws_1", "v_1", "email")


class FlakyStore(MemoryUsageStore):
    """A memory store whose add or totals can be made to fail, like a database going away."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_add = False
        self.fail_totals = False
        self.adds: list[dict[int, int]] = []

    async def add(self, deltas):
        if self.fail_add:
            raise ConnectionError("database is down")
        self.adds.append(dict(deltas))
        await super().add(deltas)

    async def totals(self):
        if self.fail_totals:
            raise ConnectionError("database is down")
        return await super().totals()


class BlockingStore(MemoryUsageStore):
    """A store whose add waits until released, like a slow database round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def add(self, deltas):
        self.entered.set()
        await self.release.wait()
        await super().add(deltas)


def _tracker(store=None, warn=3, rotate=5, hard=8):
    return UsageTracker(
        store=store or MemoryUsageStore(),
        warn_threshold=warn,
        rotate_threshold=rotate,
        hard_limit=hard,
    )


def _encrypt(crypto, n=1):
    return crypto.service.encrypt([(b"x", AAD)] * n)


def _auto_rotations(crypto) -> float:
    return crypto.sample("palisade_crypto_auto_rotations_total")


# -- UsageTracker ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("warn", "rotate", "hard"), [(4, 3, 8), (3, 8, 8), (3, 9, 8)])
def test_thresholds_must_be_ordered(warn, rotate, hard):
    with pytest.raises(ValueError, match="warn_threshold <= rotate_threshold < hard_limit"):
        _tracker(warn=warn, rotate=rotate, hard=hard)


def test_counts_per_version():
    usage = _tracker()
    usage.reserve(1, 2)
    usage.reserve(2, 1)
    usage.reserve(1, 3)
    assert usage.total(1) == 5
    assert usage.total(2) == 1
    assert usage.total(3) == 0
    assert usage.totals() == {1: 5, 2: 1}


def test_thresholds():
    usage = _tracker()
    usage.reserve(1, 2)
    assert not usage.needs_warning(1)
    usage.reserve(1, 1)
    assert usage.needs_warning(1)
    assert not usage.needs_rotation(1)
    usage.reserve(1, 2)
    assert usage.needs_rotation(1)
    assert not usage.needs_warning(2)


def test_hard_limit_is_inclusive_and_all_or_nothing():
    usage = _tracker()
    usage.reserve(1, 6)
    with pytest.raises(KeyUsageExhausted) as info:
        usage.reserve(1, 3)  # 9 > 8: none of the three is counted
    assert info.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.code == "key_usage_exhausted"
    assert usage.total(1) == 6
    usage.reserve(1, 2)  # exactly 8 is allowed
    assert usage.total(1) == 8
    with pytest.raises(KeyUsageExhausted):
        usage.reserve(1, 1)
    assert usage.total(1) == 8
    usage.reserve(2, 8)  # another version has its own budget
    assert usage.totals() == {1: 8, 2: 8}


async def test_flush_persists_to_the_store():
    store = MemoryUsageStore()
    usage = _tracker(store)
    usage.reserve(1, 3)
    usage.reserve(2, 1)
    await usage.flush()
    assert await store.totals() == {1: 3, 2: 1}
    assert usage.totals() == {1: 3, 2: 1}
    await usage.flush()  # nothing pending: nothing added twice
    assert await store.totals() == {1: 3, 2: 1}
    usage.reserve(1, 1)
    await usage.flush()
    assert await store.totals() == {1: 4, 2: 1}


async def test_flush_learns_counts_of_other_replicas():
    store = MemoryUsageStore()
    mine, theirs = _tracker(store), _tracker(store)
    theirs.reserve(1, 5)
    await theirs.flush()
    mine.reserve(1, 1)
    await mine.flush()
    assert mine.total(1) == 6
    assert mine.needs_rotation(1)
    with pytest.raises(KeyUsageExhausted):
        mine.reserve(1, 3)  # 6 + 3 > 8 across replicas


async def test_flush_keeps_pending_counts_if_the_store_fails():
    store = FlakyStore()
    usage = _tracker(store)
    usage.reserve(1, 2)
    store.fail_add = True
    with pytest.raises(ConnectionError):
        await usage.flush()
    assert usage.total(1) == 2  # still counted, still enforced
    usage.reserve(1, 1)
    assert usage.total(1) == 3
    store.fail_add = False
    await usage.flush()
    assert await store.totals() == {1: 3}
    assert store.adds == [{1: 3}]
    assert usage.totals() == {1: 3}


async def test_flush_neither_loses_nor_doubles_counts_if_totals_fails():
    store = FlakyStore()
    usage = _tracker(store)
    usage.reserve(1, 2)
    store.fail_totals = True
    with pytest.raises(ConnectionError):
        await usage.flush()
    assert await MemoryUsageStore.totals(store) == {1: 2}
    assert usage.total(1) == 2
    store.fail_totals = False
    await usage.flush()
    assert usage.total(1) == 2
    assert await store.totals() == {1: 2}


async def test_counts_being_flushed_still_count_against_the_hard_limit():
    # While a flush awaits the store, the counts it carries must still be enforced: other
    # requests run on the same event loop during that await.
    store = BlockingStore()
    usage = _tracker(store)
    usage.reserve(1, 8)  # at the hard limit
    flush = asyncio.create_task(usage.flush())
    await store.entered.wait()
    try:
        assert usage.total(1) == 8
        assert usage.needs_rotation(1)
        with pytest.raises(KeyUsageExhausted):
            usage.reserve(1, 8)
    finally:
        store.release.set()
        await flush
    assert usage.total(1) == 8
    assert await store.totals() == {1: 8}


# -- the service: hard limit and automatic rotation -----------------------------------------------


def test_service_refuses_past_the_hard_limit_all_or_nothing(make_crypto):
    crypto = make_crypto(warn=3, rotate=5, hard=8, auto_rotate=False)
    _encrypt(crypto, 6)
    result = None
    with pytest.raises(KeyUsageExhausted) as info:
        result = _encrypt(crypto, 3)
    assert result is None
    assert info.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert crypto.usage.total(1) == 6
    assert crypto.outcome("encrypt", "ok") == 6
    ciphertexts, version = _encrypt(crypto, 2)
    assert (len(ciphertexts), version) == (2, 1)
    with pytest.raises(KeyUsageExhausted):
        _encrypt(crypto, 1)


async def test_service_hard_limit_holds_while_usage_is_being_flushed(make_crypto):
    store = BlockingStore()
    crypto = make_crypto(warn=3, rotate=5, hard=8, auto_rotate=False, store=store)
    _encrypt(crypto, 8)
    flush = asyncio.create_task(crypto.service.flush_usage())
    await store.entered.wait()
    result = None
    try:
        with pytest.raises(KeyUsageExhausted):
            result = _encrypt(crypto, 8)  # a request served during the flush's await
    finally:
        store.release.set()
        await flush
    assert result is None
    assert crypto.usage.total(1) == 8
    assert await store.totals() == {1: 8}


async def test_flush_usage_below_the_thresholds_does_nothing(make_crypto):
    crypto = make_crypto(warn=3, rotate=5, hard=8)
    _encrypt(crypto, 2)
    await crypto.service.flush_usage()
    assert crypto.keyring.data.primary == 1
    assert await crypto.store.totals() == {1: 2}
    assert crypto.sample("palisade_crypto_key_usage_warning") == 0
    assert crypto.sample("palisade_crypto_primary_key_version") == 1
    assert crypto.sample("palisade_crypto_key_encryptions", key_version="1") == 2
    assert _auto_rotations(crypto) == 0


async def test_flush_usage_warns_before_rotating(make_crypto):
    crypto = make_crypto(warn=3, rotate=5, hard=8)
    _encrypt(crypto, 4)
    await crypto.service.flush_usage()
    assert crypto.keyring.data.primary == 1
    assert crypto.sample("palisade_crypto_key_usage_warning") == 1
    assert _auto_rotations(crypto) == 0


async def test_flush_usage_rotates_once_at_the_threshold(make_crypto):
    crypto = make_crypto(warn=3, rotate=5, hard=8)
    (old, *_), _ = _encrypt(crypto, 5)
    await crypto.service.flush_usage()

    assert crypto.keyring.data.primary == 2
    on_disk = read_keyring(crypto.path)
    assert on_disk.data.primary == 2
    assert set(on_disk.data.keys) == {1, 2}
    assert on_disk.data.min_version == 1
    assert on_disk.index == crypto.keyring.index  # index keys untouched
    assert _auto_rotations(crypto) == 1
    assert crypto.sample("palisade_crypto_primary_key_version") == 1  # set before rotating

    await crypto.service.flush_usage()  # called again: no second rotation
    await crypto.service.flush_usage()
    assert crypto.keyring.data.primary == 2
    assert set(read_keyring(crypto.path).data.keys) == {1, 2}
    assert _auto_rotations(crypto) == 1
    assert crypto.sample("palisade_crypto_primary_key_version") == 2
    assert crypto.sample("palisade_crypto_key_usage_warning") == 0

    (new,), version = _encrypt(crypto)
    assert version == 2
    assert new[1:5] == b"\x00\x00\x00\x02"
    assert crypto.service.decrypt([(old, AAD), (new, AAD)]) == [b"x", b"x"]
    assert crypto.usage.totals() == {1: 5, 2: 1}


async def test_auto_rotation_keeps_encryption_going_past_one_keys_hard_limit(make_crypto):
    crypto = make_crypto(warn=3, rotate=5, hard=8)
    for _ in range(4):  # 20 encryptions in all, never refused
        _encrypt(crypto, 5)
        await crypto.service.flush_usage()
    assert crypto.keyring.data.primary == 5
    assert crypto.usage.totals() == {1: 5, 2: 5, 3: 5, 4: 5}
    assert _auto_rotations(crypto) == 4


async def test_auto_rotate_off_never_rotates(make_crypto):
    crypto = make_crypto(warn=3, rotate=5, hard=8, auto_rotate=False)
    _encrypt(crypto, 8)
    for _ in range(3):
        await crypto.service.flush_usage()
    assert crypto.keyring.data.primary == 1
    assert set(read_keyring(crypto.path).data.keys) == {1}
    assert _auto_rotations(crypto) == 0
    assert crypto.sample("palisade_crypto_key_usage_warning") == 1
    with pytest.raises(KeyUsageExhausted):
        _encrypt(crypto)


async def test_auto_rotation_on_a_read_only_keyring_only_logs(make_crypto, monkeypatch):
    crypto = make_crypto(warn=3, rotate=5, hard=8)
    _encrypt(crypto, 5)
    before = crypto.path.read_bytes()

    def read_only(path, content):
        raise PermissionError(30, "Read-only file system", str(path))

    monkeypatch.setattr(keyring_file, "replace_atomically", read_only)
    await crypto.service.flush_usage()  # does not raise
    assert crypto.keyring.data.primary == 1
    assert crypto.path.read_bytes() == before
    assert _auto_rotations(crypto) == 0


async def test_flush_usage_with_the_store_down_keeps_counts_and_does_not_rotate(make_crypto):
    store = FlakyStore()
    crypto = make_crypto(warn=3, rotate=5, hard=8, store=store)
    _encrypt(crypto, 5)
    store.fail_add = True
    with pytest.raises(ConnectionError):
        await crypto.service.flush_usage()
    assert crypto.usage.total(1) == 5
    store.fail_add = False
    await crypto.service.flush_usage()
    assert await store.totals() == {1: 5}
    assert crypto.keyring.data.primary == 2


async def test_auto_rotation_when_another_replica_rotated_first(make_crypto):
    # Two replicas share the keyring file and the usage store; the other one rotates first and
    # this holder has not reloaded yet. No second rotation may happen, and this replica must
    # not report a rotation it did not make.
    crypto = make_crypto(warn=3, rotate=5, hard=8)
    _encrypt(crypto, 5)
    update_keyring(crypto.path, lambda k: replace(k, data=k.data.rotated(crypto.clock.now())))
    assert crypto.keyring.data.primary == 1  # not reloaded yet

    await crypto.service.flush_usage()
    assert crypto.keyring.data.primary == 2
    assert set(read_keyring(crypto.path).data.keys) == {1, 2}
    assert _auto_rotations(crypto) == 0
