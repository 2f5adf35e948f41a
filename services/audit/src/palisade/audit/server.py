"""Composition root: builds the audit service from settings and runs it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.audit.chain.walk import signature_checks
from palisade.audit.checkpoints.service import Checkpointer
from palisade.audit.checkpoints.signing_keys import SigningKeyHolder, create_signing_keys
from palisade.audit.checkpoints.witness import WitnessFile
from palisade.audit.config import SERVICE_NAME, AuditSettings
from palisade.audit.errors import InvalidPageToken
from palisade.audit.ingest.directory import (
    AuthWorkspaceDirectory,
    CachedWorkspaceDirectory,
    WorkspaceDirectory,
)
from palisade.audit.ingest.service import Ingestor
from palisade.audit.metrics import AuditMetrics
from palisade.audit.model import CheckpointRecord
from palisade.audit.pii import PiiVault
from palisade.audit.queries.service import EventQueries
from palisade.audit.queries.stream import EventStream, StreamNotifier
from palisade.audit.retention import Purger
from palisade.audit.servicer import AuditServicer
from palisade.audit.store import AuditStore
from palisade.audit.tables import MIGRATIONS_PACKAGE
from palisade.common.caller import AssertionSigner, AssertionVerifier
from palisade.common.clock import Clock, SystemClock
from palisade.common.crypto_client import CryptoClient
from palisade.common.db import create_engine, resolve_database_url
from palisade.common.edge_keys import open_service_keys
from palisade.common.edges import EDGES, Edge
from palisade.common.geo import Locator, MaxMindLocator, NullLocator
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade.common.grpc_server import RunningServer, run_server
from palisade.common.migrations import upgrade
from palisade.common.page_tokens import PageTokens, load_page_token_key
from palisade_api.audit.v1 import audit_pb2, audit_pb2_grpc

log = logging.getLogger("palisade.audit.server")


@dataclass
class AuditServer:
    running: RunningServer
    ingestor: Ingestor
    checkpoints: Checkpointer
    purger: Purger
    stream: EventStream
    store: AuditStore
    signing_keys: SigningKeyHolder
    registry: CollectorRegistry
    engine: AsyncEngine  # for tests that look at (or tamper with) the tables


@asynccontextmanager
async def serve_audit(
    settings: AuditSettings,
    *,
    clock: Clock | None = None,
    edges: Sequence[Edge] = EDGES,
    directory: WorkspaceDirectory | None = None,
    background: bool = True,
) -> AsyncIterator[AuditServer]:
    """Starts the audit service; stops it gracefully on exit (edges: tests may add some;
    directory: default, auth's DirectoryService at settings.auth_target; background=False:
    tests that run the periodic checkpoint and purge passes by hand)."""
    clock = clock or SystemClock()
    keys = open_service_keys(settings, SERVICE_NAME, now=clock.timestamp(), edges=edges)
    async with AsyncExitStack() as stack:
        database_url = resolve_database_url(
            settings.database_url, data_dir=settings.data_dir, service=SERVICE_NAME
        )
        engine = create_engine(
            database_url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
        stack.push_async_callback(engine.dispose)
        if settings.migrate_on_start:
            await upgrade(engine, MIGRATIONS_PACKAGE)

        signing_key_file = settings.resolved_signing_key_file()
        if settings.create_missing_keys and create_signing_keys(signing_key_file, clock.now()):
            log.info(
                "created the checkpoint signing key file", extra={"path": str(signing_key_file)}
            )
        signing_keys = SigningKeyHolder(signing_key_file)  # fails at start if unusable
        tokens = PageTokens(
            load_page_token_key(
                settings.resolved_page_token_key_file(), create=settings.create_missing_keys
            ),
            invalid=InvalidPageToken,
        )

        signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=settings.assertion_ttl_seconds)
        signer.require_edge("crypto")  # fail at start, not on the first request
        identity = ServiceIdentity(name=SERVICE_NAME, signer=signer)
        crypto_channel = insecure_channel(settings.crypto_target)
        stack.push_async_callback(crypto_channel.close, None)
        crypto = CryptoClient(channel=crypto_channel, identity=identity)
        if directory is None:
            signer.require_edge("auth")
            auth_channel = insecure_channel(settings.auth_target)
            stack.push_async_callback(auth_channel.close, None)
            directory = AuthWorkspaceDirectory(channel=auth_channel, identity=identity)
        cached = CachedWorkspaceDirectory(directory, max_entries=settings.directory_cache_entries)

        locator: Locator = NullLocator()
        if settings.geoip_database is not None:
            maxmind = MaxMindLocator(settings.geoip_database)
            stack.callback(maxmind.close)
            locator = maxmind

        registry = CollectorRegistry()
        metrics = AuditMetrics(registry)
        store = AuditStore(engine=engine)
        vault = PiiVault(crypto=crypto, locator=locator, batch_items=settings.crypto_batch_items)
        notifier = StreamNotifier()
        ingestor = Ingestor(
            store=store,
            directory=cached,
            vault=vault,
            clock=clock,
            metrics=metrics,
            on_stored=notifier.notify,
        )
        queries = EventQueries(store=store, vault=vault, tokens=tokens)
        stream = EventStream(
            store=store,
            vault=vault,
            notifier=notifier,
            batch_events=settings.stream_batch_events,
            poll_seconds=settings.stream_poll_seconds,
        )

        def witnessed_ok(record: CheckpointRecord) -> bool:
            # With the keys in use now (a rotation keeps the earlier public halves).
            return signature_checks(signing_keys.current.verify).checkpoint(record)

        checkpoints = Checkpointer(
            store=store,
            keys=signing_keys,
            clock=clock,
            metrics=metrics,
            interval_seconds=settings.checkpoint_interval_seconds,
            witness=(
                WitnessFile(
                    settings.resolved_witness_file(), metrics=metrics, signature_ok=witnessed_ok
                )
                if settings.record_witness
                else None
            ),
        )
        purger = Purger(
            store=store,
            checkpoints=checkpoints,
            clock=clock,
            metrics=metrics,
            retention_days=settings.retention_days,
            interval_seconds=settings.purge_interval_seconds,
        )

        def add_servicers(server: grpc.aio.Server) -> list[str]:
            audit_pb2_grpc.add_AuditServiceServicer_to_server(
                AuditServicer(
                    ingestor=ingestor,
                    queries=queries,
                    stream=stream,
                    checkpoints=checkpoints,
                    signing_keys=signing_keys,
                    metrics=metrics,
                    clock=clock,
                    edges=edges,
                    max_batch_events=settings.max_batch_events,
                    max_clock_skew_seconds=settings.max_clock_skew_seconds,
                    stream_subscribers=settings.stream_subscribers,
                ),
                server,
            )
            return [audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name]

        verifier = AssertionVerifier(
            keys=keys, clock=clock, replay_cache_entries=settings.replay_cache_entries
        )
        running = await stack.enter_async_context(
            run_server(
                name=SERVICE_NAME,
                settings=settings,
                verifier=verifier,
                registry=registry,
                add_servicers=add_servicers,
            )
        )
        if background:
            await stack.enter_async_context(checkpoints.running())
            if settings.retention_days:
                await stack.enter_async_context(purger.running())
        yield AuditServer(
            running,
            ingestor,
            checkpoints,
            purger,
            stream,
            store,
            signing_keys,
            registry,
            engine,
        )
