"""Concurrent Decrypt calls of one process travel to crypto together, as batched calls.

Each RPC costs both ends far more CPU than the AES-GCM work it carries (about 0.8 ms for a
unary round trip in Python gRPC, against microseconds per field), and the busiest reads
(`GET /v1/me`: two fields) each made one. Here calls are gathered for one turn of the event
loop and sent as one Decrypt; while a batch is out, later calls wait for it to come back and
then go together. Nothing waits on a timer: an idle service sends every call alone and at
once, and the busier crypto is, the larger the batches (as a database's group commit does).
Only when the batch out has been out longer than PATIENCE_SECONDS (far above a normal round
trip of a few milliseconds) does a second one go meanwhile, so one slow or stuck RPC (a wedged
replica, until its deadline) holds back the others by that much at most.

What a caller gets is exactly what its own call would have given:
- its own plaintexts, split off by position from its own copy of its items (the items of
  each caller are contiguous, in order);
- an item of an erased subject: batches are sent tolerating erased subjects, and the caller
  whose item it is gets SubjectErased naming that item in its own numbering, while everyone
  else in the batch is answered normally (one deleted account does not cost the others a
  second round trip);
- any other refusal of a batch (tampered data, a bad argument) is not shared out: every
  caller of that batch is asked again on its own, so each gets its own answer;
- a crypto outage (Unavailable), or a batch that could not complete (cancelled, a broken
  answer), is every caller's 503, each with an exception of its own; nobody is ever left
  waiting;
- a caller that is cancelled while it waits is left out of the batch if it has not gone yet,
  and its share of the answer is dropped if it has.

Each RPC runs in the context of one of its own callers (the first of the batch), so the
request id and verified caller that crypto's logs and assertions see belong to a request in
that batch. Plaintexts are handed to their caller and kept nowhere: a batch holds them only
until it has split them out.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from palisade.common.errors import PalisadeError, SubjectErased, Unavailable

log = logging.getLogger("palisade.common.decrypt_batches")

Item = tuple[bytes, bytes]
# Decrypt tolerating erased subjects: a plaintext per item, None for an erased subject's.
TolerantDecrypt = Callable[[Sequence[Item]], Awaitable[list[bytes | None]]]

# A batch holds at most this many items and bytes (the crypto service's own batch limits are
# larger): a huge batch would delay its callers behind one another's work. A call larger than
# this goes alone.
MAX_BATCH_ITEMS = 256
MAX_BATCH_BYTES = 1024 * 1024
MAX_IN_FLIGHT = 2
PATIENCE_SECONDS = 0.05


@dataclass
class _Waiter:
    items: tuple[Item, ...]  # the caller's items, copied: nothing it does later moves a slice
    size: int
    future: asyncio.Future[list[bytes]] = field(repr=False)
    context: contextvars.Context = field(repr=False)


def _size(items: Sequence[Item]) -> int:
    return sum(len(envelope) + len(aad) for envelope, aad in items)


def _own_answer(plaintexts: Sequence[bytes | None]) -> list[bytes]:
    """One caller's plaintexts, or SubjectErased naming its first erased item."""
    for index, plaintext in enumerate(plaintexts):
        if plaintext is None:
            raise SubjectErased(f"item {index}: {SubjectErased.default_message}")
    return list(plaintexts)  # type: ignore[arg-type]  # no None left


class DecryptBatches:
    """decrypt() with the strict semantics (erased subjects raise), sharing tolerant RPCs
    between concurrent callers."""

    def __init__(
        self,
        send: TolerantDecrypt,
        *,
        max_items: int = MAX_BATCH_ITEMS,
        max_bytes: int = MAX_BATCH_BYTES,
        max_in_flight: int = MAX_IN_FLIGHT,
        patience_seconds: float = PATIENCE_SECONDS,
    ) -> None:
        if max_in_flight < 1 or patience_seconds < 0:
            raise ValueError("at least one batch in flight, and a patience of zero or more")
        self._send = send
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._max_in_flight = max_in_flight
        self._patience = patience_seconds
        self._waiting: list[_Waiter] = []
        # Each batch out, with its callers and when it went (the loop's clock).
        self._in_flight: dict[asyncio.Task[None], tuple[list[_Waiter], float]] = {}
        self._kick_scheduled = False
        self._patience_timer: asyncio.TimerHandle | None = None
        self.batches_sent = 0  # RPCs this object made (tests and benchmarks read it)

    async def decrypt(self, items: Sequence[Item]) -> list[bytes]:
        if not items:
            return []
        own = tuple(items)
        size = _size(own)
        if len(own) > self._max_items or size > self._max_bytes:
            self.batches_sent += 1
            return self._checked(own, await self._send(own))
        loop = asyncio.get_running_loop()
        waiter = _Waiter(own, size, loop.create_future(), contextvars.copy_context())
        self._waiting.append(waiter)
        if not self._kick_scheduled:
            # On the next turn: callers of this same turn join the batch.
            self._kick_scheduled = True
            loop.call_soon(self._kick)
        return await waiter.future

    def _checked(self, items: Sequence[Item], plaintexts: Sequence[bytes | None]) -> list[bytes]:
        if len(plaintexts) != len(items):
            raise Unavailable("the crypto service answered a batch incompletely")
        return _own_answer(plaintexts)

    def _kick(self) -> None:
        """Sends what waits: at once when nothing is out; besides the batches out only once
        they have all been out longer than the patience (a timer comes back then)."""
        self._kick_scheduled = False
        loop = asyncio.get_running_loop()
        while self._waiting and len(self._in_flight) < self._max_in_flight:
            if self._in_flight:
                due = max(started for _, started in self._in_flight.values()) + self._patience
                if loop.time() < due:
                    if self._patience_timer is None:
                        self._patience_timer = loop.call_at(due, self._patience_over)
                    return
            batch = self._take()
            if not batch:
                continue
            task = asyncio.create_task(self._send_batch(batch), context=batch[0].context)
            self._in_flight[task] = (batch, loop.time())
            task.add_done_callback(self._batch_done)

    def _patience_over(self) -> None:
        self._patience_timer = None
        self._kick()

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        batch, _ = self._in_flight.pop(task, ([], 0.0))
        # Whatever ended the batch (cancelled before or while it ran, an error the code did
        # not foresee), nobody of it may be left waiting.
        if not task.cancelled() and task.exception() is not None:
            log.error("a decrypt batch failed unexpectedly", exc_info=task.exception())
        for waiter in batch:
            _fail(waiter, Unavailable("the crypto call did not complete"))
        self._kick()

    def _take(self) -> list[_Waiter]:
        """The next batch, in arrival order, within the bounds; callers who gave up dropped."""
        batch: list[_Waiter] = []
        items = size = 0
        while self._waiting:
            waiter = self._waiting[0]
            if waiter.future.done():  # cancelled while it waited
                self._waiting.pop(0)
                continue
            if batch and (
                items + len(waiter.items) > self._max_items or size + waiter.size > self._max_bytes
            ):
                break
            self._waiting.pop(0)
            batch.append(waiter)
            items += len(waiter.items)
            size += waiter.size
        return batch

    async def _send_batch(self, batch: list[_Waiter]) -> None:
        items = [item for waiter in batch for item in waiter.items]
        self.batches_sent += 1
        try:
            plaintexts = await self._send(items)
        except Unavailable as error:
            for waiter in batch:
                _fail(waiter, Unavailable(str(error)))
            return
        except PalisadeError as error:
            if len(batch) == 1:
                _fail(batch[0], error)
                return
            # The refusal names one caller's item: each caller is answered on its own, in
            # its own context.
            await asyncio.gather(
                *(
                    asyncio.create_task(self._alone(waiter), context=waiter.context)
                    for waiter in batch
                    if not waiter.future.done()
                )
            )
            return
        except Exception:
            # Not a refusal the client knows (a bug): logged, and a 503 for these callers.
            log.exception("a batched decrypt failed unexpectedly")
            for waiter in batch:
                _fail(waiter, Unavailable("the crypto call failed"))
            return
        if len(plaintexts) != len(items):  # a broken answer fails everyone, never shifts one
            for waiter in batch:
                _fail(waiter, Unavailable("the crypto service answered a batch incompletely"))
            return
        start = 0
        for waiter in batch:
            end = start + len(waiter.items)
            if not waiter.future.done():
                try:
                    waiter.future.set_result(_own_answer(plaintexts[start:end]))
                except SubjectErased as erased:
                    waiter.future.set_exception(erased)
            start = end

    async def _alone(self, waiter: _Waiter) -> None:
        self.batches_sent += 1
        try:
            answer = self._checked(waiter.items, await self._send(waiter.items))
        except asyncio.CancelledError:
            # The call was cancelled (the channel closed, or the batch is being stopped):
            # this caller gets a 503 rather than a wait without end.
            _fail(waiter, Unavailable("the crypto call was cancelled"))
            raise
        except Exception as error:
            _fail(waiter, error)
        else:
            if not waiter.future.done():
                waiter.future.set_result(answer)


def _fail(waiter: _Waiter, error: BaseException) -> None:
    if not waiter.future.done():
        waiter.future.set_exception(error)
