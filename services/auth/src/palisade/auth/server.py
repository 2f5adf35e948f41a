"""Composition root: builds the auth service from settings and runs it."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.auth.account_servicer import SERVICE_NAME as ACCOUNT_SERVICE
from palisade.auth.account_servicer import AccountServicer
from palisade.auth.accounts.deletion import AccountDeletion
from palisade.auth.accounts.email_change import EmailChanges
from palisade.auth.accounts.key_revocation_relay import (
    ApiKeysRevoker,
    KeyRevocationRelay,
    KeyRevoker,
    apikeys_channel,
)
from palisade.auth.accounts.not_me import NotMeReports
from palisade.auth.accounts.restrictions import INVITE_MEMBERS, UnverifiedRestrictions
from palisade.auth.accounts.service import Accounts
from palisade.auth.accounts.subject_migration import SubjectMigration, migrate_until_done
from palisade.auth.accounts.subject_shreds import ShredRelay
from palisade.auth.accounts.verification import EmailLinkPolicy, EmailVerifications
from palisade.auth.config import SERVICE_NAME, AuthSettings
from palisade.auth.directory_servicer import SERVICE_NAME as DIRECTORY_SERVICE
from palisade.auth.directory_servicer import DirectoryServicer
from palisade.auth.links.magic import MagicLinkPolicy, MagicLinks
from palisade.auth.local_keys import load_local_keys
from palisade.auth.mail import MailQueue, MailRelay, build_mailer
from palisade.auth.mail.account_notices import AccountNotices
from palisade.auth.mail.notices import SecurityNotices
from palisade.auth.mfa.login import MfaLogins
from palisade.auth.mfa.second_factor import MfaLimits, SecondFactors
from palisade.auth.passkeys.service import Passkeys
from palisade.auth.password_reset_servicer import PasswordResetServicer
from palisade.auth.passwords.hashing import PasswordHasher
from palisade.auth.passwords.reset import PasswordResetPolicy, PasswordResets
from palisade.auth.servicer import AuthServicer
from palisade.auth.sessions.geo import Locator, MaxMindLocator, NullLocator
from palisade.auth.sessions.manager import SessionManager, SessionPolicy
from palisade.auth.sessions.new_network_alerts import NewNetworkAlertRelay, NotMePolicy
from palisade.auth.sessions.new_networks import AlertCap
from palisade.auth.sessions.recent_auth import RecentAuth
from palisade.auth.sessions.revocation import (
    LocalRevocationFeed,
    RedisRevocationFeed,
    RevocationFeed,
)
from palisade.auth.sessions.revocation_outbox import RevocationOutbox, RevocationRelay
from palisade.auth.store import MIGRATIONS_PACKAGE, AuthStore, outbox
from palisade.auth.team.directory import TeamDirectory
from palisade.auth.team.invitation_expiry import ExpiredInvitationSweeper
from palisade.auth.team.invitations import Invitations
from palisade.auth.team.joining import Joining
from palisade.auth.team.membership import TeamMembership
from palisade.auth.team.workspaces import Workspaces
from palisade.auth.team_servicer import TeamServicer
from palisade.auth.throttle import (
    CounterLimiter,
    FailureCounts,
    LoginThrottle,
    MemoryFailureCounts,
    RedisFailureCounts,
    ThrottleLimits,
)
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
from palisade.common.tasks import running_in_background
from palisade_api.auth.v1 import (
    account_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    directory_pb2_grpc,
    password_reset_pb2,
    password_reset_pb2_grpc,
    team_pb2,
    team_pb2_grpc,
)

log = logging.getLogger("palisade.auth.server")


@dataclass
class AuthServer:
    running: RunningServer
    accounts: Accounts
    sessions: SessionManager
    revocations: RevocationFeed
    registry: CollectorRegistry
    mail_relay: MailRelay
    engine: AsyncEngine  # for tests that count round trips
    reads: DirectReads
    key_revocation_relay: KeyRevocationRelay | None = None
    shred_relay: ShredRelay | None = None
    subject_migration: SubjectMigration | None = None


def session_policy(settings: AuthSettings) -> SessionPolicy:
    return SessionPolicy(
        access_seconds=settings.access_token_seconds,
        refresh_seconds=settings.refresh_token_seconds,
        remember_me_refresh_seconds=settings.remember_me_refresh_token_seconds,
        grace_seconds=settings.refresh_grace_seconds,
        absolute_seconds=settings.session_absolute_seconds,
        remember_me_absolute_seconds=settings.remember_me_session_absolute_seconds,
    )


def magic_link_policy(settings: AuthSettings) -> MagicLinkPolicy:
    return MagicLinkPolicy(
        public_base_url=settings.public_base_url,
        token_seconds=settings.magic_link_seconds,
        email_requests=settings.magic_link_email_requests,
        ip_requests=settings.magic_link_ip_requests,
        email_ip_requests=settings.magic_link_email_ip_requests,
        window_seconds=settings.magic_link_window_seconds,
        verifier_failures=settings.magic_link_verifier_failures,
    )


def password_reset_policy(settings: AuthSettings) -> PasswordResetPolicy:
    return PasswordResetPolicy(
        public_base_url=settings.public_base_url,
        token_seconds=settings.password_reset_seconds,
        email_ip_requests=settings.password_reset_email_ip_requests,
        email_requests=settings.password_reset_email_requests,
        ip_requests=settings.password_reset_ip_requests,
        window_seconds=settings.password_reset_window_seconds,
    )


def email_link_policy(settings: AuthSettings) -> EmailLinkPolicy:
    return EmailLinkPolicy(
        public_base_url=settings.public_base_url,
        verification_seconds=settings.email_verification_seconds,
        change_seconds=settings.email_change_seconds,
        resends=settings.email_verification_resends,
        change_requests=settings.email_change_requests,
        window_seconds=settings.email_link_window_seconds,
    )


def throttle_limits(settings: AuthSettings) -> ThrottleLimits:
    return ThrottleLimits(
        ip_failures=settings.throttle_ip_failures,
        account_ip_failures=settings.throttle_account_ip_failures,
        account_failures=settings.throttle_account_failures,
        window_seconds=settings.throttle_window_seconds,
        account_window_seconds=settings.throttle_account_window_seconds,
    )


@asynccontextmanager
async def serve_auth(
    settings: AuthSettings,
    *,
    clock: Clock | None = None,
    edges: Sequence[Edge] = EDGES,
    key_revoker: KeyRevoker | None = None,
) -> AsyncIterator[AuthServer]:
    """Starts the auth service; stops it gracefully on exit (edges: tests may add some;
    key_revoker: default, apikeys' RevokeKeysOfUser at settings.apikeys_target)."""
    clock = clock or SystemClock()
    keys = open_service_keys(settings, SERVICE_NAME, now=clock.timestamp(), edges=edges)
    local_keys = load_local_keys(
        settings.resolved_local_keys_file(), create_if_missing=settings.create_missing_keys
    )
    async with AsyncExitStack() as stack:
        database_url = resolve_database_url(
            settings.database_url, data_dir=settings.data_dir, service=SERVICE_NAME
        )
        pool_size, max_overflow = settings.database_pool_size, settings.database_max_overflow
        engine = create_engine(database_url, pool_size=pool_size, max_overflow=max_overflow)
        stack.push_async_callback(engine.dispose)

        if settings.migrate_on_start:
            await upgrade(engine, MIGRATIONS_PACKAGE)

        counts: FailureCounts
        revocations: RevocationFeed
        if settings.redis_url:
            redis = Redis.from_url(settings.redis_url)
            stack.push_async_callback(redis.aclose)
            counts, revocations = RedisFailureCounts(redis), RedisRevocationFeed(redis)
        else:
            counts, revocations = MemoryFailureCounts(), LocalRevocationFeed()

        channel = insecure_channel(settings.crypto_target)
        stack.push_async_callback(channel.close, None)
        signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=settings.assertion_ttl_seconds)
        signer.require_edge("crypto")  # fail at start, not on the first request
        crypto = CryptoClient(
            channel=channel,
            identity=ServiceIdentity(name=SERVICE_NAME, signer=signer),
            # GET /v1/me and the other hot reads decrypt two or three fields each.
            batch_decrypts=True,
        )
        hasher = PasswordHasher(
            memory_kib=settings.argon2_memory_kib,
            time_cost=settings.argon2_time_cost,
            parallelism=settings.argon2_parallelism,
            threads=settings.hashing_threads or os.cpu_count() or 1,
        )
        stack.callback(hasher.close)
        reads = DirectReads.open(engine, pool_size=pool_size + max_overflow)
        stack.push_async_callback(reads.close)
        store = AuthStore(engine=engine, reads=reads)
        locator: Locator = NullLocator()
        if settings.geoip_database:
            maxmind = MaxMindLocator(settings.geoip_database)
            stack.callback(maxmind.close)
            locator = maxmind
        mail_queue = MailQueue(crypto=crypto, clock=clock, from_address=settings.mail_from)
        account_notices = AccountNotices(
            store=store, crypto=crypto, mail=mail_queue, locator=locator, clock=clock
        )
        revocation_outbox = RevocationOutbox(clock=clock)
        revocation_relay = RevocationRelay(
            engine=engine,
            feed=revocations,
            outbox=revocation_outbox,
            heartbeat_seconds=settings.revocation_heartbeat_seconds,
        )
        sessions = SessionManager(
            store=store,
            crypto=crypto,
            revocations=revocation_outbox,
            policy=session_policy(settings),
            clock=clock,
            local_keys=local_keys,
            restrictions=UnverifiedRestrictions.from_setting(settings.unverified_restrictions),
            alert_cap=AlertCap(per_window=settings.new_network_alerts_per_day),
        )
        throttle = LoginThrottle(counts=counts, limits=throttle_limits(settings), clock=clock)
        limiter = CounterLimiter(counts=counts, clock=clock)
        factors = SecondFactors(
            store=store,
            crypto=crypto,
            clock=clock,
            limiter=limiter,
            limits=MfaLimits(settings.mfa_failures, settings.mfa_window_seconds),
            issuer=settings.totp_issuer,
            notices=account_notices,
        )
        mfa = MfaLogins(
            store=store,
            sessions=sessions,
            factors=factors,
            clock=clock,
            token_seconds=settings.mfa_token_seconds,
        )
        email_links = email_link_policy(settings)
        verifications = EmailVerifications(
            store=store,
            crypto=crypto,
            sessions=sessions,
            mail=mail_queue,
            limiter=limiter,
            policy=email_links,
            clock=clock,
        )
        accounts = Accounts(
            store=store,
            crypto=crypto,
            hasher=hasher,
            sessions=sessions,
            throttle=throttle,
            local_keys=local_keys,
            mfa=mfa,
            mail=mail_queue,
            notices=account_notices,
            public_base_url=settings.public_base_url,
            clock=clock,
            verifications=verifications,
        )
        mail_relay = MailRelay(
            engine=engine,
            crypto=crypto,
            mailer=build_mailer(settings),
            clock=clock,
            queue=mail_queue,
            poll_seconds=settings.mail_poll_seconds,
            max_attempts=settings.mail_max_attempts,
        )
        magic_links = MagicLinks(
            store=store,
            crypto=crypto,
            sessions=sessions,
            mfa=mfa,
            mail=mail_queue,
            limiter=limiter,
            throttle=throttle,
            local_keys=local_keys,
            policy=magic_link_policy(settings),
            clock=clock,
        )
        passkeys = Passkeys(
            store=store,
            crypto=crypto,
            sessions=sessions,
            local_keys=local_keys,
            clock=clock,
            rp_id=settings.passkey_rp_id,
            rp_name=settings.passkey_rp_name,
            origins=settings.passkey_origins,
            challenge_seconds=settings.passkey_challenge_seconds,
            notices=account_notices,
        )
        recent_auth = RecentAuth(
            store=store, clock=clock, max_age_seconds=settings.recent_auth_seconds
        )
        email_changes = EmailChanges(
            store=store,
            crypto=crypto,
            sessions=sessions,
            mail=mail_queue,
            notices=account_notices,
            verifications=verifications,
            limiter=limiter,
            throttle=throttle,
            local_keys=local_keys,
            policy=email_links,
            clock=clock,
        )
        verifications.changes = email_changes  # the one confirm route serves both
        registry = CollectorRegistry()
        if key_revoker is None:
            signer.require_edge("apikeys")  # fail at start, not when a revocation is due
            # It connects lazily: auth starts (and queues requests) before apikeys is up.
            to_apikeys = apikeys_channel(settings.apikeys_target)
            stack.push_async_callback(to_apikeys.close, None)
            key_revoker = ApiKeysRevoker(
                channel=to_apikeys,
                identity=ServiceIdentity(name=SERVICE_NAME, signer=signer),
            )
        key_revocation_relay = KeyRevocationRelay(
            engine=engine,
            revoker=key_revoker,
            clock=clock,
            registry=registry,
            poll_seconds=settings.key_revocation_poll_seconds,
        )
        not_me = NotMeReports(store=store, sessions=sessions, clock=clock)
        shred_relay = ShredRelay(
            engine=engine,
            shredder=crypto,
            clock=clock,
            registry=registry,
            poll_seconds=settings.subject_shred_poll_seconds,
        )
        deletion = AccountDeletion(
            store=store,
            sessions=sessions,
            recent_auth=recent_auth,
            shreds=shred_relay,
            clock=clock,
        )
        subject_migration = SubjectMigration(
            engine=engine,
            crypto=crypto,
            batch_size=settings.subject_migration_batch_size,
            pause_seconds=settings.subject_migration_pause_seconds,
            registry=registry,
        )
        invitation_expiry = ExpiredInvitationSweeper(engine=engine, clock=clock)
        new_network_alerts = NewNetworkAlertRelay(
            engine=engine,
            store=store,
            crypto=crypto,
            mail=mail_queue,
            locator=locator,
            policy=NotMePolicy(
                public_base_url=settings.public_base_url,
                link_seconds=settings.not_me_link_seconds,
                alerts_per_day=settings.new_network_alerts_per_day,
            ),
            clock=clock,
            registry=registry,
        )
        team = TeamDirectory(store=store, crypto=crypto)
        membership = TeamMembership(store=store, crypto=crypto, sessions=sessions, clock=clock)
        invitations = Invitations(
            store=store,
            crypto=crypto,
            mail=mail_queue,
            public_base_url=settings.public_base_url,
            # The one setting the gateway enforces too (accounts/restrictions.py).
            unverified_may_invite=INVITE_MEMBERS not in settings.unverified_restrictions,
            clock=clock,
        )
        joining = Joining(
            store=store,
            crypto=crypto,
            hasher=hasher,
            sessions=sessions,
            tokens=invitations.tokens,
            clock=clock,
        )
        workspaces = Workspaces(store=store, sessions=sessions, clock=clock)
        notices = SecurityNotices(
            store=store, crypto=crypto, mail=mail_queue, locator=locator, clock=clock
        )

        password_resets = PasswordResets(
            store=store,
            crypto=crypto,
            hasher=hasher,
            sessions=sessions,
            factors=factors,
            mfa=mfa,
            mail=mail_queue,
            notices=account_notices,
            limiter=limiter,
            throttle=throttle,
            local_keys=local_keys,
            policy=password_reset_policy(settings),
            clock=clock,
        )

        def add_servicers(server: grpc.aio.Server) -> list[str]:
            auth_pb2_grpc.add_AuthServiceServicer_to_server(
                AuthServicer(
                    accounts=accounts,
                    sessions=sessions,
                    revocations=revocations,
                    locator=locator,
                    factors=factors,
                    mfa=mfa,
                    magic_links=magic_links,
                    passkeys=passkeys,
                    recent_auth=recent_auth,
                    team=team,
                    notices=notices,
                    deletion=deletion,
                ),
                server,
            )
            password_reset_pb2_grpc.add_PasswordResetServiceServicer_to_server(
                PasswordResetServicer(resets=password_resets), server
            )
            account_pb2_grpc.add_AccountServiceServicer_to_server(
                AccountServicer(
                    verifications=verifications,
                    changes=email_changes,
                    recent_auth=recent_auth,
                    not_me=not_me,
                ),
                server,
            )
            team_pb2_grpc.add_TeamServiceServicer_to_server(
                TeamServicer(
                    membership=membership,
                    invitations=invitations,
                    joining=joining,
                    workspaces=workspaces,
                ),
                server,
            )
            directory_pb2_grpc.add_DirectoryServiceServicer_to_server(
                DirectoryServicer(store=store), server
            )
            return [
                auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
                team_pb2.DESCRIPTOR.services_by_name["TeamService"].full_name,
                ACCOUNT_SERVICE,
                DIRECTORY_SERVICE,
                password_reset_pb2.DESCRIPTOR.services_by_name["PasswordResetService"].full_name,
            ]

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
            mail_relay.running(),
            revocation_relay.running(),
            key_revocation_relay.running(),
            forwarding_to_audit(
                target=settings.audit_target,
                identity=ServiceIdentity(name=SERVICE_NAME, signer=signer),
                engine=engine,
                table=outbox,
                clock=clock,
                registry=registry,
                batch_size=settings.audit_batch_size,
                poll_seconds=settings.audit_poll_seconds,
            ),
            new_network_alerts.running(),
            shred_relay.running(),
            invitation_expiry.running(),
            AsyncExitStack() as background,
        ):
            if settings.subject_migration_on_start:
                # Rows sealed before subject keys: moved under them once, in the background.
                await background.enter_async_context(
                    running_in_background(
                        _migrate_subjects(subject_migration), name="palisade-subject-migration"
                    )
                )
            yield AuthServer(
                running,
                accounts,
                sessions,
                revocations,
                registry,
                mail_relay,
                engine,
                reads,
                key_revocation_relay=key_revocation_relay,
                shred_relay=shred_relay,
                subject_migration=subject_migration,
            )


async def _migrate_subjects(migration: SubjectMigration) -> None:
    """The start-up run of the subject migration (accounts/subject_migration.py): ends once
    every row it can reach is under its subject."""
    result = await migrate_until_done(migration)
    log.info(
        "subject migration finished",
        extra={"migrated": result.migrated, "left": sum(result.remaining.values())},
    )
