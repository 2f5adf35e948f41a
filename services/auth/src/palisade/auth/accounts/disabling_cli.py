"""`palisade-auth users disable|enable EMAIL`: AccountDisabling wired from the settings.

The CLI opens auth's database and a crypto client (for the email's blind index) the way the
service does, runs one action and prints one line with the user id (never the address). Its
rows (revocation notices, the key revocation request, the event) are sent by the running auth
service's relays, which look at the outboxes every heartbeat (sessions) and every
KEY_REVOCATION_POLL_SECONDS (keys).

Exit status: 0 done (or nothing to do), 1 no such account or a malformed address, 3 the
database or crypto could not be reached (nothing was changed).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError

from palisade.auth.accounts.disabling import AccountDisabling
from palisade.auth.config import SERVICE_NAME, AuthSettings
from palisade.auth.errors import AccountNotFound, InvalidEmail
from palisade.auth.local_keys import load_local_keys
from palisade.auth.server import session_policy
from palisade.auth.sessions.manager import SessionManager
from palisade.auth.sessions.revocation_outbox import RevocationOutbox
from palisade.auth.store import AuthStore
from palisade.common.caller import AssertionSigner
from palisade.common.clock import SystemClock
from palisade.common.crypto_client import CryptoClient
from palisade.common.db import create_engine, database_unavailable, resolve_database_url
from palisade.common.edge_keys import open_service_keys
from palisade.common.errors import Unavailable
from palisade.common.grpc_client import ServiceIdentity, insecure_channel

NOT_FOUND = 1
UNAVAILABLE = 3


async def run_users_command(
    settings: AuthSettings,
    action: str,
    email: str,
    *,
    out: Callable[[str], None] = print,
    err: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> int:
    clock = SystemClock()
    keys = open_service_keys(settings, SERVICE_NAME, now=clock.timestamp())
    signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=settings.assertion_ttl_seconds)
    signer.require_edge("crypto")
    engine = create_engine(
        resolve_database_url(
            settings.database_url, data_dir=settings.data_dir, service=SERVICE_NAME
        ),
        pool_size=2,
    )
    channel = insecure_channel(settings.crypto_target)
    try:
        crypto = CryptoClient(
            channel=channel, identity=ServiceIdentity(name=SERVICE_NAME, signer=signer)
        )
        store = AuthStore(engine=engine)
        disabling = AccountDisabling(
            store=store,
            crypto=crypto,
            sessions=SessionManager(
                store=store,
                crypto=crypto,
                revocations=RevocationOutbox(clock=clock),
                policy=session_policy(settings),
                clock=clock,
                # Disabling signs nobody in, so it names no known networks; the key is the
                # service's own all the same (created on first run in the embedded default).
                local_keys=load_local_keys(
                    settings.resolved_local_keys_file(),
                    create_if_missing=settings.create_missing_keys,
                ),
            ),
            clock=clock,
        )
        if action == "disable":
            disabled = await disabling.disable(email)
            state = "disabled" if disabled.changed else "was already disabled"
            out(
                f"{disabled.user_id} {state}: {disabled.sessions_ended} session(s) ended,"
                " revocation of its API keys queued for apikeys"
            )
        elif action == "enable":
            enabled = await disabling.enable(email)
            out(f"{enabled.user_id} {'enabled' if enabled.changed else 'was not disabled'}")
        else:
            raise ValueError(f"unknown action {action!r}")
    except (AccountNotFound, InvalidEmail) as error:
        err(f"palisade-auth users {action}: {error.message}")
        return NOT_FOUND
    except Unavailable as error:
        err(f"palisade-auth users {action}: {error.message}; nothing was changed")
        return UNAVAILABLE
    except DBAPIError as error:
        if not database_unavailable(error):
            raise
        err(f"palisade-auth users {action}: the database is unavailable; nothing was changed")
        return UNAVAILABLE
    finally:
        await channel.close(None)
        await engine.dispose()
    return 0
