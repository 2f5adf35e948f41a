"""What an account may not do before its email address is verified.

One setting (PALISADE_AUTH_UNVERIFIED_RESTRICTIONS) names the actions; routes name the action
they perform in their proto access rule (`restricted_action`). Auth hands the list to the
gateway with every validated access token (empty once the address is verified), and the
gateway refuses the route with 403 `email_not_verified`: one list, one enforcement point.

Enrolling a second factor (TOTP or a passkey) is always restricted, whatever the setting says:
someone who signs up with another person's address before they do ("pre-hijacking") must not
be able to attach a factor of their own that would survive the owner taking the account back.
Auth refuses those ceremonies itself too (require_verified), in case a call arrives other than
through the gateway.

The gateway caches the list with the token for as long as it caches the token: proving an
address for the first time ends every session created before the proof, so a session's list
never changes while the session lives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from palisade.common.errors import PermissionDenied

CREATE_API_KEYS = "create_api_keys"
INVITE_MEMBERS = "invite_members"
ENROL_SECOND_FACTOR = "enrol_second_factor"

# Every action a route may name; the setting may list only these (a typo fails at start-up
# instead of silently restricting nothing).
ACTIONS = frozenset({CREATE_API_KEYS, INVITE_MEMBERS, ENROL_SECOND_FACTOR})
DEFAULT_RESTRICTIONS = (CREATE_API_KEYS, INVITE_MEMBERS)
ALWAYS_RESTRICTED = frozenset({ENROL_SECOND_FACTOR})


class EmailNotVerified(PermissionDenied):
    code = "email_not_verified"
    default_message = "verify your email address before you do this"


def check_actions(actions: Iterable[str]) -> tuple[str, ...]:
    """The configured actions, each known and listed once (sorted); raises ValueError."""
    listed = tuple(actions)
    unknown = sorted(set(listed) - ACTIONS)
    if unknown:
        raise ValueError(f"unknown actions {unknown}; known: {sorted(ACTIONS)}")
    return tuple(sorted(set(listed)))


@dataclass(frozen=True)
class UnverifiedRestrictions:
    """The actions an unverified account may not perform (always including the fixed ones)."""

    actions: tuple[str, ...]

    @classmethod
    def from_setting(cls, configured: Iterable[str]) -> UnverifiedRestrictions:
        return cls(tuple(sorted(set(check_actions(configured)) | ALWAYS_RESTRICTED)))

    def of(self, *, email_verified: bool) -> tuple[str, ...]:
        """What this account may not do now: nothing once its address is verified."""
        return () if email_verified else self.actions


DEFAULT = UnverifiedRestrictions.from_setting(DEFAULT_RESTRICTIONS)


def require_verified(*, email_verified: bool) -> None:
    """Raises EmailNotVerified for an account whose address is not verified (second factors)."""
    if not email_verified:
        raise EmailNotVerified()
