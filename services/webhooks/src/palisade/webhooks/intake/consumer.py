"""The intake: audit's StreamEvents read as service:webhooks, from the cursor kept here.

The stream is opened after the last cursor this service fanned out (stream_cursor), or, on the
very first start, from "now" (settings.stream_start; "0" replays everything audit still
holds). Events that arrive together are fanned out together, up to batch_size per
transaction (fanout.py), and the worker is rung after each commit. When the stream fails
(audit restarting, UNAVAILABLE, a network cut) or ends, the intake waits and opens it again
after the cursor in the database, not the last one it read: what it read but had not committed
is read again, and nothing is skipped. The wait doubles on consecutive failures, up to
MAX_RETRY_SECONDS, and starts over once an event has come through.

One intake per deployment is the intended shape; two (replicas) each queue every event, and
UNIQUE(endpoint_id, event_id) makes the second insert of each a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc

from palisade.common.clock import Clock
from palisade.common.grpc_client import ServiceIdentity
from palisade.webhooks.delivery.metrics import DeliveryMetrics
from palisade.webhooks.intake.fanout import fan_out, load_cursor
from palisade_api.audit.v1 import audit_pb2, audit_pb2_grpc

log = logging.getLogger("palisade.webhooks.intake")

STREAM_METHOD = (
    "/" + audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name + "/StreamEvents"
)
MAX_RETRY_SECONDS = 30.0
_END = object()  # the stream ended (the reader's last item)


class StreamIntake:
    def __init__(
        self,
        *,
        engine: Any,
        channel: grpc.aio.Channel,
        identity: ServiceIdentity,
        clock: Clock,
        metrics: DeliveryMetrics,
        start: str = "now",
        retry_seconds: float = 1.0,
        batch_size: int = 200,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._stub = audit_pb2_grpc.AuditServiceStub(channel)
        self._identity = identity
        self._clock = clock
        self._metrics = metrics
        self._start = "" if start == "now" else "0"
        self._retry = retry_seconds
        self._batch = batch_size
        self._on_queued = on_queued
        # Set once a stream has its starting position (its headers came): tests wait on it.
        self.connected = asyncio.Event()
        self.batches_committed = 0
        self.events_committed = 0
        self._progress = asyncio.Event()

    async def run(self) -> None:
        """Until cancelled: stream, fan out, and resume from the stored cursor on failure."""
        delay = self._retry
        while True:
            committed = self.batches_committed
            try:
                await self._stream_once()
                code = "ended"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name.lower()
                log.warning("audit stream failed (%s); resuming from the cursor", code)
            except Exception:
                code = "error"
                log.exception("webhook intake failed; resuming from the cursor")
            self.connected.clear()
            self._metrics.stream_restarts.labels(code).inc()
            if self.batches_committed > committed:
                delay = self._retry  # it worked for a while: start the backoff over
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)

    async def until_committed(self, events: int) -> None:
        """Returns once this intake has committed that many events (tests and tools)."""
        while self.events_committed < events:
            self._progress.clear()
            await self._progress.wait()

    async def _stream_once(self) -> None:
        cursor = await load_cursor(self._engine)
        call = self._stub.StreamEvents(
            audit_pb2.StreamEventsRequest(
                after=cursor if cursor is not None else self._start,
                # Never: see fanout.py on why a webhook carries no personal data.
                include_pii=False,
            ),
            metadata=self._identity.metadata("audit", STREAM_METHOD),
        )
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self._batch * 4)

        async def read() -> None:
            await call.initial_metadata()
            self.connected.set()
            async for item in call:
                await queue.put(item)
            await queue.put(_END)

        reader = asyncio.create_task(read(), name="palisade-webhooks-stream-reader")
        try:
            while True:
                first = await self._next(queue, reader)
                if first is _END:
                    return
                batch = [first]
                ended = False
                while len(batch) < self._batch and not queue.empty():
                    item = queue.get_nowait()
                    if item is _END:
                        ended = True
                        break
                    batch.append(item)
                await self._commit(batch)
                if ended:
                    return
        finally:
            call.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    @staticmethod
    async def _next(queue: asyncio.Queue[Any], reader: asyncio.Task[None]) -> Any:
        """The next item; the reader's failure is raised here once the queue is empty."""
        if not queue.empty():
            return queue.get_nowait()
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            getter.cancel()
            raise
        if getter.done():
            return getter.result()
        if reader.exception() is not None:
            getter.cancel()
            reader.result()  # raises the stream's error
        # The reader ended normally, so the end marker is in the queue.
        return await getter

    async def _commit(self, batch: list[audit_pb2.StreamedEvent]) -> None:
        queued = await fan_out(self._engine, batch, now=self._clock.now())
        self.batches_committed += 1
        self.events_committed += len(batch)
        self._progress.set()
        self._metrics.events_seen.inc(len(batch))
        if queued:
            self._metrics.events_queued.inc(queued)
            if self._on_queued is not None:
                self._on_queued()
