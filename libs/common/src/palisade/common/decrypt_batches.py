"""Concurrent Decrypt calls of one process travel to crypto together, as one batched call.

Each RPC costs both ends far more CPU than the AES-GCM work it carries (about 0.8 ms for a
unary round trip in Python gRPC, against microseconds per field), and the busiest reads
(`GET /v1/me`: two fields) each made one. Here a call that finds no batch in flight is sent at
once, on the next turn of the event loop; calls made while a batch is in flight wait for it to
return and then go together, in one Decrypt. Nothing waits on a timer: an idle service sends
every call alone and as soon as it is made, and the busier crypto is, the larger the batches
(as a database's group commit does). One batch is in flight at a time per client.

What a caller gets is exactly what its own call would have given:
- its own plaintexts, split off by position (the items of each caller are contiguous, in
  order);
- a refusal of the batch that names an item (tampered data, an erased subject, a bad
  argument) is not shared out: every caller of that batch is asked again on its own, so each
  gets its own answer, and the item numbers in errors count its own items;
- a crypto outage (Unavailable) is every caller's answer, each with an exception of its own;
- a caller that is cancelled while it waits is left out of the batch if it has not gone yet,
  and its share of the answer is dropped if it has.

Plaintexts are handed to their caller and kept nowhere: a batch holds them only until it has
split them out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from palisade.common.errors import PalisadeError, Unavailable

log = logging.getLogger("palisade.common.decrypt_batches")

Item = tuple[bytes, bytes]
Decrypt = Callable[[Sequence[Item]], Awaitable[list[bytes]]]

# A batch holds at most this many items and bytes (the crypto service's own batch limits are
# larger): a huge batch would delay its callers behind one another's work. A call larger than
# this goes alone.
MAX_BATCH_ITEMS = 256
MAX_BATCH_BYTES = 1024 * 1024


@dataclass
class _Waiter:
    items: Sequence[Item]
    size: int
    future: asyncio.Future[list[bytes]] = field(repr=False)


def _size(items: Sequence[Item]) -> int:
    return sum(len(envelope) + len(aad) for envelope, aad in items)


class DecryptBatches:
    """decrypt() with the semantics of `send`, sharing RPCs between concurrent callers."""

    def __init__(
        self,
        send: Decrypt,
        *,
        max_items: int = MAX_BATCH_ITEMS,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self._send = send
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._waiting: list[_Waiter] = []
        self._sender: asyncio.Task[None] | None = None
        self.batches_sent = 0  # RPCs this object made (tests and benchmarks read it)

    async def decrypt(self, items: Sequence[Item]) -> list[bytes]:
        if not items:
            return []
        size = _size(items)
        if len(items) > self._max_items or size > self._max_bytes:
            self.batches_sent += 1
            return await self._send(items)
        waiter = _Waiter(items, size, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        if self._sender is None:
            # In the first caller's context: a lone call (the usual case on a quiet service)
            # carries its own request id to crypto's logs; a batch carries its first caller's.
            self._sender = asyncio.create_task(self._send_all())
        return await waiter.future

    async def _send_all(self) -> None:
        try:
            while self._waiting:
                batch = self._take()
                if batch:
                    await self._send_batch(batch)
        finally:
            self._sender = None
            # Cancelled (the service is stopping): nobody may be left waiting for good.
            for waiter in self._waiting:
                if not waiter.future.done():
                    waiter.future.set_exception(Unavailable("the crypto call was cancelled"))
            self._waiting = []

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
            # The refusal names one caller's item: each caller is answered on its own.
            await asyncio.gather(*(self._alone(waiter) for waiter in batch))
            return
        except Exception:
            # Not a refusal the client knows (a bug): logged, and a 503 for these callers.
            log.exception("a batched decrypt failed unexpectedly")
            for waiter in batch:
                _fail(waiter, Unavailable("the crypto call failed"))
            return
        except BaseException:  # cancelled: the service is stopping
            for waiter in batch:
                _fail(waiter, Unavailable("the crypto call was cancelled"))
            raise
        if len(plaintexts) != len(items):  # a broken answer fails everyone, never shifts one
            for waiter in batch:
                _fail(waiter, Unavailable("the crypto service answered a batch incompletely"))
            return
        start = 0
        for waiter in batch:
            end = start + len(waiter.items)
            if not waiter.future.done():
                waiter.future.set_result(plaintexts[start:end])
            start = end

    async def _alone(self, waiter: _Waiter) -> None:
        if waiter.future.done():
            return
        self.batches_sent += 1
        try:
            plaintexts = await self._send(waiter.items)
        except Exception as error:
            _fail(waiter, error)
        else:
            if not waiter.future.done():
                waiter.future.set_result(plaintexts)


def _fail(waiter: _Waiter, error: BaseException) -> None:
    if not waiter.future.done():
        waiter.future.set_exception(error)
