"""Composition root: builds the apikeys service from settings and runs it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.apikeys.access import RecentAuth
from palisade.apikeys.config import SERVICE_NAME, ApiKeysSettings
from palisade.apikeys.erasure import zero_freed_space
from palisade.apikeys.expiry import ExpiryRecorder
from palisade.apikeys.history_seal import HistorySeal
from palisade.apikeys.lifecycle import KeyLifecycle
from palisade.apikeys.model import RateLimit
from palisade.apikeys.notices import AuthNoticeSender, NoticeOutbox, NoticeRelay, NoticeSender
from palisade.apikeys.queries import KeyQueries
from palisade.apikeys.revocations import (
    CHANNEL,
    RELAY_LOCK_KEY,
    SEQUENCE_KEY,
    KeyRevocationNotice,
)
from palisade.apikeys.revoking import KeyRevoker
from palisade.apikeys.servicer import ApiKeysServicer
from palisade.apikeys.store import ApiKeyStore
from palisade.apikeys.tables import MIGRATIONS_PACKAGE, outbox, revocation_outbox
from palisade.common.audit_forwarder import forwarding_to_audit
from palisade.common.caller import AssertionSigner, AssertionVerifier
from palisade.common.clock import Clock, SystemClock
from palisade.common.crypto_client import CryptoClient
from palisade.common.db import create_engine, resolve_database_url
from palisade.common.direct_reads import DirectReads
from palisade.common.edge_keys import open_service_keys
from palisade.common.edges import EDGES, Edge
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade.common.grpc_server import RunningServer, run_server
from palisade.common.migrations import upgrade
from palisade.common.revocation_feed import (
    LocalRevocationFeed,
    RedisRevocationFeed,
    RevocationFeed,
)
from palisade.common.revocation_outbox import RevocationOutbox, RevocationRelay
from palisade_api.apikeys.v1 import apikeys_pb2, apikeys_pb2_grpc

log = logging.getLogger("palisade.apikeys.server")


@dataclass
class ApiKeysServer:
    running: RunningServer
    lifecycle: KeyLifecycle
    queries: KeyQueries
    revocations: RevocationFeed
    revocation_relay: RevocationRelay
    notice_relay: NoticeRelay
    expiry: ExpiryRecorder
    registry: CollectorRegistry
    engine: AsyncEngine  # for tests that look at the tables


def default_rate_limit(settings: ApiKeysSettings) -> RateLimit:
    return RateLimit(settings.default_rate_limit_rpm, settings.default_rate_limit_burst)


def _validate_revocation(payload: dict[str, Any]) -> object:
    return KeyRevocationNotice.from_payload(payload)


@asynccontextmanager
async def serve_apikeys(
    settings: ApiKeysSettings,
    *,
    clock: Clock | None = None,
    edges: Sequence[Edge] = EDGES,
    notice_sender: NoticeSender | None = None,
    relay_notices: bool = True,
) -> AsyncIterator[ApiKeysServer]:
    """Starts the apikeys service; stops it gracefully on exit (edges: tests may add some;
    notice_sender: default, auth's SendNotice at settings.auth_target; relay_notices=False:
    tests that drive the notice relay by hand)."""
    clock = clock or SystemClock()
    keys = open_service_keys(settings, SERVICE_NAME, now=clock.timestamp(), edges=edges)
    async with AsyncExitStack() as stack:
        database_url = resolve_database_url(
            settings.database_url, data_dir=settings.data_dir, service=SERVICE_NAME
        )
        pool_size, max_overflow = settings.database_pool_size, settings.database_max_overflow
        engine = create_engine(database_url, pool_size=pool_size, max_overflow=max_overflow)
        stack.push_async_callback(engine.dispose)
        zero_freed_space(engine)  # SQLite: an erased client leaves no bytes in the file
        if settings.migrate_on_start:
            await upgrade(engine, MIGRATIONS_PACKAGE)

        feed: RevocationFeed
        if settings.redis_url:
            redis = Redis.from_url(settings.redis_url)
            stack.push_async_callback(redis.aclose)
            feed = RedisRevocationFeed(redis, channel=CHANNEL, sequence_key=SEQUENCE_KEY)
        else:
            feed = LocalRevocationFeed()

        signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=settings.assertion_ttl_seconds)
        signer.require_edge("crypto")  # fail at start, not on the first request
        identity = ServiceIdentity(name=SERVICE_NAME, signer=signer)
        crypto_channel = insecure_channel(settings.crypto_target)
        stack.push_async_callback(crypto_channel.close, None)
        crypto = CryptoClient(channel=crypto_channel, identity=identity)
        if notice_sender is None:
            signer.require_edge("auth")
            auth_channel = insecure_channel(settings.auth_target)
            stack.push_async_callback(auth_channel.close, None)
            notice_sender = AuthNoticeSender(channel=auth_channel, identity=identity)

        reads = DirectReads.open(engine, pool_size=pool_size + max_overflow)
        stack.push_async_callback(reads.close)
        store = ApiKeyStore(engine=engine, reads=reads)
        revocation_outbox_ = RevocationOutbox(table=revocation_outbox, clock=clock)
        revocation_relay = RevocationRelay(
            engine=engine,
            feed=feed,
            outbox=revocation_outbox_,
            lock_key=RELAY_LOCK_KEY,
            heartbeat_seconds=settings.revocation_heartbeat_seconds,
            validate=_validate_revocation,
        )
        notices = NoticeOutbox(clock=clock)
        seal = HistorySeal(crypto=crypto)
        revoker = KeyRevoker(
            store=store, revocations=revocation_outbox_, notices=notices, seal=seal, clock=clock
        )
        notice_relay = NoticeRelay(
            engine=engine,
            sender=notice_sender,
            outbox=notices,
            clock=clock,
            poll_seconds=settings.notice_poll_seconds,
            max_attempts=settings.notice_max_attempts,
        )
        lifecycle = KeyLifecycle(
            store=store,
            crypto=crypto,
            revocations=revocation_outbox_,
            revoker=revoker,
            notices=notices,
            seal=seal,
            recent_auth=RecentAuth(
                store=store, clock=clock, max_age_seconds=settings.recent_auth_seconds
            ),
            clock=clock,
            default_overlap_seconds=settings.default_overlap_seconds,
        )
        queries = KeyQueries(
            store=store,
            seal=seal,
            clock=clock,
            default_rate_limit=default_rate_limit(settings),
            max_usages=settings.max_usage_batch,
        )
        expiry = ExpiryRecorder(
            store=store, clock=clock, interval_seconds=settings.expiry_record_seconds
        )
        registry = CollectorRegistry()

        def add_servicers(server: grpc.aio.Server) -> list[str]:
            apikeys_pb2_grpc.add_ApiKeysServiceServicer_to_server(
                ApiKeysServicer(
                    lifecycle=lifecycle,
                    queries=queries,
                    revocations=feed,
                    clock=clock,
                    max_key_lifetime=timedelta(days=settings.max_key_lifetime_days),
                ),
                server,
            )
            return [apikeys_pb2.DESCRIPTOR.services_by_name["ApiKeysService"].full_name]

        verifier = AssertionVerifier(
            keys=keys, clock=clock, replay_cache_entries=settings.replay_cache_entries
        )
        async with (
            run_server(
                name=SERVICE_NAME,
                settings=settings,
                verifier=verifier,
                registry=registry,
                add_servicers=add_servicers,
            ) as running,
            revocation_relay.running(),
            notice_relay.running() if relay_notices else nullcontext(),
            expiry.running(),
            forwarding_to_audit(
                target=settings.audit_target,
                identity=identity,
                engine=engine,
                table=outbox,
                clock=clock,
                registry=registry,
                batch_size=settings.audit_batch_size,
                poll_seconds=settings.audit_poll_seconds,
            ),
        ):
            yield ApiKeysServer(
                running,
                lifecycle,
                queries,
                feed,
                revocation_relay,
                notice_relay,
                expiry,
                registry,
                engine,
            )
