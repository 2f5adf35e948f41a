"""Who may manage a workspace's webhooks: the caller assertion read into the acting workspace.

The gateway enforces the routes' rules (owner/admin, or a secret key with webhooks:manage)
from the proto annotations; these checks repeat them, so a bug there or a misrouted call does
not open another workspace's endpoints here. Test-mode keys may not manage webhooks: an
endpoint receives the workspace's live events, and a test key is the less guarded kind (its
secret can be revealed again).
"""

from __future__ import annotations

from dataclasses import dataclass

from palisade.common.caller import Caller, require_caller
from palisade.webhooks.errors import (
    InsufficientScope,
    KeyClaimsMissing,
    LiveKeyRequired,
    NotAWorkspaceCaller,
    RoleRequired,
    SecretKeyRequired,
)

SCOPE = "webhooks:manage"
MANAGER_ROLES = frozenset({"owner", "admin"})
USER_PREFIX = "user:"
APIKEY_PREFIX = "apikey:"


@dataclass(frozen=True, slots=True)
class Manager:
    workspace_id: str
    actor: str  # "user:<id>" or "apikey:<id>", for events


def manager_of(caller: Caller) -> Manager:
    principal = caller.principal
    if not caller.workspace_id or not principal.startswith((USER_PREFIX, APIKEY_PREFIX)):
        raise NotAWorkspaceCaller()
    if principal.startswith(USER_PREFIX):
        if caller.role not in MANAGER_ROLES:
            raise RoleRequired()
    else:
        # Never defaulted: a missing type or mode taken for "secret"/"live" would fail open.
        if caller.key_type is None or caller.key_mode is None:
            raise KeyClaimsMissing()
        if caller.key_type != "secret":
            raise SecretKeyRequired()
        if caller.key_mode != "live":
            raise LiveKeyRequired()
        if SCOPE not in caller.scopes:
            raise InsufficientScope()
    return Manager(workspace_id=caller.workspace_id, actor=principal)


def current_manager() -> Manager:
    return manager_of(require_caller())
