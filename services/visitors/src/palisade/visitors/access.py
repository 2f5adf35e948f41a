"""Who may call, as what: the caller assertion read into a Scope (workspace, mode, actor).

The gateway is the only service with an edge to visitors, and it enforces the routes' access
rules (scopes, publishable keys, origins); these checks repeat what a forged or misrouted call
would need to get past, so a bug there does not open the data here.
"""

from __future__ import annotations

from palisade.common.caller import Caller, require_caller
from palisade.common.errors import PermissionDenied
from palisade.visitors.errors import KeyClaimsMissing, NotAWorkspaceCaller, SecretKeyRequired
from palisade.visitors.model import Scope

USER_PREFIX = "user:"
APIKEY_PREFIX = "apikey:"

_KEY_TYPES = ("secret", "publishable")
_KEY_MODES = ("live", "test")


def scope_of(caller: Caller, *, needs: str, publishable_ok: bool) -> Scope:
    """The caller's scope for a method needing scope `needs` (API keys must hold it; people
    hold every scope of their workspace). Test-mode keys work on test visitors only. An API
    key's assertion must say its type and mode (else PERMISSION_DENIED key_claims_missing)."""
    principal = caller.principal
    if not caller.workspace_id or not principal.startswith((USER_PREFIX, APIKEY_PREFIX)):
        raise NotAWorkspaceCaller()
    if principal.startswith(USER_PREFIX):
        return Scope(workspace_id=caller.workspace_id, test=False, actor=principal)
    # Both claims must be there and known: a missing one is refused, never read as the
    # stronger default (a gateway build or a replica mid-upgrade that leaves them out would
    # otherwise give a publishable key secret-key powers, or a test key live data).
    if caller.key_type not in _KEY_TYPES or caller.key_mode not in _KEY_MODES:
        raise KeyClaimsMissing()
    publishable = caller.key_type == "publishable"
    if publishable and not publishable_ok:
        raise SecretKeyRequired()
    if needs not in caller.scopes:
        raise PermissionDenied(f"this API key lacks the {needs} scope")
    return Scope(
        workspace_id=caller.workspace_id,
        test=caller.key_mode == "test",
        actor=principal,
        publishable=publishable,
    )


WIDGET, API, DASHBOARD = "widget", "api", "dashboard"


def source_of(scope: Scope) -> str:
    """What a visitor created in this scope records as its source."""
    if scope.actor.startswith(USER_PREFIX):
        return DASHBOARD
    return WIDGET if scope.publishable else API


def current_scope(*, needs: str, publishable_ok: bool = False) -> Scope:
    return scope_of(require_caller(), needs=needs, publishable_ok=publishable_ok)
