"""Workspace roles and the one rule they follow: nobody acts above their own role.

owner > admin > member. Owners and admins manage the team; an admin cannot make an owner, nor
change or remove one (that would be acting above their role), and nobody grants a role above
the one they hold.
"""

from __future__ import annotations

from palisade.auth.team.errors import InvalidRole, RoleAboveYours

OWNER, ADMIN, MEMBER = "owner", "admin", "member"
ROLES = (OWNER, ADMIN, MEMBER)
MANAGERS = frozenset({OWNER, ADMIN})
_RANK = {MEMBER: 1, ADMIN: 2, OWNER: 3}


def parse_role(role: str) -> str:
    """The role as stored; InvalidRole for anything else (no case folding: one spelling)."""
    if role not in _RANK:
        raise InvalidRole()
    return role


def rank(role: str) -> int:
    return _RANK[role]


def require_not_above(actor_role: str, role: str) -> None:
    """RoleAboveYours unless `role` (granted, or held by whom the actor acts on) is at most
    the actor's own."""
    if rank(role) > rank(actor_role):
        raise RoleAboveYours()
