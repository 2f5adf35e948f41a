"""DecryptBatches: concurrent callers share RPCs, and each still gets exactly its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from palisade.common.crypto_client import CryptoFailure, SubjectErased
from palisade.common.decrypt_batches import DecryptBatches
from palisade.common.errors import InvalidArgument, Unavailable
from palisade.common.logs import request_id_var

Item = tuple[bytes, bytes]


class FakeCrypto:
    """Decrypts b"sealed:<x>" to b"<x>" when its associated data is b"aad:<x>", tolerating
    erased subjects as the batches ask: b"erased:…" answers None; b"bad:…" (or a wrong
    associated data) raises CryptoFailure naming the item's position in the call.
    Every call waits for `gate` (when set), so tests decide when a batch comes back."""

    def __init__(self) -> None:
        self.calls: list[list[Item]] = []
        self.request_ids: list[str | None] = []
        self.gate: asyncio.Event | None = None
        self.outage = False

    async def decrypt(self, items: Sequence[Item]) -> list[bytes | None]:
        self.calls.append(list(items))
        self.request_ids.append(request_id_var.get())
        if self.gate is not None:
            await self.gate.wait()
        if self.outage:
            raise Unavailable("the crypto service is unavailable")
        out: list[bytes | None] = []
        for index, (envelope, aad) in enumerate(items):
            kind, _, value = envelope.partition(b":")
            if kind == b"erased":
                out.append(None)
                continue
            if kind == b"bad" or aad != b"aad:" + value:
                raise CryptoFailure(f"item {index}")
            out.append(value)
        return out


def sealed(*values: str) -> list[Item]:
    return [(b"sealed:" + v.encode(), b"aad:" + v.encode()) for v in values]


async def test_a_lone_call_goes_at_once_and_alone() -> None:
    crypto = FakeCrypto()
    batches = DecryptBatches(crypto.decrypt)
    assert await batches.decrypt(sealed("a", "b")) == [b"a", b"b"]
    assert crypto.calls == [sealed("a", "b")]
    assert await batches.decrypt([]) == []
    assert len(crypto.calls) == 1


async def test_calls_made_while_a_batch_is_out_go_together_and_each_gets_its_own() -> None:
    crypto = FakeCrypto()
    crypto.gate = asyncio.Event()
    batches = DecryptBatches(crypto.decrypt, max_in_flight=1)
    first = asyncio.create_task(batches.decrypt(sealed("first")))
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(crypto.calls) == 1  # in flight
    later = [asyncio.create_task(batches.decrypt(sealed(f"u{i}", f"v{i}"))) for i in range(20)]
    await asyncio.sleep(0)
    assert len(crypto.calls) == 1  # they wait for the batch in flight
    crypto.gate.set()
    assert await first == [b"first"]
    results = await asyncio.gather(*later)
    assert results == [[f"u{i}".encode(), f"v{i}".encode()] for i in range(20)]
    assert len(crypto.calls) == 2  # everyone who came meanwhile: one call
    assert crypto.calls[1] == [item for i in range(20) for item in sealed(f"u{i}", f"v{i}")]
    assert batches.batches_sent == 2


async def test_calls_of_one_loop_turn_share_the_first_batch() -> None:
    crypto = FakeCrypto()
    batches = DecryptBatches(crypto.decrypt)
    results = await asyncio.gather(*(batches.decrypt(sealed(str(i))) for i in range(10)))
    assert results == [[str(i).encode()] for i in range(10)]
    assert len(crypto.calls) == 1


async def test_a_refused_item_is_its_callers_answer_alone() -> None:
    crypto = FakeCrypto()
    crypto.gate = asyncio.Event()
    batches = DecryptBatches(crypto.decrypt)
    blocker = asyncio.create_task(batches.decrypt(sealed("x")))
    await asyncio.sleep(0)
    good = asyncio.create_task(batches.decrypt(sealed("mine", "also")))
    erased = asyncio.create_task(batches.decrypt([*sealed("ok"), (b"erased:z", b"aad:z")]))
    tampered = asyncio.create_task(batches.decrypt([(b"sealed:a", b"aad:other")]))
    other = asyncio.create_task(batches.decrypt(sealed("last")))
    await asyncio.sleep(0)
    crypto.gate.set()
    await blocker
    assert await good == [b"mine", b"also"]
    assert await other == [b"last"]
    with pytest.raises(SubjectErased) as gone:
        await erased
    assert str(gone.value).startswith("item 1:")  # its own numbering, not the batch's
    with pytest.raises(CryptoFailure):
        await tampered
    # The batch, refused for the tampered item, then each of its four callers on its own.
    assert [len(c) for c in crypto.calls] == [1, 6, 2, 2, 1, 1]


async def test_an_erased_item_is_its_callers_answer_without_a_second_round_trip() -> None:
    crypto = FakeCrypto()
    crypto.gate = asyncio.Event()
    batches = DecryptBatches(crypto.decrypt)
    blocker = asyncio.create_task(batches.decrypt(sealed("x")))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    good = asyncio.create_task(batches.decrypt(sealed("mine")))
    erased = asyncio.create_task(batches.decrypt([*sealed("ok", "ok2"), (b"erased:z", b"")]))
    other = asyncio.create_task(batches.decrypt(sealed("last")))
    await asyncio.sleep(0)
    crypto.gate.set()
    await blocker
    assert await good == [b"mine"]
    assert await other == [b"last"]
    with pytest.raises(SubjectErased) as gone:
        await erased
    assert str(gone.value).startswith("item 2:")
    assert [len(c) for c in crypto.calls] == [1, 5]


async def test_a_refusal_in_a_batch_of_one_is_not_sent_twice() -> None:
    crypto = FakeCrypto()
    batches = DecryptBatches(crypto.decrypt)
    with pytest.raises(SubjectErased):
        await batches.decrypt([(b"erased:z", b"aad:z")])
    assert len(crypto.calls) == 1


async def test_an_outage_is_everyones_answer_with_an_exception_each() -> None:
    crypto = FakeCrypto()
    crypto.outage = True
    batches = DecryptBatches(crypto.decrypt)
    results = await asyncio.gather(
        *(batches.decrypt(sealed(str(i))) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, Unavailable) for r in results)
    assert len({id(r) for r in results}) == 5
    assert len(crypto.calls) == 1
    crypto.outage = False
    assert await batches.decrypt(sealed("back")) == [b"back"]


async def test_a_caller_that_gives_up_is_left_out_or_ignored() -> None:
    crypto = FakeCrypto()
    crypto.gate = asyncio.Event()
    batches = DecryptBatches(crypto.decrypt)
    in_flight = asyncio.create_task(batches.decrypt(sealed("gone-in-flight")))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(batches.decrypt(sealed("gone-waiting")))
    staying = asyncio.create_task(batches.decrypt(sealed("stays")))
    await asyncio.sleep(0)
    in_flight.cancel()
    waiting.cancel()
    crypto.gate.set()
    assert await staying == [b"stays"]
    assert in_flight.cancelled()
    assert waiting.cancelled()
    assert crypto.calls[1] == sealed("stays")  # the one that gave up before it went: left out


async def test_bounds_split_batches_and_a_large_call_goes_alone() -> None:
    crypto = FakeCrypto()
    crypto.gate = asyncio.Event()
    batches = DecryptBatches(crypto.decrypt, max_items=4, max_bytes=10_000, max_in_flight=1)
    blocker = asyncio.create_task(batches.decrypt(sealed("x")))
    for _ in range(3):
        await asyncio.sleep(0)
    small = [asyncio.create_task(batches.decrypt(sealed(f"a{i}", f"b{i}"))) for i in range(5)]
    large = asyncio.create_task(batches.decrypt(sealed(*(f"c{i}" for i in range(5)))))
    await asyncio.sleep(0)
    crypto.gate.set()
    await blocker
    assert await large == [f"c{i}".encode() for i in range(5)]
    assert [await t for t in small] == [[f"a{i}".encode(), f"b{i}".encode()] for i in range(5)]
    sizes = sorted(len(c) for c in crypto.calls[1:])
    assert sizes == [2, 4, 4, 5]  # two callers a batch at most; the large one alone


async def test_a_batch_carries_its_first_callers_request_id() -> None:
    crypto = FakeCrypto()
    batches = DecryptBatches(crypto.decrypt)

    async def call(request_id: str, value: str) -> list[bytes]:
        request_id_var.set(request_id)  # each task has a context of its own
        return await batches.decrypt(sealed(value))

    await asyncio.gather(call("first", "a"), call("second", "b"))
    await call("alone", "c")
    assert crypto.request_ids == ["first", "alone"]


async def test_a_short_answer_fails_the_batch_rather_than_shifting_plaintexts() -> None:
    async def short(items: Sequence[Item]) -> list[bytes | None]:
        return [b"only-one"]

    batches = DecryptBatches(short)
    results = await asyncio.gather(
        batches.decrypt(sealed("a")), batches.decrypt(sealed("b")), return_exceptions=True
    )
    assert all(isinstance(r, Unavailable) for r in results)


async def test_invalid_argument_of_one_caller_is_not_anothers() -> None:
    async def picky(items: Sequence[Item]) -> list[bytes | None]:
        if any(envelope == b"" for envelope, _ in items):
            raise InvalidArgument("item 0: empty")
        return [envelope for envelope, _ in items]

    batches = DecryptBatches(picky)
    good, bad = await asyncio.gather(
        batches.decrypt([(b"fine", b"")]), batches.decrypt([(b"", b"")]), return_exceptions=True
    )
    assert good == [b"fine"]
    assert isinstance(bad, InvalidArgument)


async def test_stopping_the_sender_leaves_nobody_waiting() -> None:
    crypto = FakeCrypto()
    crypto.gate = asyncio.Event()
    batches = DecryptBatches(crypto.decrypt, patience_seconds=0)
    first = asyncio.create_task(batches.decrypt(sealed("a")))
    await asyncio.sleep(0)
    second = asyncio.create_task(batches.decrypt(sealed("b")))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    in_flight = list(batches._in_flight)
    assert len(in_flight) == 2  # with no patience, a second batch goes beside the first
    for task in in_flight:
        task.cancel()
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    assert not batches._in_flight
