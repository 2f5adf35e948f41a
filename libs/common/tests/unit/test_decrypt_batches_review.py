"""Review of DecryptBatches (palisade.common.decrypt_batches): adversarial cases.

The first group of tests demonstrated defects found in review (strict xfails until the fixes
landed; now plain regression tests). The plain tests pin properties
that were checked and hold. No test waits on a timer: gates are events, and "has it settled"
means the loop was given turns (asyncio.sleep(0)) after every task that could act had ended.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
from collections.abc import Sequence

import pytest

from palisade.common.crypto_client import CryptoFailure, SubjectErased
from palisade.common.decrypt_batches import DecryptBatches
from palisade.common.errors import InvalidArgument, PalisadeError, Unavailable
from palisade.common.logs import request_id_var

Item = tuple[bytes, bytes]


def sealed(*values: str) -> list[Item]:
    return [(b"sealed:" + v.encode(), b"aad:" + v.encode()) for v in values]


def open_all(items: Sequence[Item]) -> list[bytes | None]:
    """What a correct crypto answers to a batch tolerating erased subjects (as the batches
    send them): b"sealed:<x>" (with b"aad:<x>") opens to b"<x>"; b"erased:..." answers None;
    anything else is refused naming its position in the call."""
    out: list[bytes | None] = []
    for index, (envelope, aad) in enumerate(items):
        kind, _, value = envelope.partition(b":")
        if kind == b"erased":
            out.append(None)
            continue
        if kind != b"sealed" or aad != b"aad:" + value:
            raise CryptoFailure(f"item {index}")
        out.append(value)
    return out


async def settle(turns: int = 20) -> None:
    """Gives the loop turns, so every ready callback runs (no timer involved)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def stop(tasks: Sequence[asyncio.Task[object]]) -> None:
    """Cleans up callers a defect left waiting for good (so the test does not hang)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class GatedCrypto:
    """Every call waits for a gate of its own, which the test opens (in any order)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Item], asyncio.Event]] = []
        self.arrived = asyncio.Event()

    async def decrypt(self, items: Sequence[Item]) -> list[bytes | None]:
        gate = asyncio.Event()
        self.calls.append((list(items), gate))
        self.arrived.set()
        await gate.wait()
        return open_all(items)


# ---------------------------------------------------------------- review findings, fixed


async def test_a_caller_reusing_its_list_after_giving_up_does_not_shift_others() -> None:
    crypto = GatedCrypto()
    batches = DecryptBatches(crypto.decrypt)
    mine = sealed("alice-email@example.com", "Alice Secret")
    gone = asyncio.create_task(batches.decrypt(mine))
    staying = asyncio.create_task(batches.decrypt(sealed("bob-email@example.com")))
    await settle()
    assert len(crypto.calls) == 1
    assert len(crypto.calls[0][0]) == 3
    gone.cancel()
    try:
        await gone
    except asyncio.CancelledError:
        mine.clear()  # the request's own clean-up: the list is its own, after all
    crypto.calls[0][1].set()
    assert await staying == [b"bob-email@example.com"]


async def test_a_re_ask_ending_in_cancelled_error_still_answers_its_caller() -> None:
    async def send(items: Sequence[Item]) -> list[bytes | None]:
        if len(items) > 1:
            raise CryptoFailure("item 1")  # the batch is refused: each caller asked again
        if items == tuple(sealed("a")):
            raise asyncio.CancelledError()  # what grpc.aio raises once the channel closed
        return open_all(items)

    batches = DecryptBatches(send)
    first = asyncio.create_task(batches.decrypt(sealed("a")))
    second = asyncio.create_task(batches.decrypt(sealed("b")))
    batch = await _batch_out(batches)
    assert await second == [b"b"]
    await asyncio.wait([batch])
    await settle()
    try:
        assert first.done(), "the caller whose re-ask was cancelled is still waiting"
        with pytest.raises(Unavailable):
            await first
    finally:
        await stop([first])


async def _batch_out(batches: DecryptBatches) -> asyncio.Task[None]:
    """The one batch task, once the batches have made it (it may not have run yet)."""
    for _ in range(20):
        if batches._in_flight:
            break
        await asyncio.sleep(0)
    [batch] = list(batches._in_flight)
    return batch


async def test_stopping_the_sender_during_re_asks_leaves_nobody_waiting() -> None:
    crypto = GatedCrypto()
    batches = DecryptBatches(crypto.decrypt)
    callers = [
        asyncio.create_task(batches.decrypt(sealed("a"))),
        asyncio.create_task(batches.decrypt([(b"bad:z", b"aad:z")])),
    ]
    batch = await _batch_out(batches)
    await settle()
    crypto.calls[0][1].set()  # the batch is refused: each caller is asked again alone
    await settle()
    assert len(crypto.calls) == 3  # the two re-asks are in flight
    batch.cancel()
    await asyncio.wait([batch])
    await settle()
    try:
        assert all(c.done() for c in callers), "callers of a re-asked batch left waiting"
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results)
        assert not batches._in_flight
    finally:
        await stop(callers)


async def test_a_sender_cancelled_before_it_ran_does_not_wedge_the_client() -> None:
    crypto = GatedCrypto()
    batches = DecryptBatches(crypto.decrypt)
    first = asyncio.create_task(batches.decrypt(sealed("a")))
    batch = await _batch_out(batches)  # made, and not run yet
    assert not crypto.calls
    batch.cancel()
    await asyncio.wait([batch])
    later = asyncio.create_task(batches.decrypt(sealed("b")))
    await settle()
    for _, gate in crypto.calls:
        gate.set()
    await settle()
    try:
        assert first.done(), "the caller whose batch was cancelled is still waiting"
        with pytest.raises(Unavailable):
            await first
        assert later.done(), "a later call waits forever"
        assert await later == [b"b"]
    finally:
        await stop([first, later])


async def test_each_rpc_carries_the_request_id_of_one_of_its_own_callers() -> None:
    seen: list[tuple[list[Item], str | None]] = []
    gate = asyncio.Event()

    async def send(items: Sequence[Item]) -> list[bytes | None]:
        seen.append((list(items), request_id_var.get()))
        if len(seen) == 1:
            await gate.wait()
        return open_all(items)

    batches = DecryptBatches(send)

    async def call(request_id: str, items: list[Item]) -> list[bytes]:
        request_id_var.set(request_id)
        return await batches.decrypt(items)

    first = asyncio.create_task(call("req-first", sealed("a")))
    await settle()
    later = [
        asyncio.create_task(call("req-second", sealed("b"))),
        asyncio.create_task(call("req-refused", [(b"bad:z", b"aad:z")])),
    ]
    await settle()
    gate.set()
    await first
    await asyncio.gather(*later, return_exceptions=True)
    by_items = {tuple(items): rid for items, rid in seen}
    assert by_items[tuple(sealed("b"))] == "req-second"  # its re-ask
    assert by_items[((b"bad:z", b"aad:z"),)] == "req-refused"
    batch_ids = [rid for items, rid in seen if len(items) == 2]
    assert batch_ids
    assert batch_ids[0] in {"req-second", "req-refused"}


async def test_a_stuck_batch_does_not_hold_back_callers_that_came_later() -> None:
    """A batch out longer than the patience (a wedged replica) lets a second one go."""
    stuck = asyncio.Event()

    async def send(items: Sequence[Item]) -> list[bytes | None]:
        if list(items) == sealed("stuck"):
            await stuck.wait()  # this RPC's replica is wedged until its deadline
        return open_all(items)

    batches = DecryptBatches(send, patience_seconds=0.01)
    first = asyncio.create_task(batches.decrypt(sealed("stuck")))
    await settle()
    later = asyncio.create_task(batches.decrypt(sealed("fine")))
    try:
        # Answered while the first is still stuck (the patience's timer sends it).
        assert await asyncio.wait_for(later, timeout=10) == [b"fine"]
        assert not first.done()
    finally:
        stuck.set()
        await asyncio.gather(first, later, return_exceptions=True)
    assert await first == [b"stuck"]


async def test_within_the_patience_later_callers_wait_for_the_batch_out() -> None:
    """The normal case: the batch out comes back in time, and everyone who came meanwhile
    goes in the next one (no second batch beside it)."""
    gate = asyncio.Event()
    calls: list[list[Item]] = []

    async def send(items: Sequence[Item]) -> list[bytes | None]:
        calls.append(list(items))
        if len(calls) == 1:
            await gate.wait()
        return open_all(items)

    batches = DecryptBatches(send, patience_seconds=3600)
    first = asyncio.create_task(batches.decrypt(sealed("first")))
    await settle()
    later = [asyncio.create_task(batches.decrypt(sealed(f"l{i}"))) for i in range(5)]
    await settle()
    assert len(calls) == 1
    gate.set()
    assert await first == [b"first"]
    assert await asyncio.gather(*later) == [[f"l{i}".encode()] for i in range(5)]
    assert [len(c) for c in calls] == [1, 5]


# ---------------------------------------------------------------- properties that hold


@pytest.mark.parametrize("seed", range(12))
async def test_many_callers_under_random_timing_only_ever_get_their_own(seed: int) -> None:
    """Callers with distinct data arrive while batches are out, some give up, some carry an
    erased item (the batch is refused and re-asked per caller), gates open in random order:
    each caller gets exactly its own plaintexts, or its own refusal, never another's."""
    rng = random.Random(seed)
    crypto = GatedCrypto()
    batches = DecryptBatches(crypto.decrypt, max_items=rng.choice([3, 8, 256]))
    expected: dict[asyncio.Task[list[bytes]], list[bytes] | None] = {}
    cancelled: set[asyncio.Task[list[bytes]]] = set()
    opened = 0
    for n in range(60):
        values = [f"pii-{seed}-{n}-{k}" for k in range(rng.randint(1, 4))]
        items = sealed(*values)
        erased = rng.random() < 0.15
        if erased:
            items.insert(rng.randrange(len(items) + 1), (b"erased:x", b"aad:x"))
        task = asyncio.create_task(batches.decrypt(items))
        expected[task] = None if erased else [v.encode() for v in values]
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(0)
        if rng.random() < 0.1:
            task.cancel()
            cancelled.add(task)
        closed = [gate for _, gate in crypto.calls if not gate.is_set()]
        if closed and rng.random() < 0.4:
            rng.choice(closed).set()
            opened += 1
    while True:
        await settle()
        closed = [gate for _, gate in crypto.calls if not gate.is_set()]
        if not closed:
            break
        rng.choice(closed).set()
        opened += 1
    assert all(task.done() for task in expected), "callers left waiting with nothing in flight"
    assert opened == len(crypto.calls)
    for task, want in expected.items():
        if task in cancelled and task.cancelled():
            continue
        if want is None:
            error = task.exception()
            assert isinstance(error, SubjectErased)
            assert str(error).startswith("item ")
        else:
            assert task.result() == want
    await settle()
    assert not batches._in_flight
    assert not batches._waiting


async def test_each_refused_caller_gets_its_own_numbering_and_no_other_callers_error() -> None:
    async def send(items: Sequence[Item]) -> list[bytes | None]:
        return open_all(items)

    batches = DecryptBatches(send)
    results = await asyncio.gather(
        batches.decrypt(sealed("a", "b", "c")),
        batches.decrypt([*sealed("d"), (b"erased:e", b"aad:e")]),
        batches.decrypt([(b"erased:f", b"aad:f"), *sealed("g")]),
        return_exceptions=True,
    )
    assert results[0] == [b"a", b"b", b"c"]
    assert isinstance(results[1], SubjectErased)
    assert str(results[1]).startswith("item 1:")
    assert isinstance(results[2], SubjectErased)
    assert str(results[2]).startswith("item 0:")
    assert results[1] is not results[2]
    for error in results[1:]:
        assert isinstance(error, BaseException)
        # Not chained to the batch's refusal (which counts the batch's items, "item 4").
        assert error.__context__ is None
        assert error.__cause__ is None


async def test_a_send_raising_an_unexpected_exception_is_a_503_for_each(caplog) -> None:
    calls = 0

    async def broken(items: Sequence[Item]) -> list[bytes | None]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in the client")
        return open_all(items)

    batches = DecryptBatches(broken)
    with caplog.at_level(logging.ERROR, logger="palisade.common.decrypt_batches"):
        results = await asyncio.gather(
            *(batches.decrypt(sealed(str(i))) for i in range(4)), return_exceptions=True
        )
    assert all(isinstance(r, Unavailable) for r in results)
    assert len({id(r) for r in results}) == 4
    assert not any(isinstance(r, RuntimeError) for r in results)
    assert "failed unexpectedly" in caplog.text
    assert calls == 1  # not re-asked per caller: an unknown failure is not a refusal
    assert await batches.decrypt(sealed("back")) == [b"back"]  # the client still works
    await settle()
    assert not batches._in_flight


async def test_a_send_answering_more_items_than_asked_fails_the_batch_never_shifts() -> None:
    async def generous(items: Sequence[Item]) -> list[bytes | None]:
        return [b"someone-elses-pii", *open_all(items)]

    batches = DecryptBatches(generous)
    results = await asyncio.gather(
        batches.decrypt(sealed("a", "b")), batches.decrypt(sealed("c")), return_exceptions=True
    )
    assert all(isinstance(r, Unavailable) for r in results)
    assert not any(isinstance(r, list) for r in results)


async def test_an_outage_while_queued_callers_wait_fails_each_and_nobody_hangs() -> None:
    crypto = GatedCrypto()
    down = True

    async def send(items: Sequence[Item]) -> list[bytes | None]:
        if len(crypto.calls) == 0:
            return await crypto.decrypt(items)
        if down:
            raise Unavailable("the crypto service is unavailable")
        return open_all(items)

    batches = DecryptBatches(send)
    first = asyncio.create_task(batches.decrypt(sealed("first")))
    await settle()
    queued = [asyncio.create_task(batches.decrypt(sealed(f"q{i}"))) for i in range(5)]
    await settle()
    crypto.calls[0][1].set()
    assert await first == [b"first"]
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    down = False
    assert await batches.decrypt(sealed("back")) == [b"back"]


async def test_a_refusal_on_re_ask_that_is_an_outage_is_that_callers_alone() -> None:
    """After a refusal, each caller's own answer, even an outage on its re-ask."""

    async def send(items: Sequence[Item]) -> list[bytes | None]:
        if len(items) > 1:
            raise InvalidArgument("item 1: bad")
        if list(items) == sealed("b"):
            raise Unavailable("gone meanwhile")
        return open_all(items)

    batches = DecryptBatches(send)
    results = await asyncio.gather(
        batches.decrypt(sealed("a")), batches.decrypt(sealed("b")), return_exceptions=True
    )
    assert results[0] == [b"a"]
    assert isinstance(results[1], Unavailable)


async def test_no_plaintext_is_kept_by_the_batcher_after_the_calls() -> None:
    marker = "PII-7f3a9c"

    async def send(items: Sequence[Item]) -> list[bytes | None]:
        await asyncio.sleep(0)
        return open_all(items)

    batches = DecryptBatches(send)
    results = await asyncio.gather(
        *(batches.decrypt(sealed(f"{marker}-{i}")) for i in range(10)),
        batches.decrypt([(b"erased:z", b"aad:z")]),
        return_exceptions=True,
    )
    assert results[0] == [f"{marker}-0".encode()]
    assert isinstance(results[-1], PalisadeError)
    del results
    gc.collect()
    # Everything reachable from the batcher (its queue, its sender, what they hold).
    seen: set[int] = set()
    todo: list[object] = [batches.__dict__]
    found = []
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, bytes) and obj.startswith(marker.encode()):
            found.append(obj)
        if isinstance(obj, type) or type(obj).__name__ in {"module", "function", "code"}:
            continue
        todo.extend(gc.get_referents(obj))
    assert found == []
    await settle()
    assert not batches._in_flight
    assert batches._waiting == []
