"""Who may manage keys: a signed-in owner or admin of the workspace, recently signed in for
the steps that hand out a key (create, rotate, reveal).

The gateway checks roles from the protos' access rules too; the service checks again, since a
service never trusts that it is only reached through the gateway. Refusals of recent auth are
security events (SECURITY.md 37), as auth records its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from palisade.apikeys.client_text import client_ip, describe_device, user_agent
from palisade.apikeys.errors import NotSignedIn, RecentAuthRequired, RoleRequired
from palisade.apikeys.model import MANAGER_ROLES, Actor
from palisade.apikeys.store import ApiKeyStore
from palisade.common.caller import Caller
from palisade.common.clock import Clock
from palisade.common.outbox import SecurityEvent

USER_PREFIX = "user:"


@dataclass(frozen=True)
class Person:
    """A signed-in member of a workspace, as the verified caller assertion says."""

    user_id: str
    workspace_id: str
    role: str | None
    authenticated_at: int | None  # unix seconds of the session's login
    actor: Actor


def actor_of(caller: Caller) -> Actor:
    """Where a call came from, made safe to store (canonical IP, a device description)."""
    return Actor(
        principal=caller.principal,
        ip=client_ip(caller.client_ip),
        device=describe_device(caller.user_agent),
        user_agent=user_agent(caller.user_agent),
    )


def manager_of(caller: Caller) -> Person:
    """The owner or admin behind this call; NotSignedIn or RoleRequired otherwise."""
    if not caller.principal.startswith(USER_PREFIX) or not caller.workspace_id:
        raise NotSignedIn()
    if caller.role not in MANAGER_ROLES:
        raise RoleRequired()
    return Person(
        user_id=caller.principal[len(USER_PREFIX) :],
        workspace_id=caller.workspace_id,
        role=caller.role,
        authenticated_at=caller.authenticated_at,
        actor=actor_of(caller),
    )


class RecentAuth:
    def __init__(self, *, store: ApiKeyStore, clock: Clock, max_age_seconds: int) -> None:
        self._store = store
        self._clock = clock
        self._max_age = max_age_seconds

    async def require(self, person: Person, *, action: str) -> None:
        """Raises RecentAuthRequired (and records the refusal) unless the login is recent."""
        login = person.authenticated_at
        now = self._clock.timestamp()
        if login is not None and 0 <= now - login <= self._max_age:
            return
        # A login "in the future" beyond the assertion's own skew is not recent either.
        if login is not None and login > now and login - now <= 5:
            return
        async with self._store.transaction() as tx:
            await tx.emit(
                SecurityEvent(
                    type="apikey.recent_auth_required",
                    occurred_at=self._clock.now(),
                    actor=person.actor.principal,
                    subject=person.user_id,
                    workspace_id=person.workspace_id,
                    ip=person.actor.ip,
                    device=person.actor.device,
                    outcome="failure",
                    reason="login_too_old",
                    details={"action": action},
                )
            )
        raise RecentAuthRequired()
