"""Who an RPC's verified caller is, for the RPCs that care: a person, an API key, a service.

The gateway already refuses API keys on people-only routes and checks a key's scope, but a
service must not misbehave when such a call reaches it anyway (a gateway bug, a new caller):
each check is made here again. Principals: "user:<id>", "apikey:<id>", "service:<name>",
"anonymous".
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from palisade.auth.errors import NotSignedIn
from palisade.common.caller import Caller, require_service_caller
from palisade.common.errors import PermissionDenied

USER_PREFIX = "user:"
API_KEY_PREFIX = "apikey:"
SERVICE_PREFIX = "service:"


class PeopleOnly(PermissionDenied):
    """An API key or a service on an RPC that acts for a person (the gateway's code too)."""

    code = "people_only"
    default_message = "this request is for signed-in people, not API keys or services"


class InsufficientScope(PermissionDenied):
    code = "insufficient_scope"
    default_message = "this API key lacks the scope this request needs"


class NotAMember(PermissionDenied):
    code = "not_a_member"
    default_message = "you are not a member of this workspace"


class ServiceNotAllowed(PermissionDenied):
    code = "service_not_allowed"
    default_message = "this service may not call this method"


@dataclass(frozen=True)
class WorkspaceReader:
    """Who reads a workspace: a member (user_id), or an API key of it (key_id), which acts
    for the person who created it (user_id, when the assertion names them)."""

    workspace_id: str
    user_id: str | None
    key_id: str | None


def signed_in(caller: Caller) -> tuple[str, str, str | None]:
    """(user id, workspace id, session id) of a signed-in person.

    PeopleOnly for API keys and services (they are known callers, just not people: 403);
    NotSignedIn for anyone else (anonymous, or a user assertion without a workspace)."""
    principal = caller.principal
    if principal.startswith((API_KEY_PREFIX, SERVICE_PREFIX)):
        raise PeopleOnly()
    if not principal.startswith(USER_PREFIX) or not caller.workspace_id:
        raise NotSignedIn()
    return principal[len(USER_PREFIX) :], caller.workspace_id, caller.session_id


def workspace_reader(caller: Caller, scope: str) -> WorkspaceReader:
    """A person of the assertion's workspace, or an API key holding `scope` (the assertion's
    scopes, as the gateway verified them); membership is for the caller to check in the DB."""
    principal = caller.principal
    if principal.startswith(SERVICE_PREFIX):
        raise PeopleOnly()
    if principal.startswith(API_KEY_PREFIX):
        key_id = principal[len(API_KEY_PREFIX) :]
        if not key_id or not caller.workspace_id:
            raise NotSignedIn()
        if scope not in caller.scopes:
            raise InsufficientScope()
        return WorkspaceReader(caller.workspace_id, caller.acting_user_id or None, key_id)
    user_id, workspace_id, _ = signed_in(caller)
    return WorkspaceReader(workspace_id, user_id, None)


def require_service(allowed: Collection[str]) -> Caller:
    """The caller, which must be one of the named services ("service:<name>"), signing as
    itself (the assertion's issuer); PermissionDenied otherwise."""
    caller = require_service_caller()
    if caller.principal not in allowed or caller.principal != SERVICE_PREFIX + caller.issuer:
        raise ServiceNotAllowed()
    return caller
