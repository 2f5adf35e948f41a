"""Composition root: builds the webhooks service (WebhooksService, the delivery worker and the
stream intake) and runs it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.common.audit_forwarder import forwarding_to_audit
from palisade.common.caller import AssertionSigner, AssertionVerifier
from palisade.common.clock import Clock, SystemClock
from palisade.common.crypto_client import CryptoClient
from palisade.common.db import create_engine, resolve_database_url
from palisade.common.edge_keys import KeySource, open_service_keys
from palisade.common.edges import EDGES, Edge
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade.common.grpc_server import RunningServer, run_server
from palisade.common.migrations import upgrade
from palisade.common.page_tokens import PageTokens, load_page_token_key
from palisade.webhooks.config import SERVICE_NAME, WebhooksSettings
from palisade.webhooks.delivery.runtime import running_delivery
from palisade.webhooks.egress.addresses import AddressPolicy
from palisade.webhooks.egress.client import Connector
from palisade.webhooks.egress.resolver import Resolver, SystemResolver
from palisade.webhooks.errors import InvalidPageToken
from palisade.webhooks.service import EndpointService
from palisade.webhooks.servicer import WebhooksServicer
from palisade.webhooks.store import WebhookStore
from palisade.webhooks.tables import MIGRATIONS_PACKAGE, outbox_events
from palisade_api.webhooks.v1 import webhooks_pb2, webhooks_pb2_grpc

log = logging.getLogger("palisade.webhooks.server")


@dataclass
class WebhooksServer:
    running: RunningServer
    service: EndpointService
    registry: CollectorRegistry
    engine: AsyncEngine  # for tests that look at the tables
    crypto: CryptoClient


@dataclass(frozen=True)
class Background:
    """What the delivery worker and the intake are built from (see background_tasks)."""

    settings: WebhooksSettings
    engine: AsyncEngine
    service: EndpointService  # delivery_target(), disable(), the store
    identity: ServiceIdentity  # signs as webhooks: to audit (StreamEvents) and auth (notices)
    clock: Clock
    registry: CollectorRegistry
    policy: AddressPolicy
    resolver: Resolver
    connector: Connector | None  # None: real sockets (tests inject a loopback-only one)


@asynccontextmanager
async def background_tasks(background: Background) -> AsyncIterator[None]:
    """Runs the delivery worker, the stream intake, the owners' notice sweep and the queue
    gauges (palisade.webhooks.delivery.runtime) until the block exits."""
    async with running_delivery(
        settings=background.settings,
        engine=background.engine,
        targets=background.service,
        identity=background.identity,
        clock=background.clock,
        registry=background.registry,
        policy=background.policy,
        resolver=background.resolver,
        connector=background.connector,
    ):
        yield


@asynccontextmanager
async def crypto_client(
    settings: WebhooksSettings, clock: Clock, keys: KeySource
) -> AsyncIterator[tuple[CryptoClient, ServiceIdentity]]:
    """A client of crypto signing as webhooks (the server and the operator commands); the
    identity also signs for audit and auth."""
    signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=settings.assertion_ttl_seconds)
    for audience in ("crypto", "audit", "auth"):
        signer.require_edge(audience)  # fail at start, not on the first request
    identity = ServiceIdentity(name=SERVICE_NAME, signer=signer)
    channel = insecure_channel(settings.crypto_target)
    try:
        yield CryptoClient(channel=channel, identity=identity), identity
    finally:
        await channel.close(None)


@asynccontextmanager
async def serve_webhooks(
    settings: WebhooksSettings,
    *,
    clock: Clock | None = None,
    edges: Sequence[Edge] = EDGES,
    resolver: Resolver | None = None,
    connector: Connector | None = None,
    run_background: bool | None = None,
) -> AsyncIterator[WebhooksServer]:
    """Starts the webhooks service; stops it gracefully on exit. resolver/connector: tests
    inject their own so no name is ever resolved and nothing leaves loopback; run_background
    (default settings.worker_enabled): False for tests that drive the worker themselves."""
    clock = clock or SystemClock()
    keys = open_service_keys(settings, SERVICE_NAME, now=clock.timestamp(), edges=edges)
    page_tokens = PageTokens(
        load_page_token_key(
            settings.resolved_page_token_key_file(), create=settings.create_missing_keys
        ),
        invalid=InvalidPageToken,
    )
    policy = AddressPolicy(allowed_networks=settings.allowed_networks)
    async with AsyncExitStack() as stack:
        if resolver is None:
            # Two pools: CreateWebhook calls naming slow hosts must not hold the threads the
            # deliveries resolve with, nor deliveries those of creation's checks.
            checks, deliveries = SystemResolver(), SystemResolver()
            stack.callback(checks.close)
            stack.callback(deliveries.close)
            creation_resolver: Resolver = checks
            delivery_resolver: Resolver = deliveries
        else:
            creation_resolver = delivery_resolver = resolver
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

        crypto, identity = await stack.enter_async_context(crypto_client(settings, clock, keys))
        registry = CollectorRegistry()
        service = EndpointService(
            store=WebhookStore(engine=engine),
            crypto=crypto,
            clock=clock,
            policy=policy,
            resolver=creation_resolver,
            page_tokens=page_tokens,
            url_resolve_seconds=settings.url_resolve_seconds,
        )

        def add_servicers(server: grpc.aio.Server) -> list[str]:
            webhooks_pb2_grpc.add_WebhooksServiceServicer_to_server(
                WebhooksServicer(service=service), server
            )
            return [webhooks_pb2.DESCRIPTOR.services_by_name["WebhooksService"].full_name]

        verifier = AssertionVerifier(
            keys=keys, clock=clock, replay_cache_entries=settings.replay_cache_entries
        )
        background = Background(
            settings=settings,
            engine=engine,
            service=service,
            identity=identity,
            clock=clock,
            registry=registry,
            policy=policy,
            resolver=delivery_resolver,
            connector=connector,
        )
        run = settings.worker_enabled if run_background is None else run_background
        async with (
            run_server(
                name=SERVICE_NAME,
                settings=settings,
                verifier=verifier,
                registry=registry,
                add_servicers=add_servicers,
            ) as running,
            forwarding_to_audit(
                target=settings.audit_target,
                identity=identity,
                engine=engine,
                table=outbox_events,
                clock=clock,
                registry=registry,
                batch_size=settings.audit_batch_size,
                poll_seconds=settings.audit_poll_seconds,
            ),
            background_tasks(background) if run else nullcontext(),
        ):
            yield WebhooksServer(running, service, registry, engine, crypto)
